"""Submissions and messages that arrive more than once still make one job, one result."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import Engine

from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.stack import (
    Stack,
    batch_job_ids,
    encode_lines,
    sql_count,
    submit_batch,
    wait_for,
)

pytestmark = pytest.mark.faults


def test_concurrent_submissions_with_one_idempotency_key_make_one_job(
    stack: Stack, client: httpx.Client, engine: Engine, since: int
) -> None:
    body = {"kind": "encode", "params": {"text": "once only"}, "idempotency_key": "dup-50"}
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/jobs", json=body), range(50)))

    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 49 + [201], codes
    assert len({r.json()["id"] for r in answers}) == 1
    assert sql_count(engine, "SELECT count(*) FROM jobs WHERE idempotency_key = 'dup-50'") == 1
    checks.wait_terminal(engine, since)
    assert checks.assert_consistent(engine, since) == {"succeeded": 1}


def test_chunk_delivered_twice_gives_one_result(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    batch = submit_batch(client, encode_lines(400, "twice"))
    ids = batch_job_ids(engine, batch["id"])
    # The api already published these two chunks; the same two messages come twice more.
    injected = time.monotonic()
    stack.publish(ids + ids, priority=0)

    recovered = checks.wait_terminal(engine, since)
    # The jobs may be done before the copies are taken: check only once Redis holds none
    # of this batch's messages, queued or delivered and unacknowledged.
    mine = set(ids)
    wait_for("the duplicate messages to be consumed",
             lambda: not any(mine & set(chunk) for chunk in stack.chunks_in_redis()), 30)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": 400}
    assert sql_count(engine, "SELECT count(*) FROM jobs WHERE id > :s AND attempt <> 1",
                     s=since) == 0, "a duplicate delivery ran a job again"
    recovery.record("same chunks delivered 3 times (400 encode)", injected, recovered, counts)
