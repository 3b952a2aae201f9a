"""Transitions from outside a worker: cancel, manual retry, and the relay's moves."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg.errors import LockNotAvailable
from sqlalchemy import TextClause, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.core.status import JobStatus
from app.jobs import audit, metrics, webhooks
from app.jobs.counters import move_counters
from app.jobs.dispatch import pend_jobs
from app.jobs.pending_publish import schedule_announce, schedule_fill
from app.observe.logs import job_fields

log = logging.getLogger(__name__)

# Each transition locks its rows (one statement), then writes each row once (another):
# its new status, the transition's own columns and its audit head.

#: cancel: the job, if queued or running.
LOCK_CANCEL_SQL = """
SELECT id, batch_id, tenant_id, kind, priority, status, attempt, attempt_base, max_attempts, worker,
       audit_seq, audit_head
FROM jobs WHERE id = :id AND status IN ('queued', 'running') FOR UPDATE
"""
#: cancel_batch: a slice of the batch's jobs that have not started.
LOCK_CANCEL_BATCH_SQL = """
SELECT id, batch_id, tenant_id, kind, priority, status, attempt, attempt_base, max_attempts, worker,
       audit_seq, audit_head
FROM jobs WHERE batch_id = :id AND status = 'queued' ORDER BY id LIMIT :limit FOR UPDATE
"""
#: queued|running → cancelled.
CANCEL_SQL = """
UPDATE jobs SET status = 'cancelled', updated_at = now(), audit_seq = v.seq,
       audit_head = v.head, finished_at = now(), lease_until = NULL
FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS int[]), CAST(:heads AS text[]))
     AS v(id, seq, head)
WHERE jobs.id = v.id
"""

#: retry: the job, if dead or cancelled.
LOCK_RETRY_SQL = """
SELECT id, batch_id, tenant_id, kind, priority, status, attempt, attempt_base, max_attempts, worker,
       audit_seq, audit_head
FROM jobs WHERE id = :id AND status IN ('dead', 'cancelled') FOR UPDATE
"""
#: dead|cancelled → queued, with a fresh allowance of attempts, published at commit.
RETRY_SQL = """
UPDATE jobs SET status = 'queued', updated_at = now(), audit_seq = v.seq,
       audit_head = v.head, attempt_base = attempt, run_after = NULL, published_at = now(),
       finished_at = NULL, lease_until = NULL
FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS int[]), CAST(:heads AS text[]))
     AS v(id, seq, head)
WHERE jobs.id = v.id
"""

#: expire_leases: running jobs whose lease ran out, oldest first, skipping locked ones.
LOCK_EXPIRED_SQL = """
SELECT id, batch_id, tenant_id, kind, priority, status, attempt, attempt_base, max_attempts,
       worker, audit_seq, audit_head
FROM jobs WHERE status = 'running' AND lease_until < now()
ORDER BY lease_until LIMIT :limit FOR UPDATE SKIP LOCKED
"""
#: running → queued, or dead when out of attempts (v.status, decided per row).
EXPIRE_SQL = """
UPDATE jobs SET status = v.status, updated_at = now(), audit_seq = v.seq,
       audit_head = v.head, lease_until = NULL, published_at = NULL, run_after = NULL,
       finished_at = CASE WHEN v.status = 'dead' THEN now() END,
       error = jsonb_build_object('type', 'LeaseExpired', 'message',
               'worker ' || coalesce(jobs.worker, '?') || ' did not finish attempt '
               || jobs.attempt || ' before its lease expired', 'traceback', '')
FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]), CAST(:seqs AS int[]),
            CAST(:heads AS text[])) AS v(id, status, seq, head)
WHERE jobs.id = v.id
"""

_LOCK_CANCEL, _LOCK_CANCEL_BATCH, _LOCK_RETRY, _LOCK_EXPIRED = (
    text(LOCK_CANCEL_SQL), text(LOCK_CANCEL_BATCH_SQL), text(LOCK_RETRY_SQL),
    text(LOCK_EXPIRED_SQL))
_CANCEL, _RETRY, _EXPIRE = text(CANCEL_SQL), text(RETRY_SQL), text(EXPIRE_SQL)


#: How long a cancel waits for job rows a worker has locked: it holds them while it
#: computes an inline chunk (milliseconds, about a second at worst), or, if it hangs,
#: until PostgreSQL cuts it off at the lease. Past this the caller is told to retry.
CANCEL_LOCK_WAIT = "5s"


class Busy(Exception):
    """A worker holds these jobs' rows while finishing them; try again shortly."""


