"""Chunk messages built by app.broker.celery_app match what Celery's own send_task writes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from celery import Celery
from kombu import Queue

from app.broker.celery_app import SHOWN_IDS, chunk_message
from app.broker.queues import TASK_NAME

#: Fields that differ on every message (fresh ids) or per process.
VARYING = {("headers", "id"), ("headers", "root_id"), ("headers", "origin"),
           ("properties", "correlation_id"), ("properties", "delivery_tag"),
           ("properties", "reply_to")}


def celerys_own(chunk: list[int], priority: int, claim_first: bool) -> dict[str, Any]:
    """The message send_task stores, through kombu's in-memory virtual transport."""
    app = Celery("reference", broker="memory://", set_as_current=False)
    app.conf.task_queues = [Queue("encode")]
    with app.connection_for_write() as conn, app.producer_or_acquire() as producer:
        app.send_task(TASK_NAME, args=[chunk], kwargs={"claim_first": True} if claim_first else {},
                      queue="encode", priority=priority, producer=producer)
        raw = conn.default_channel._get("encode")
    return raw if isinstance(raw, dict) else json.loads(raw)


def without_varying(message: dict[str, Any]) -> dict[str, Any]:
    """The message with its body decoded (JSON spacing may differ) and fresh ids dropped."""
    out = json.loads(json.dumps(message))
    out["body"] = json.loads(base64.b64decode(out["body"]))
    for part, key in VARYING:
        out[part].pop(key)
    return out


@pytest.mark.parametrize(("priority", "claim_first"), [(0, False), (1, True), (2, False)])
def test_a_chunk_message_is_the_message_celery_would_send(priority: int, claim_first: bool) -> None:
    chunk = [5, 6, 7]
    ours = json.loads(chunk_message(chunk, priority, "encode", claim_first))
    theirs = celerys_own(chunk, priority, claim_first)
    assert without_varying(ours) == without_varying(theirs)
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"][
        "correlation_id"]
    assert ours["headers"]["id"] != json.loads(chunk_message(chunk, priority, "encode"))[
        "headers"]["id"]


def test_a_long_chunk_is_abridged_in_argsrepr_but_whole_in_the_body() -> None:
    chunk = list(range(1000, 1500))
    message = json.loads(chunk_message(chunk, 1, "encode"))
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [chunk] and kwargs == {}
    shown = message["headers"]["argsrepr"]
    assert shown.startswith(repr([chunk[:SHOWN_IDS]])[:-2]) and "500 ids" in shown
    assert len(shown) < 1024
