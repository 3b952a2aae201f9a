"""SIGTERM to a worker mid-chunk: it finishes its chunk, then exits; nothing waits on a lease."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.stack import Stack, submit_batch, wait_for

pytestmark = pytest.mark.faults

#: Each batch is three 1 s jobs: one chunk, or (once their run time is measured, chunks
#: being sized by time) three of one job; 3 s of work either way, inside the 5 s lease.
SLEEPERS = [{"kind": "test_sleep", "params": {"seconds": 1.0}}] * 3


def running_chunk(engine: Engine, since: int) -> tuple[str, int] | None:
    """(worker, job id) of a job that is running, if any."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT worker, id FROM jobs WHERE id > :s "
                                "AND status = 'running' ORDER BY id LIMIT 1"),
                           {"s": since}).first()
    return (str(row.worker), int(row.id)) if row else None


def test_sigterm_worker_mid_chunk(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    for _ in range(4):
        submit_batch(client, SLEEPERS)
    wait_for("a chunk to run", lambda: running_chunk(engine, since), 30, 0.02)
    time.sleep(0.5)  # into its first job
    found = running_chunk(engine, since)
    assert found is not None
    worker, job_id = found
    name = worker.split("@")[0]
    injected = time.monotonic()
    stack[name].terminate()

    recovered = checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": 4 * len(SLEEPERS)}
    popen = stack[name].popen
    assert popen is not None
    assert popen.wait(30) == 0, "the worker did not shut down cleanly"
    with engine.connect() as conn:
        chunk = conn.execute(text("SELECT worker, attempt FROM jobs WHERE id = :j"),
                             {"j": job_id}).all()
        expired = conn.execute(text("SELECT count(*) FROM audit_events WHERE job_id > :s "
                                    "AND event_type = 'lease_expired'"), {"s": since}).scalar()
    # Warm shutdown: the job it was running was finished by it, on the first attempt.
    assert set(chunk) == {(worker, 1)}, chunk
    assert expired == 0, "a job had to wait for its lease to expire"
    recovery.record("worker SIGTERM mid-chunk (4 chunks of 3 x 1 s test_sleep)", injected,
                    recovered, counts)
