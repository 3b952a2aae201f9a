"""Cancelling a queued batch and a running job; the running job's late result is discarded."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from redis.client import PubSub
from sqlalchemy import Engine

from app.broker.notify import CHANNEL
from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.stack import Stack, encode_lines, occupy_workers, sql_count, submit_batch

pytestmark = pytest.mark.faults


def test_cancel_queued_batch(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    sleepers = occupy_workers(client, engine, 2)  # nothing of the batch can start meanwhile
    batch = submit_batch(client, encode_lines(2000, "cancel"))
    injected = time.monotonic()
    r = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["counts"]["cancelled"] == 2000

    recovered = checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"cancelled": 2000, "succeeded": len(sleepers)}
    assert sql_count(engine, "SELECT count(*) FROM jobs WHERE batch_id = :b AND attempt > 0",
                     b=batch["id"]) == 0, "a cancelled job was started"
    recovery.record("cancel a queued batch (2000 encode)", injected, recovered, counts)


def test_cancel_running_job_discards_its_late_result(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    r = client.post("/v1/jobs", json={"kind": "test_sleep", "params": {"seconds": 2}})
    job_id = r.json()["id"]
    with stack.servers.redis_client() as broker, broker.pubsub() as finished:
        finished.subscribe(CHANNEL)
        wait_running(client, job_id)
        injected = time.monotonic()
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        wait_reported(finished, job_id)  # the worker has tried to write its result
        discarded = time.monotonic()

    checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)  # also: no result row for it
    assert counts == {"cancelled": 1}
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["result"]) == ("cancelled", None)
    trail = [e["type"] for e in client.get(f"/v1/jobs/{job_id}/audit").json()["events"]]
    assert trail == ["submitted", "started", "cancelled"]
    recovery.record("cancel a running job → its late result discarded (2 s test_sleep)",
                    injected, discarded, counts)


def wait_running(client: httpx.Client, job_id: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)


def wait_reported(finished: PubSub, job_id: int, timeout: float = 30) -> None:
    """Wait for the worker's finished-notification naming the job (sent after its write)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = finished.get_message(timeout=1)
        if message and message["type"] == "message" and job_id in json.loads(message["data"]):
            return
    raise AssertionError(f"no worker reported job {job_id} finished")