def _move(
    session: Session, rows: Sequence[Any], to: JobStatus | Sequence[JobStatus],
    statement: TextClause, event_type: str, actor: str,
    details: Callable[[Any, str], dict[str, Any]],
) -> None:
    """Write each row once (status, columns, audit head), then its event and counters.

    to: the new status of every row, or of each row in order.
    """
    if not rows:
        return
    statuses = [to] * len(rows) if isinstance(to, JobStatus) else to
    now = datetime.now(UTC)
    stamp = audit.timestamp(now)
    links = [audit.link_at(r.id, r.audit_seq, r.audit_head, event_type, actor,
                           details(r, status), now, stamp)
             for r, status in zip(rows, statuses, strict=True)]
    session.execute(statement, {
        "ids": [r.id for r in rows], "statuses": [str(s) for s in statuses],
        "seqs": [lk.seq for lk in links], "heads": [lk.hash for lk in links],
    })
    audit.insert_links(session, links)
    move_counters(session, Counter(
        (r.batch_id, r.status, status) for r, status in zip(rows, statuses, strict=True)
        if r.batch_id is not None
    ))


def _from(row: Any, _: str) -> dict[str, Any]:
    return {"from": row.status}


def cancel(session: Session, job_id: int, *, actor: str) -> bool:
    """queued|running → cancelled; a running job's late result will be discarded.

    Returns False when the job was already terminal (nothing changed); raises Busy when a
    worker kept its row locked past CANCEL_LOCK_WAIT. Once committed, the cancel is
    announced: the job's long-polls answer then, whichever api process or console made it.
    """
    cancelled = bool(_cancel(session, _LOCK_CANCEL, job_id, actor))
    if cancelled:
        schedule_announce(session, [job_id])
    return cancelled


#: Jobs one transaction of a batch cancel moves: what a cancel costs in memory and in
#: one transaction's length, however big the batch.
CANCEL_SLICE = 5000

#: A batch cancel begins: from this commit on, workers start none of its jobs.
MARK_CANCELLING_SQL = "UPDATE batches SET cancelling = true WHERE id = :id"
#: The batch's last slice is cancelled.
CANCELLED_WHOLE_SQL = "UPDATE batches SET cancelling = false WHERE id = :id"
#: Batch cancels under way (or stopped half way).
CANCELLING_SQL = "SELECT id FROM batches WHERE cancelling ORDER BY id"
_MARK_CANCELLING, _CANCELLED_WHOLE, _CANCELLING = (
    text(MARK_CANCELLING_SQL), text(CANCELLED_WHOLE_SQL), text(CANCELLING_SQL))


def mark_cancelling(session: Session, batch_id: int) -> None:
    """Mark a batch as being cancelled: from its commit on, workers start none of its jobs."""
    session.execute(_MARK_CANCELLING, {"id": batch_id})


def cancel_batch(session: Session, batch_id: int, *, actor: str, limit: int = CANCEL_SLICE,
                 lock_wait: str = CANCEL_LOCK_WAIT) -> int:
    """Cancel up to limit queued jobs of a batch marked cancelling; how many (or Busy).

    Call it, committing after each call, until it returns fewer than limit: that last
    slice also clears the mark, in its own transaction.
    """
    n = _cancel(session, _LOCK_CANCEL_BATCH, batch_id, actor, limit=limit, lock_wait=lock_wait)
    if n < limit:
        session.execute(_CANCELLED_WHOLE, {"id": batch_id})
    return n


def cancelling_batches(session: Session) -> list[int]:
    """Batches marked cancelling: a cancel that stopped half way (409, a lost api) is
    finished by the relay."""
    return list(session.execute(_CANCELLING).scalars())


def _cancel(session: Session, lock: TextClause, id_: int, actor: str, *, limit: int = 1,
            lock_wait: str = CANCEL_LOCK_WAIT) -> int:
    """Lock and cancel the rows, waiting at most lock_wait for any one lock.

    The wait bounds the job rows and the batch counters' row alike (the setting holds
    to the end of the transaction); past it nothing is written and Busy is raised.
    """
    session.execute(text(f"SET LOCAL lock_timeout = '{lock_wait}'"))
    try:
        rows = session.execute(lock, {"id": id_, "limit": limit}).all()
        _move(session, rows, JobStatus.CANCELLED, _CANCEL, "cancelled", actor, _from)
        metrics.cancelled(session, rows)
        webhooks.record_job_events(session, "job.cancelled",
                                   [(r.id, r.tenant_id, r.batch_id) for r in rows])
    except OperationalError as exc:
        if isinstance(exc.orig, LockNotAvailable):
            raise Busy(f"a worker is finishing these jobs; nothing more was cancelled, "
                       f"try again (waited {lock_wait})") from None
        raise
    return len(rows)


