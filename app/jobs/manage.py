"""Transitions from outside a worker: cancel, manual retry, and the relay's moves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app import audit
from app.config import get_settings
from app.jobs.counters import move_counters, moves_of
from app.jobs.outbox import schedule_publish

_CANCEL = text(
    "UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_until = NULL, "
    "updated_at = now() FROM (SELECT id, status FROM jobs WHERE {where} FOR UPDATE) AS old "
    "WHERE jobs.id = old.id "
    "RETURNING jobs.id, jobs.batch_id, jobs.kind, old.status AS old_status, "
    "'cancelled' AS new_status, jobs.audit_seq, jobs.audit_head"
)


def _transition_events(
    session: Session, rows: Sequence[Any], event_type: str, actor: str, **details: Any
) -> None:
    links = [
        audit.link(r.id, r.audit_seq, r.audit_head, event_type, actor,
                   {"from": r.old_status, **details})
        for r in rows
    ]
    audit.append(session, links)
    move_counters(session, moves_of(rows, "old_status", "new_status"))


def cancel(session: Session, job_id: int, *, actor: str) -> bool:
    """queued|running → cancelled; a running job's late result will be discarded.

    Returns False when the job was already terminal (nothing changed).
    """
    where = "id = :id AND status IN ('queued', 'running')"
    rows = session.execute(text(_CANCEL.text.format(where=where)), {"id": job_id}).all()
    _transition_events(session, rows, "cancelled", actor)
    return bool(rows)


def cancel_batch(session: Session, batch_id: int, *, actor: str) -> int:
    """Cancel every job of a batch that has not started; returns how many."""
    where = "batch_id = :id AND status = 'queued'"
    rows = session.execute(text(_CANCEL.text.format(where=where)), {"id": batch_id}).all()
    _transition_events(session, rows, "cancelled", actor)
    return len(rows)


def retry(session: Session, job_id: int, *, actor: str) -> bool:
    """dead|cancelled → queued by hand, with a fresh allowance of attempts."""
    rows = session.execute(
        text(
            "UPDATE jobs SET status = 'queued', attempt_base = attempt, run_after = NULL, "
            "published_at = now(), finished_at = NULL, lease_until = NULL, updated_at = now() "
            "FROM (SELECT id, status FROM jobs WHERE id = :id AND status IN ('dead', 'cancelled') "
            "FOR UPDATE) AS old WHERE jobs.id = old.id "
            "RETURNING jobs.id, jobs.batch_id, jobs.kind, jobs.priority, old.status AS old_status, "
            "'queued' AS new_status, jobs.audit_seq, jobs.audit_head"
        ),
        {"id": job_id},
    ).all()
    _transition_events(session, rows, "retried", actor)
    for r in rows:
        schedule_publish(session, r.kind, r.priority, [r.id])
    return bool(rows)


# --- relay moves ---------------------------------------------------------------

_EXPIRE = text(
    "UPDATE jobs SET status = CASE WHEN attempt - attempt_base >= max_attempts "
    "THEN 'dead' ELSE 'queued' END, "
    "lease_until = NULL, published_at = NULL, run_after = NULL, updated_at = now(), "
    "finished_at = CASE WHEN attempt - attempt_base >= max_attempts THEN now() END, "
    "error = jsonb_build_object('type', 'LeaseExpired', 'message', "
    "'worker ' || coalesce(old.worker, '?') || ' did not finish attempt ' || attempt "
    "|| ' before its lease expired', 'traceback', '') "
    "FROM (SELECT id, worker FROM jobs WHERE status = 'running' AND lease_until < now() "
    "ORDER BY lease_until LIMIT :limit FOR UPDATE SKIP LOCKED) AS old "
    "WHERE jobs.id = old.id "
    "RETURNING jobs.id, jobs.batch_id, 'running' AS old_status, jobs.status AS new_status, "
    "jobs.attempt, old.worker, jobs.audit_seq, jobs.audit_head"
)


def expire_leases(session: Session, *, actor: str, limit: int = 5000) -> int:
    """running → queued (or dead when out of attempts) for jobs whose lease ran out."""
    rows = session.execute(_EXPIRE, {"limit": limit}).all()
    links = [
        audit.link(r.id, r.audit_seq, r.audit_head, "lease_expired", actor,
                   {"attempt": r.attempt, "worker": r.worker, "to": r.new_status})
        for r in rows
    ]
    audit.append(session, links)
    move_counters(session, moves_of(rows, "old_status", "new_status"))
    return len(rows)


_DUE = text(
    "UPDATE jobs SET published_at = now() FROM ("
    "SELECT id FROM jobs WHERE status = 'queued' AND {which} "
    "AND (run_after IS NULL OR run_after <= now()) "
    "ORDER BY priority, id LIMIT :limit FOR UPDATE SKIP LOCKED) AS due "
    "WHERE jobs.id = due.id RETURNING jobs.id, jobs.kind, jobs.priority"
)
#: Never published: new retries and returned leases (served by the jobs_unpublished index).
_UNPUBLISHED = text(_DUE.text.format(which="published_at IS NULL"))
#: Published long ago, of a kind whose broker queue is empty: the message was lost.
_STALE = text(_DUE.text.format(
    which="published_at < now() - make_interval(secs => :stale) "
          "AND kind = ANY(CAST(:idle AS text[]))"))


def take_due(
    session: Session, *, idle_kinds: Sequence[str], limit: int = 10_000
) -> dict[tuple[str, int], list[int]]:
    """Queued jobs to (re)publish, grouped by (kind, priority).

    Never-published ones (new retries, returned leases) are always due. Ones published
    more than `requeue_after` ago are due only for kinds whose broker queue is empty:
    with a backlog in Redis their message is most likely still waiting there.
    """
    rows = list(session.execute(_UNPUBLISHED, {"limit": limit}).all())
    if idle_kinds and len(rows) < limit:
        rows += session.execute(_STALE, {
            "stale": get_settings().requeue_after, "idle": list(idle_kinds),
            "limit": limit - len(rows),
        }).all()
    groups: dict[tuple[str, int], list[int]] = {}
    for r in sorted(rows, key=lambda r: r.id):
        groups.setdefault((r.kind, r.priority), []).append(r.id)
    return groups


def prune(session: Session, *, older_than_days: int, limit: int = 10_000) -> int:
    """Delete finished jobs (and their audit trails) past the retention period."""
    session.execute(text("SET LOCAL babelq.prune = 'on'"))
    ids = session.execute(
        text("DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE status IN "
             "('succeeded', 'dead', 'cancelled') AND finished_at < now() - "
             "make_interval(days => :days) LIMIT :limit) RETURNING id"),
        {"days": older_than_days, "limit": limit},
    ).scalars().all()
    if ids:
        session.execute(text("DELETE FROM audit_events WHERE job_id = ANY(CAST(:ids AS bigint[]))"),
                        {"ids": list(ids)})
    return len(ids)
