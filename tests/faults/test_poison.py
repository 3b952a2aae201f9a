"""A job that always raises goes dead after max_attempts, with backoff; its chunk-mates succeed."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.stack import (
    Stack,
    batch_job_ids,
    encode_lines,
    occupy_workers,
    submit_batch,
)

pytestmark = pytest.mark.faults

#: 600 lines in four chunks of 150, one per worker process; poison jobs first in the first
#: chunk, mid-way in the second, last in the fourth.
BATCH = 600
CHUNK = 150
POISON_LINES = (1, 225, 600)


def poison_batch() -> list[dict[str, Any]]:
    lines = encode_lines(BATCH, "poison")
    for n in POISON_LINES:
        lines[n - 1] = {"kind": "test_fail", "params": {"message": f"bad line {n}"}}
    return lines


def test_poison_job_goes_dead_with_backoff_while_its_chunk_succeeds(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    # The dispatcher sends a batch in chunks of one kind; a poison job shares a chunk with
    # good jobs when a producer mixes kinds. Build such chunks: while every worker is busy,
    # the batch is taken back from the dispatcher and from Redis, and mixed chunks sent
    # instead (left there, one could claim a poison job alone while its mixed chunk waits).
    sleepers = occupy_workers(client, engine, 3)
    batch = submit_batch(client, poison_batch())
    ids = batch_job_ids(engine, batch["id"])
    take_back(stack, engine, ids)
    stack.publish(ids, priority=0, chunk_size=CHUNK)
    checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": BATCH - len(POISON_LINES) + len(sleepers),
                      "dead": len(POISON_LINES)}

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT line, id, status, attempt, started_at FROM jobs "
                                 "WHERE batch_id = :b ORDER BY line"), {"b": batch["id"]}).all()
    # Jobs claimed by one statement share its transaction's now(): their started_at.
    good_mates = Counter(r.started_at for r in rows if r.line not in POISON_LINES)
    to_dead = []
    for line, job_id, status, attempt, started_at in rows:
        if line in POISON_LINES:
            assert (status, attempt) == ("dead", 3)
            assert good_mates[started_at] > 0, "the poison job was not claimed with good jobs"
            assert_dead_with_error(client, job_id, f"bad line {line}")
            to_dead.append(assert_backoff(client, job_id))
        else:  # a poison job never costs its chunk-mates an attempt
            assert (status, attempt) == ("succeeded", 1), (line, status, attempt)
    recovery.note("poison job in a chunk: first attempt → dead (3 attempts)", max(to_dead),
                  counts)

    # Retried by hand, a dead job gets a fresh allowance of attempts, and dies again.
    dead_id = next(r.id for r in rows if r.line == POISON_LINES[0])
    retried = client.post(f"/v1/jobs/{dead_id}/retry")
    assert retried.status_code == 200, retried.text
    checks.wait_terminal(engine, since)
    checks.assert_consistent(engine, since)
    job = client.get(f"/v1/jobs/{dead_id}").json()
    assert (job["status"], job["attempt"]) == ("dead", 6)


def take_back(stack: Stack, engine: Engine, ids: list[int]) -> None:
    """Undo the dispatch of these jobs: none left pending, in Redis, or to be sent again."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM pending_jobs WHERE ids && CAST(:ids AS bigint[])"),
                     {"ids": ids})
    assert stack.withdraw(ids) >= 1, "none of the batch's messages was waiting in Redis"
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM dispatches WHERE ids && CAST(:ids AS bigint[])"),
                     {"ids": ids})


def assert_dead_with_error(client: httpx.Client, job_id: int, message: str) -> None:
    """The api shows the error's type, message and traceback."""
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "dead"
    error = job["error"]
    assert (error["type"], error["message"]) == ("PoisonError", message)
    assert "Traceback" in error["traceback"] and "PoisonError" in error["traceback"]


def assert_backoff(client: httpx.Client, job_id: int) -> float:
    """retry_scheduled events with growing retry_in, no attempt started before its time;
    the seconds from its first attempt to dead."""
    events = client.get(f"/v1/jobs/{job_id}/audit").json()
    assert events["verified"]
    trail = [(e["type"], datetime.fromisoformat(e["at"]), e["details"]) for e in events["events"]]
    assert [t for t, _, _ in trail] == ["submitted", "started", "retry_scheduled", "started",
                                        "retry_scheduled", "started", "dead"]
    delays = [d["retry_in"] for t, _, d in trail if t == "retry_scheduled"]
    assert 0 < delays[0] < delays[1], delays
    for i, (event_type, at, details) in enumerate(trail):
        if event_type == "retry_scheduled":
            waited = (trail[i + 1][1] - at).total_seconds()
            assert waited >= details["retry_in"] - 0.01, (waited, details)
    assert trail[-1][2]["error"]["type"] == "PoisonError"
    return (trail[-1][1] - trail[1][1]).total_seconds()
