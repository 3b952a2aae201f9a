"""What must hold in PostgreSQL after any fault: nothing lost, nothing done twice.

Every check reads the source of truth directly; none trusts the api or a worker's
word. `since` scopes a check to the jobs a test created (ids above it), so tests
share one database without seeing each other's jobs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from app.jobs import audit
from app.store.models import AuditEvent

TERMINAL = ("succeeded", "dead", "cancelled")
#: The audit event that must end the chain of a job in each terminal status.
LAST_EVENT = {
    "succeeded": {"succeeded"},
    "dead": {"dead", "lease_expired"},
    "cancelled": {"cancelled"},
}


def last_job_id(engine: Engine) -> int:
    """The newest job id so far: a test's jobs are the ones above it."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM jobs")).scalar_one())


def status_counts(engine: Engine, since: int) -> Counter[str]:
    """Jobs above since, per status."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM jobs WHERE id > :s "
                                 "GROUP BY status"), {"s": since}).all()
    return Counter({status: n for status, n in rows})


def wait_terminal(
    engine: Engine, since: int, timeout: float = 150, every: Callable[[], object] | None = None
) -> float:
    """Wait until every job above since is terminal; the time.monotonic() it happened.

    The timeout is hang protection only. Polls ride out a database that is still
    coming back after a restart. `every` is called on each poll (a supervisor's round).
    """
    deadline = time.monotonic() + timeout
    counts: Counter[str] = Counter()
    while time.monotonic() < deadline:
        if every is not None:
            every()
        try:
            counts = status_counts(engine, since)
        except Exception:  # the database may be restarting; the deadline still holds
            time.sleep(0.2)
            continue
        if counts and all(s in TERMINAL for s in counts):
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"jobs above {since} not all terminal after {timeout:.0f}s: {counts}")


def ride_out_failover(stack: Any, engine: Engine, client: httpx.Client, jobs: int
                      ) -> tuple[float, Counter[str], list[str]]:
    """After a server failed over mid-batch: every job terminal (workers the failover killed
    are restarted meanwhile), each done once, and a new job goes through end to end.

    Returns when the batch finished, its counts, and the workers that died.
    """
    died: list[str] = []
    recovered = wait_terminal(engine, 0, every=lambda: died.extend(stack.revive_workers()))
    counts = assert_consistent(engine, 0)
    assert counts == {"succeeded": jobs}, stack.tails()
    r = client.post("/v1/jobs", json={"kind": "encode", "params": {"text": "after"}})
    assert r.status_code == 201, r.text
    done = client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 30})
    assert done.json()["status"] == "succeeded", done.text
    return recovered, counts, died


def _rows(session: Session, sql: str, since: int) -> list[Any]:
    return list(session.execute(text(sql), {"s": since}).all())


def assert_consistent(engine: Engine, since: int) -> Counter[str]:
    """Assert the invariants of docs/design.md for every job above since; its status counts."""
    with Session(engine) as session:
        _assert_terminal(session, since)
        _assert_results(session, since)
        _assert_attempts(session, since)
        _assert_chains(session, since)
        _assert_batches(session, since)
    return status_counts(engine, since)


def _assert_terminal(session: Session, since: int) -> None:
    stuck = _rows(session, "SELECT id, status, attempt, lease_until, run_after FROM jobs "
                           "WHERE id > :s AND status NOT IN ('succeeded', 'dead', 'cancelled') "
                           "ORDER BY id LIMIT 10", since)
    assert not stuck, f"jobs not terminal: {stuck}"


def _assert_results(session: Session, since: int) -> None:
    """One result, one `succeeded` event per succeeded job; none for any other."""
    wrong = _rows(session, """
        SELECT j.id, j.status,
               (SELECT count(*) FROM results r WHERE r.job_id = j.id) AS results,
               (SELECT count(*) FROM audit_events a WHERE a.job_id = j.id
                AND a.event_type = 'succeeded') AS succeeded_events
        FROM jobs j WHERE j.id > :s AND (
            (SELECT count(*) FROM results r WHERE r.job_id = j.id)
              <> CASE WHEN j.status = 'succeeded' THEN 1 ELSE 0 END
         OR (SELECT count(*) FROM audit_events a WHERE a.job_id = j.id
             AND a.event_type = 'succeeded')
              <> CASE WHEN j.status = 'succeeded' THEN 1 ELSE 0 END)
        ORDER BY j.id LIMIT 10""", since)
    assert not wrong, f"jobs with a wrong number of results or succeeded events: {wrong}"


def _assert_attempts(session: Session, since: int) -> None:
    """attempt ≥ 1 once finished, within the allowance, one `started` event per attempt."""
    wrong = _rows(session, """
        SELECT j.id, j.status, j.attempt, j.attempt_base, j.max_attempts, count(a.seq)
        FROM jobs j LEFT JOIN audit_events a ON a.job_id = j.id AND a.event_type = 'started'
        WHERE j.id > :s GROUP BY j.id
        HAVING (j.status IN ('succeeded', 'dead') AND j.attempt < 1)
            OR j.attempt > j.max_attempts + j.attempt_base
            OR count(a.seq) <> j.attempt
        ORDER BY j.id LIMIT 10""", since)
    assert not wrong, f"jobs with inconsistent attempts: {wrong}"


def _events(session: Session, since: int) -> Iterator[tuple[int, list[Any]]]:
    """Each job's events in seq order, streamed as plain rows (ORM objects are slow)."""
    table = AuditEvent.__table__
    stmt = (select(table).where(table.c.job_id > since)
            .order_by(table.c.job_id, table.c.seq).execution_options(yield_per=5000))
    chain: list[Any] = []
    for ev in session.execute(stmt):
        if chain and ev.job_id != chain[0].job_id:
            yield chain[0].job_id, chain
            chain = []
        chain.append(ev)
    if chain:
        yield chain[0].job_id, chain


def _assert_chains(session: Session, since: int) -> None:
    """Every chain verifies, ends at the job row's head, with the event its status implies."""
    heads = {r.id: r for r in _rows(session, "SELECT id, status, audit_seq, audit_head "
                                             "FROM jobs WHERE id > :s", since)}
    broken: list[Any] = []
    seen = 0
    for job_id, chain in _events(session, since):
        seen += 1
        report = audit.verify_events(job_id, chain)
        job, last = heads[job_id], chain[-1]
        if not report.ok:
            broken.append(report)
        elif (job.audit_seq, job.audit_head) != (last.seq, last.hash):
            broken.append((job_id, "row head is not the newest event"))
        elif last.event_type not in LAST_EVENT.get(job.status, {last.event_type}):
            broken.append((job_id, f"{job.status} job's last event is {last.event_type}"))
    assert not broken, f"{len(broken)} audit chain(s) broken, first: {broken[:5]}"
    assert seen == len(heads), f"{len(heads) - seen} job(s) without any audit event"


def _assert_batches(session: Session, since: int) -> None:
    """Batch counters equal the real counts of their jobs."""
    wrong = _rows(session, """
        SELECT b.id, b.total, b.queued, b.running, b.succeeded, b.dead, b.cancelled,
               count(j.id) AS n,
               count(j.id) FILTER (WHERE j.status = 'queued') AS rq,
               count(j.id) FILTER (WHERE j.status = 'running') AS rr,
               count(j.id) FILTER (WHERE j.status = 'succeeded') AS rs,
               count(j.id) FILTER (WHERE j.status = 'dead') AS rd,
               count(j.id) FILTER (WHERE j.status = 'cancelled') AS rc
        FROM batches b JOIN jobs j ON j.batch_id = b.id
        WHERE b.id IN (SELECT DISTINCT batch_id FROM jobs WHERE id > :s)
        GROUP BY b.id
        HAVING (b.total, b.queued, b.running, b.succeeded, b.dead, b.cancelled)
            <> (count(j.id), count(j.id) FILTER (WHERE j.status = 'queued'),
                count(j.id) FILTER (WHERE j.status = 'running'),
                count(j.id) FILTER (WHERE j.status = 'succeeded'),
                count(j.id) FILTER (WHERE j.status = 'dead'),
                count(j.id) FILTER (WHERE j.status = 'cancelled'))
            OR b.finished_at IS NULL""", since)
    assert not wrong, f"batch counters differ from the real counts: {wrong}"


def verify_all_chains(engine: Engine) -> list[audit.ChainReport]:
    """app.jobs.audit.verify_all over the whole database: the broken chains."""
    with Session(engine) as session:
        return [r for r in audit.verify_all(session) if not r.ok]
