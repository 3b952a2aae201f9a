"""A worker SIGKILLed mid-chunk: its leases expire, the relay hands the jobs out again."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.stack import Stack, encode_lines, submit_batch, wait_for, wait_progress

pytestmark = pytest.mark.faults

BATCH = 20_000


def open_chunks(engine: Engine, worker: str) -> int:
    """Transactions of this worker (w1, w2) that hold row locks now: inline chunks.

    An encode chunk is locked, computed and finished in one transaction, its rows still
    `queued` meanwhile, so a worker mid-chunk shows as a session idle in a transaction
    that has taken an xid (it locked rows) under the worker's application_name.
    """
    return sessions(engine, worker, "state = 'idle in transaction' AND backend_xid IS NOT NULL")


def busy_statements(engine: Engine, worker: str) -> int:
    """This worker's statements the server is still running. A frozen process can still
    have a COMMIT in flight, sent just before the freeze: the server finishes it. Not
    counted, as they wait until the kill and never commit (their process is killed too):
    one waiting for a row lock the frozen chunk holds (wait_event_type Lock), and one
    waiting for the frozen process itself (Client: the rest of a COPY's data or of a
    message it was sending, or room to send it rows)."""
    return sessions(engine, worker, "state = 'active' AND wait_event_type IS DISTINCT FROM "
                                    "'Lock' AND wait_event_type IS DISTINCT FROM 'Client'")


def statements(engine: Engine, worker: str) -> list[tuple[str, str, str, str]]:
    """State, wait event type and name, and query start of each of the worker's sessions."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT state, coalesce(wait_event_type, ''), coalesce(wait_event, ''), "
            "left(query, 60) FROM pg_stat_activity WHERE application_name LIKE :w"),
            {"w": f"babelq-worker {worker}@%"}).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def sessions(engine: Engine, worker: str, condition: str) -> int:
    """This worker's database sessions in a state (a fixed SQL condition of the test's)."""
    with engine.connect() as conn:
        return int(conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE :w "
                 f"AND {condition}"),
            {"w": f"babelq-worker {worker}@%"},
        ).scalar_one())


def frozen_holding(stack: Stack, engine: Engine) -> bool:
    """Freeze w1; True if it is mid-chunk, else thaw it again and say False."""
    stack["w1"].signal_group(signal.SIGSTOP)
    if open_chunks(engine, "w1") > 0:
        return True
    stack["w1"].signal_group(signal.SIGCONT)
    return False


def worker_rows(engine: Engine, worker: str, since: int) -> int:
    """The test's jobs whose row names this worker."""
    with engine.connect() as conn:
        return int(conn.execute(
            text("SELECT count(*) FROM jobs WHERE id > :s AND worker LIKE :w"),
            {"s": since, "w": f"{worker}@%"},
        ).scalar_one())


def test_sigkill_worker_mid_batch(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    submit_batch(client, encode_lines(BATCH, "crash"))
    wait_progress(engine, since, BATCH // 4)
    # Freeze w1 before looking, so the chunk it holds cannot finish between look and kill.
    wait_for("w1 to be mid-chunk", lambda: frozen_holding(stack, engine), 60, 0.02)
    # Counted once a chunk whose COMMIT left w1 just before the freeze has landed (the
    # full suite on a clean clone once saw 200 more rows of w1's afterwards).
    try:
        try:
            wait_for("w1's last statements to land",
                     lambda: busy_statements(engine, "w1") == 0, 10, 0.02)
        except AssertionError as exc:  # say which statements, for the next diagnosis
            raise AssertionError(f"{exc}: {statements(engine, 'w1')}") from None
        done_by_w1 = worker_rows(engine, "w1", since)
    finally:  # killed even if the wait failed: a frozen w1 would fail the next tests too
        injected = time.monotonic()
        stack["w1"].kill()

    recovered = checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": BATCH}
    # The open chunk died with w1's connection: none of its jobs kept w1's name, and none
    # burnt an attempt (the aborted transaction left no trace); the others redid them.
    assert worker_rows(engine, "w1", since) == done_by_w1
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT max(attempt) FROM jobs WHERE id > :s"),
                                {"s": since}).scalar_one()
    assert attempts == 1
    recovery.record("worker SIGKILL mid-batch (20k encode)", injected, recovered, counts)


def test_sigkill_worker_mid_long_job(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    r = client.post("/v1/jobs", json={"kind": "test_sleep", "params": {"seconds": 3}})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    def holder() -> str | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return str(job["worker"]).split("@")[0] if job["status"] == "running" else None

    wait_for("the job to start", holder, 30, 0.05)
    name = holder()
    assert name in ("w1", "w2")
    time.sleep(1)  # well inside the 3 s job
    injected = time.monotonic()
    stack[name].kill()

    recovered = checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["attempt"]) == ("succeeded", 2), job
    trail = [e["type"] for e in client.get(f"/v1/jobs/{job_id}/audit").json()["events"]]
    assert trail == ["submitted", "started", "lease_expired", "started", "succeeded"]
    assert job["worker"].split("@")[0] != name
    recovery.record("worker SIGKILL mid-job (one 3 s test_sleep)", injected, recovered, counts)
