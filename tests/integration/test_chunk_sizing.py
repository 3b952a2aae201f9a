"""Chunks are sized by time: a slow kind's messages hold about chunk_seconds of work.

A message holds a worker process until all its jobs are done, so fairness, cancellation
and crash recovery wait on it: 500 jobs of 50 ms would hold one for 25 s. Workers measure
each kind's compute time per job, and dispatch sends chunk_seconds' worth (0.25 s here).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from celery.signals import task_prerun
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.broker import window
from app.broker.queues import TASK_NAME
from app.config import Settings
from app.store.db import session_scope
from tests.integration.conftest import auth

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

#: Seconds each test_sleep job takes, and how many make the batch.
SLEEP, JOBS = 0.05, 80


def _upload(api: TestClient, key: str, jobs: list[dict[str, Any]]) -> int:
    body = b"".join(json.dumps(j).encode() + b"\n" for j in jobs)
    reply = api.post("/v1/batches", content=body, headers={
        **auth(key), "Content-Type": "application/x-ndjson"})
    assert reply.status_code == 202, reply.text
    return int(reply.json()["id"])


def _wait(api: TestClient, key: str, batch: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get(f"/v1/batches/{batch}", headers=auth(key)).json()["done"]:
            return
        time.sleep(0.1)
    raise AssertionError(f"batch {batch} not done in {timeout} s")


def test_a_slow_kinds_chunks_hold_about_chunk_seconds(
    api: TestClient, key_a: str, settings: Settings
) -> None:
    # Forget what earlier tests measured of test_sleep (in Redis, and in this process,
    # whose threads are the test worker).
    with redis.Redis.from_url(settings.redis_url or "") as client:
        client.hdel(window.JOB_SECONDS, "test_sleep")
    window._estimates.pop("test_sleep", None)
    window._written.pop("test_sleep", None)
    messages: list[list[int]] = []

    def record(sender: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) == TASK_NAME:
            messages.append(list(args[0] if args else kwargs["ids"]))

    task_prerun.connect(record, weak=False)
    try:
        _wait(api, key_a, _upload(api, key_a, [{"kind": "encode", "params": {"text": "x"}}] * 20))
        first = _upload(api, key_a, [{"kind": "test_sleep", "params": {"seconds": SLEEP}}] * JOBS)
        _wait(api, key_a, first)
        # Measured by now: a second batch is sent in chunks of the measured size.
        second = _upload(api, key_a, [{"kind": "test_sleep", "params": {"seconds": SLEEP}}] * JOBS)
        _wait(api, key_a, second)
    finally:
        task_prerun.disconnect(record)

    def sizes_of(batch: int) -> list[int]:
        with session_scope() as session:
            ids = set(session.execute(text("SELECT id FROM jobs WHERE batch_id = :b"),
                                      {"b": batch}).scalars())
        return [len(m) for m in messages if set(m) & ids]

    measured = window.RedisWindow().chunk_size("test_sleep")
    fits = int(settings.chunk_seconds / SLEEP)
    # About 0.25 s of 50 ms jobs: 5 (fewer if the machine is slow), never a 500-job chunk.
    assert 1 <= measured <= fits
    # Before any was measured, a kind starts with small chunks. How many of the first
    # batch's messages go out before the first is measured depends on the lane's window,
    # which grows with the worker processes registered (other tests' workers included).
    # (A message resent after requeue_after would count twice: hence at least JOBS.)
    first_sizes, second_sizes = sizes_of(first), sizes_of(second)
    assert max(first_sizes) <= window.FIRST_CHUNK
    assert sum(first_sizes) >= JOBS
    # Once measured, every message holds the measured size (about chunk_seconds).
    assert sum(second_sizes) >= JOBS
    assert max(second_sizes) <= fits, second_sizes
    # A cheap kind keeps big chunks: its throughput comes from them.
    assert window.RedisWindow().chunk_size("encode") >= 100
