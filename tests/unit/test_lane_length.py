"""A lane's length seen a moment ago (by a fast-lane push) answers lane_has_room alone."""

from __future__ import annotations

import time

import pytest

from app.broker import window
from app.broker.celery_app import celery_app


@pytest.fixture
def unreachable_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any question to Redis fails: what is answered was answered without asking."""
    monkeypatch.setattr(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(window, "_lengths", {})


@pytest.mark.usefixtures("unreachable_redis")
def test_a_length_seen_just_now_answers_without_redis() -> None:
    key = window.lane_key("encode", 1)
    window.saw_length(key, 10**6)
    assert window.lane_has_room("encode", 1) is False
    window.saw_length(key, 0)
    assert window.lane_has_room("encode", 1) is True


@pytest.mark.usefixtures("unreachable_redis")
def test_an_old_length_is_asked_again() -> None:
    key = window.lane_key("encode", 1)
    window._lengths[key] = (0, time.monotonic() - window.LENGTH_FRESH - 1)
    with pytest.raises(Exception, match=r"(?i)connect"):
        window.lane_has_room("encode", 1)
