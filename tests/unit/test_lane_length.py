"""A lane's length seen a moment ago (by a fast-lane push) answers lane_has_room alone,
against the window the dispatcher gives that lane: a few messages per live process."""

from __future__ import annotations

import time

import pytest

from app.broker import window
from app.broker.celery_app import celery_app
from app.broker.queues import queue_for
from app.config import get_settings


@pytest.fixture
def unreachable_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any question to Redis fails: what is answered was answered without asking."""
    monkeypatch.setattr(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(window, "_lengths", {})
    monkeypatch.setattr(window, "_live", {})
    monkeypatch.setattr(window, "_live_seen", [float("-inf")])


@pytest.mark.usefixtures("unreachable_redis")
def test_a_length_seen_just_now_answers_without_redis() -> None:
    key = window.lane_key("encode", 1)
    window.saw_processes({})
    window.saw_length(key, 10**6)
    assert window.lane_has_room("encode", 1) is False
    window.saw_length(key, 0)
    assert window.lane_has_room("encode", 1) is True


@pytest.mark.usefixtures("unreachable_redis")
def test_an_old_length_is_asked_again() -> None:
    key = window.lane_key("encode", 1)
    window.saw_processes({})
    window._lengths[key] = (0, time.monotonic() - window.LENGTH_FRESH - 1)
    with pytest.raises(Exception, match=r"(?i)connect"):
        window.lane_has_room("encode", 1)


@pytest.mark.usefixtures("unreachable_redis")
def test_the_window_grows_with_the_processes_the_lane_feeds() -> None:
    """As the dispatcher's (RedisWindow.window_of): with 8 encode processes live, a lane
    holding more than BABELQ_DISPATCH_WINDOW messages still has room for a single job."""
    setting = get_settings().dispatch_window
    key = window.lane_key("encode", 1)
    window.saw_length(key, setting + 1)
    window.saw_processes({})
    assert window.lane_has_room("encode", 1) is False
    window.saw_processes({queue_for("encode"): 8})
    assert window.lane_has_room("encode", 1) is (setting + 1 < window.PER_PROCESS * 8)
    window.saw_length(key, window.PER_PROCESS * 8)
    assert window.lane_has_room("encode", 1) is False


@pytest.mark.usefixtures("unreachable_redis")
def test_processes_read_long_ago_are_asked_again() -> None:
    window.saw_length(window.lane_key("encode", 1), 0)
    window._live_seen[0] = time.monotonic() - window.PROCESSES_FRESH - 1
    assert window.room_seen("encode", 1) is None
    with pytest.raises(Exception, match=r"(?i)connect"):
        window.lane_has_room("encode", 1)
