"""A worker SIGKILLed mid-chunk: its leases expire, the relay hands the jobs out again."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.stack import Stack, encode_lines, submit_batch, wait_for, wait_progress

pytestmark = pytest.mark.faults

BATCH = 20_000


def held_by(engine: Engine, worker: str, since: int) -> int:
    """How many of the test's jobs this worker (w1, w2) holds right now."""
    with engine.connect() as conn:
        return int(conn.execute(
            text("SELECT count(*) FROM jobs WHERE id > :s AND status = 'running' "
                 "AND worker LIKE :w"), {"s": since, "w": f"{worker}@%"},
        ).scalar_one())


def taken_back(engine: Engine, worker: str, since: int, killed: datetime) -> tuple[int, float]:
    """Jobs the relay took back from this worker when their lease ran out, and the seconds
    from its death until the last of them was finished by someone else."""
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT count(*), max(j.finished_at) FROM jobs j WHERE j.id IN "
                 "(SELECT job_id FROM audit_events WHERE job_id > :s "
                 "AND event_type = 'lease_expired' AND details->>'worker' LIKE :w)"),
            {"s": since, "w": f"{worker}@%"},
        ).one()
    return int(row[0]), (row[1] - killed).total_seconds() if row[1] else 0.0


def frozen_holding(stack: Stack, engine: Engine, since: int) -> bool:
    """Freeze w1; True if it holds jobs, else thaw it again and say False."""
    stack["w1"].signal_group(signal.SIGSTOP)
    if held_by(engine, "w1", since) > 0:
        return True
    stack["w1"].signal_group(signal.SIGCONT)
    return False


def test_sigkill_worker_mid_batch(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    submit_batch(client, encode_lines(BATCH, "crash"))
    wait_progress(engine, since, BATCH // 4)
    # Freeze w1 before looking, so the chunk it holds cannot finish between look and kill.
    wait_for("w1 to hold jobs mid-batch", lambda: frozen_holding(stack, engine, since), 60, 0.02)
    injected, killed = time.monotonic(), datetime.now(UTC)
    stack["w1"].kill()

    recovered = checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": BATCH}
    lost, cost = taken_back(engine, "w1", since, killed)
    assert lost > 0, "the kill did not interrupt a chunk"
    recovery.record("worker SIGKILL mid-batch (20k encode)", injected, recovered, counts)
    recovery.note(f"  of which: the {lost} jobs the dead worker held, re-run and finished", cost)


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