def retry(session: Session, job_id: int, *, actor: str) -> bool:
    """dead|cancelled → queued by hand, with a fresh allowance of attempts."""
    rows = session.execute(_LOCK_RETRY, {"id": job_id}).all()
    _move(session, rows, JobStatus.QUEUED, _RETRY, "retried", actor, _from)
    if rows:
        pend_jobs(session, [r.id for r in rows])
        schedule_fill(session)
    return bool(rows)


# --- relay moves ---------------------------------------------------------------


def expire_leases(session: Session, *, actor: str, limit: int = 5000) -> int:
    """running → queued (or dead when out of attempts) for jobs whose lease ran out."""
    rows = session.execute(_LOCK_EXPIRED, {"limit": limit}).all()
    statuses = [JobStatus.DEAD if r.attempt - r.attempt_base >= r.max_attempts
                else JobStatus.QUEUED for r in rows]
    _move(session, rows, statuses, _EXPIRE, "lease_expired", actor,
          lambda r, status: {"attempt": r.attempt, "worker": r.worker, "to": status})
    metrics.expired(session, rows, statuses)
    for r, status in zip(rows, statuses, strict=True):
        log.warning("lease of worker %s expired; job %s", r.worker,
                    "dead" if status == "dead" else "queued again", extra=job_fields(r))
    webhooks.record_job_events(session, "job.dead", [
        (r.id, r.tenant_id, r.batch_id) for r, s in zip(rows, statuses, strict=True)
        if s == JobStatus.DEAD])
    return len(rows)


#: Jobs prune handles per call (and the relay makes pending per call); a full slice
#: means more may be waiting.
SLICE = 10_000


#: Batches that finished before the retention period (:days ago).
PRUNE_BATCHES_SQL = "DELETE FROM batches WHERE finished_at < now() - make_interval(days => :days)"
#: Finished jobs past retention that belong to no live batch, a slice at a time. The
#: rows are locked as they are picked, skipping any a transition holds (a manual retry
#: in flight), and the DELETE checks them again: a job a retry has just queued stays.
PRUNE_JOBS_SQL = """
DELETE FROM jobs WHERE id IN (
  SELECT j.id FROM jobs j
  WHERE j.status IN ('succeeded', 'dead', 'cancelled')
    AND j.finished_at < now() - make_interval(days => :days)
    AND (j.batch_id IS NULL OR NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = j.batch_id))
  LIMIT :limit FOR UPDATE OF j SKIP LOCKED)
  AND status IN ('succeeded', 'dead', 'cancelled')
  AND finished_at < now() - make_interval(days => :days)
RETURNING id
"""
#: The audit trails of pruned jobs: the one way to delete audit events (migration 0004),
#: which deletes only those of jobs already gone.
PRUNE_EVENTS_SQL = "SELECT babelq_prune_audit(CAST(:ids AS bigint[]))"
_PRUNE_BATCHES, _PRUNE_JOBS, _PRUNE_EVENTS = (
    text(PRUNE_BATCHES_SQL), text(PRUNE_JOBS_SQL), text(PRUNE_EVENTS_SQL))


def prune(session: Session, *, older_than_days: int, limit: int = SLICE) -> int:
    """Delete what finished before the retention period; returns how many jobs went.

    Results and decisions go with their jobs (foreign key cascade), audit trails here.
    A batch goes whole: its row as soon as the batch itself finished before the cutoff,
    so it is gone from the api at once, then its jobs, `limit` per call. The jobs of a
    batch still live are kept, so its counters only ever count jobs that exist.
    """
    days = {"days": older_than_days}
    session.execute(_PRUNE_BATCHES, days)
    ids = session.execute(_PRUNE_JOBS, {**days, "limit": limit}).scalars().all()
    if ids:
        session.execute(_PRUNE_EVENTS, {"ids": list(ids)})
    return len(ids)

