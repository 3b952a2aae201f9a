"""The only code that changes job state: submit, claim, finish, cancel, retry, relay moves.

Every transition appends to the job's audit chain and moves its batch's counters
in the same transaction. Publishing to the broker happens after commit only.
"""

from __future__ import annotations

import hashlib
import logging
import random
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import event, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app import audit, core, pgcopy, testhooks
from app.audit import Link
from app.config import get_settings
from app.core.canonical import canonical_json
from app.models import PRIORITIES, Job

log = logging.getLogger(__name__)

_OUTBOX = "babelq_outbox"


class UnknownKind(ValueError):
    """No computation of that name exists."""


def validate(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Normalised params; UnknownKind or pydantic.ValidationError when they are not valid."""
    if kind in testhooks.TEST_KINDS and testhooks.enabled():
        return testhooks.validate(kind, params)
    if kind not in core.KINDS:
        raise UnknownKind(f"unknown kind {kind!r}; expected one of {', '.join(core.KINDS)}")
    return core.validate(kind, params)


# --- publishing after commit -------------------------------------------------


def schedule_publish(session: Session, kind: str, priority: int, ids: Sequence[int]) -> None:
    """Publish these job ids once (and only if) the session's transaction commits."""
    session.info.setdefault(_OUTBOX, []).append((kind, priority, ids))


@event.listens_for(Session, "after_commit")
def _publish_outbox(session: Session) -> None:
    pending = session.info.pop(_OUTBOX, [])
    if pending:
        from workers.celery_app import publish_safely

        for kind, priority, ids in pending:
            publish_safely(kind, priority, ids)


@event.listens_for(Session, "after_rollback")
def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)


# --- batch counters ------------------------------------------------------------

#: A job moved from one status to another in a batch: (batch_id, from, to) -> count.
Moves = Counter[tuple[int, str, str]]


def move_counters(session: Session, moves: Moves) -> None:
    """Apply status moves to batch counters; stamp started/finished times."""
    delta: dict[int, Counter[str]] = {}
    for (batch_id, src, dst), n in moves.items():
        d = delta.setdefault(batch_id, Counter())
        d[src] -= n
        d[dst] += n
    for batch_id, d in delta.items():
        session.execute(
            text(
                "UPDATE batches SET queued = queued + :queued, running = running + :running, "
                "succeeded = succeeded + :succeeded, dead = dead + :dead, "
                "cancelled = cancelled + :cancelled, "
                "started_at = CASE WHEN :running > 0 THEN coalesce(started_at, now()) "
                "ELSE started_at END, "
                "finished_at = CASE WHEN queued + :queued + running + :running = 0 "
                "THEN coalesce(finished_at, now()) ELSE NULL END "
                "WHERE id = :id"
            ),
            {"id": batch_id, **{s: d[s] for s in ("queued", "running", "succeeded", "dead",
                                                   "cancelled")}},
        )


def _moves(rows: Iterable[Any], src_attr: str, dst_attr: str) -> Moves:
    moves: Moves = Counter()
    for r in rows:
        if r.batch_id is not None:
            moves[(r.batch_id, getattr(r, src_attr), getattr(r, dst_attr))] += 1
    return moves


# --- submit --------------------------------------------------------------------


def submit(
    session: Session,
    *,
    tenant_id: int,
    kind: str,
    params: dict[str, Any],
    actor: str,
    priority: str = "normal",
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    ref: str | None = None,
) -> tuple[Job, bool]:
    """Insert one job (the enqueue) in the caller's transaction; publish after commit.

    Returns (job, created); created is False when the idempotency key was seen.
    Raises pydantic.ValidationError / ValueError for invalid params: nothing is written.
    """
    clean = validate(kind, params)
    attempts = max_attempts or get_settings().default_max_attempts
    values = {
        "tenant_id": tenant_id,
        "kind": kind,
        "params": clean,
        "priority": PRIORITIES[priority],
        "max_attempts": attempts,
        "idempotency_key": idempotency_key,
        "ref": ref,
        "published_at": datetime.now(UTC),
    }
    stmt = insert(Job).values(**values)
    if idempotency_key is not None:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=["tenant_id", "idempotency_key"],
            index_where=text("idempotency_key IS NOT NULL"),
        )
    job_id = session.execute(stmt.returning(Job.id)).scalar()
    if job_id is None:
        existing = session.scalars(
            select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key)
        ).one()
        return existing, False
    details = {"kind": kind, "priority": priority, "max_attempts": attempts}
    audit.append(session, [audit.link(job_id, 0, "", "submitted", actor, details)])
    schedule_publish(session, kind, PRIORITIES[priority], [job_id])
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job, True


# --- claim / finish --------------------------------------------------------------


@dataclass(slots=True)
class Claimed:
    """A job this worker now holds, with what it needs to compute and to write back."""

    id: int
    kind: str
    params: dict[str, Any]
    attempt: int
    attempts_left: int
    batch_id: int | None
    head: Link


_LOCK_DUE = text(
    "SELECT id, kind, params, attempt + 1 AS attempt, attempt_base, max_attempts, batch_id, "
    "audit_seq, audit_head FROM jobs WHERE id = ANY(CAST(:ids AS bigint[])) "
    "AND status = 'queued' AND (run_after IS NULL OR run_after <= now()) "
    "ORDER BY id FOR UPDATE SKIP LOCKED"
)

_CLAIM = text(
    "UPDATE jobs SET status = 'running', attempt = v.attempt, worker = :worker, "
    "lease_until = now() + make_interval(secs => :lease), "
    "started_at = coalesce(started_at, now()), updated_at = now(), "
    "audit_seq = v.seq, audit_head = v.head "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:seqs AS int[]), "
    "CAST(:heads AS text[])) AS v(id, attempt, seq, head) WHERE jobs.id = v.id"
)


def claim(session: Session, ids: Sequence[int], *, worker: str) -> list[Claimed]:
    """queued → running for those of ids still queued and due; fenced by attempt number.

    The rows are locked first (skipping any another transaction holds), so each is
    updated once, with its new audit head. The claim commits without waiting for the
    disk: if PostgreSQL crashes and loses it, the job is simply queued again and the
    fence discards whatever this attempt computes.
    """
    session.execute(text("SET LOCAL synchronous_commit = off"))
    rows = session.execute(_LOCK_DUE, {"ids": list(ids)}).all()
    if not rows:
        return []
    now = datetime.now(UTC)
    stamp = audit.timestamp(now)
    claimed = [
        Claimed(r.id, r.kind, r.params, r.attempt, r.max_attempts - (r.attempt - r.attempt_base),
                r.batch_id, audit.link_at(r.id, r.audit_seq, r.audit_head, "started", worker,
                                          {"attempt": r.attempt}, now, stamp))
        for r in rows
    ]
    session.execute(_CLAIM, {
        "worker": worker, "lease": get_settings().lease_seconds,
        "ids": [c.id for c in claimed], "attempts": [c.attempt for c in claimed],
        "seqs": [c.head.seq for c in claimed], "heads": [c.head.hash for c in claimed],
    })
    audit.insert_links(session, [c.head for c in claimed])
    move_counters(session, Counter((c.batch_id, "queued", "running") for c in claimed
                                   if c.batch_id is not None))
    return claimed


@dataclass(slots=True)
class Outcome:
    """What computing a claimed job gave: a result, or an error."""

    job: Claimed
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    links: list[Link] = field(default_factory=list)
    #: the result's canonical JSON and its sha256, encoded once for every use
    canonical: str = ""
    sha: str = ""


def error_info(exc: BaseException) -> dict[str, Any]:
    """Type, message and traceback of a failure, as stored on the job."""
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-20_000:],
    }


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter, capped (seconds)."""
    s = get_settings()
    ceiling = min(s.retry_backoff_max, s.retry_backoff_base * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


_SUCCEED = text(
    "UPDATE jobs SET status = 'succeeded', finished_at = now(), lease_until = NULL, "
    "error = NULL, updated_at = now(), audit_seq = v.seq, audit_head = v.head "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:seqs AS int[]), "
    "CAST(:heads AS text[])) AS v(id, attempt, seq, head) "
    "WHERE jobs.id = v.id AND jobs.status = 'running' AND jobs.attempt = v.attempt "
    "RETURNING jobs.id, jobs.batch_id"
)

_FAIL = text(
    "UPDATE jobs SET status = v.status, error = v.error, lease_until = NULL, "
    "run_after = v.run_after, published_at = NULL, updated_at = now(), "
    "finished_at = CASE WHEN v.status = 'dead' THEN now() ELSE NULL END, "
    "audit_seq = v.seq, audit_head = v.head "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]), "
    "CAST(:errors AS jsonb[]), CAST(:run_afters AS timestamptz[]), CAST(:seqs AS int[]), "
    "CAST(:heads AS text[])) AS v(id, attempt, status, error, run_after, seq, head) "
    "WHERE jobs.id = v.id AND jobs.status = 'running' AND jobs.attempt = v.attempt "
    "RETURNING jobs.id, jobs.batch_id, v.status"
)


def _succeed(session: Session, outcomes: list[Outcome], worker: str) -> Moves:
    for o in outcomes:
        o.canonical = canonical_json(o.result).decode()
        o.sha = hashlib.sha256(o.canonical.encode()).hexdigest()
        o.links = _success_links(o, worker)
    rows = session.execute(_SUCCEED, {
        "ids": [o.job.id for o in outcomes],
        "attempts": [o.job.attempt for o in outcomes],
        "seqs": [o.links[-1].seq for o in outcomes],
        "heads": [o.links[-1].hash for o in outcomes],
    }).all()
    won = {r.id for r in rows}
    kept = [o for o in outcomes if o.job.id in won]
    _write_results(session, kept)
    audit.insert_links(session, [lk for o in kept for lk in o.links])
    return Counter((r.batch_id, "running", "succeeded") for r in rows if r.batch_id is not None)


def _success_links(o: Outcome, worker: str) -> list[Link]:
    """One event per governor cycle of an evaluate job, then the succeeded event."""
    assert o.result is not None
    links: list[Link] = []
    seq, head = o.job.head.seq, o.job.head.hash
    at = datetime.now(UTC)
    events: list[tuple[str, dict[str, Any]]] = []
    if o.job.kind == "evaluate":
        events = [("governor_cycle", cycle) for cycle in o.result["cycles"]]
    events.append(("succeeded", {"attempt": o.job.attempt, "result_sha256": o.sha}))
    for event_type, details in events:
        lk = audit.link(o.job.id, seq, head, event_type, worker, details, at)
        links.append(lk)
        seq, head = lk.seq, lk.hash
    return links


def _write_results(session: Session, kept: list[Outcome]) -> None:
    # COPY is safe: only the fenced winner of a job's current attempt gets here, and a job
    # succeeds once (a manual retry is only for dead or cancelled jobs).
    if not kept:
        return
    pgcopy.copy_rows(session, "results", ("job_id", "result", "result_sha256"), (
        f"{o.job.id}\t{pgcopy.json_text(o.canonical)}\t{o.sha}\n" for o in kept
    ))
    decisions = [o for o in kept if o.job.kind == "evaluate"]
    if decisions:
        _write_decisions(session, decisions)


def _write_decisions(session: Session, outcomes: list[Outcome]) -> None:
    rows = []
    for o in outcomes:
        r = o.result or {}
        final = r["final"]
        rows.append({
            "job_id": o.job.id, "decision": r["decision"], "stop_reason": r["stop_reason"],
            "cycles_evaluated": r["cycles_evaluated"], "similarity": final["similarity"],
            "risk": final["risk"], "composite_quality": final["composite_quality"],
            "remaining_budget": final["remaining_budget"],
        })
    from app.models import Decision

    session.execute(insert(Decision).on_conflict_do_nothing(), rows)


def _json(value: Any) -> str:
    return canonical_json(value).decode()


def _fail(session: Session, outcomes: list[Outcome], worker: str) -> Moves:
    now = datetime.now(UTC)
    statuses, run_afters = [], []
    for o in outcomes:
        dead = o.job.attempts_left <= 0
        delay = 0.0 if dead else backoff(o.job.attempt)
        statuses.append("dead" if dead else "queued")
        run_afters.append(None if dead else now + timedelta(seconds=delay))
        details = {"attempt": o.job.attempt, "error": {k: v for k, v in (o.error or {}).items()
                                                       if k != "traceback"}}
        if not dead:
            details["retry_in"] = round(delay, 3)
        o.links = [audit.link(o.job.id, o.job.head.seq, o.job.head.hash,
                              "dead" if dead else "retry_scheduled", worker, details, now)]
    rows = session.execute(_FAIL, {
        "ids": [o.job.id for o in outcomes],
        "attempts": [o.job.attempt for o in outcomes],
        "statuses": statuses,
        "errors": [_json(o.error) for o in outcomes],
        "run_afters": run_afters,
        "seqs": [o.links[-1].seq for o in outcomes],
        "heads": [o.links[-1].hash for o in outcomes],
    }).all()
    won = {r.id for r in rows}
    audit.insert_links(session, [lk for o in outcomes if o.job.id in won for lk in o.links])
    return Counter((r.batch_id, "running", r.status) for r in rows if r.batch_id is not None)


def finish(session: Session, outcomes: Sequence[Outcome], *, worker: str) -> None:
    """Write results, decisions, errors, audit events and statuses of a chunk at once.

    Only the holder of a job's current attempt writes (fencing): a late or duplicate
    outcome of a job that was cancelled, re-leased or already finished is discarded.
    """
    good = [o for o in outcomes if o.error is None]
    bad = [o for o in outcomes if o.error is not None]
    moves: Moves = Counter()
    if good:
        moves += _succeed(session, good, worker)
    if bad:
        moves += _fail(session, bad, worker)
    move_counters(session, moves)


# --- cancel / retry ------------------------------------------------------------

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
    move_counters(session, _moves(rows, "old_status", "new_status"))


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
    move_counters(session, _moves(rows, "old_status", "new_status"))
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


# --- bulk submit -----------------------------------------------------------------


@dataclass(slots=True)
class NewJob:
    """One validated line of a batch."""

    line: int
    kind: str
    params: dict[str, Any]
    priority: int
    max_attempts: int
    idempotency_key: str | None = None
    ref: str | None = None


_JOB_COLUMNS = ("id", "tenant_id", "batch_id", "line", "kind", "params", "priority",
                "max_attempts", "idempotency_key", "ref", "published_at", "audit_seq",
                "audit_head")


def reserve_ids(session: Session, n: int) -> list[int]:
    """n fresh job ids from the jobs sequence, so rows can be COPYed with their ids."""
    return list(session.execute(
        text("SELECT nextval(pg_get_serial_sequence('jobs', 'id')) "
             "FROM generate_series(1, :n)"), {"n": n}
    ).scalars())


def submit_rows(
    session: Session, rows: Sequence[NewJob], *, tenant_id: int, batch_id: int, actor: str
) -> tuple[list[tuple[NewJob, int]], list[tuple[NewJob, int]]]:
    """Insert many jobs of one batch with COPY, each with its "submitted" audit event.

    Rows with an idempotency key go through INSERT .. ON CONFLICT instead, since COPY
    cannot skip conflicts. Returns (inserted, duplicates) as (row, job id) pairs; for a
    duplicate the id is the existing job's. Nothing is published here: the caller
    publishes after commit.
    """
    ids = reserve_ids(session, len(rows))
    now = datetime.now(UTC)
    stamp = audit.timestamp(now)
    pairs = list(zip(rows, ids, strict=True))
    links = {i: audit.link_at(i, 0, "", "submitted", actor,
                              {"kind": r.kind, "batch_id": batch_id, "line": r.line}, now, stamp)
             for r, i in pairs}
    plain = [(r, i) for r, i in pairs if r.idempotency_key is None]
    keyed = [(r, i) for r, i in pairs if r.idempotency_key is not None]
    prefix = f"{tenant_id}\t{batch_id}\t"
    pgcopy.copy_rows(session, "jobs", _JOB_COLUMNS, (
        f"{i}\t{prefix}{r.line}\t{r.kind}\t{pgcopy.json_value(r.params)}\t{r.priority}\t"
        f"{r.max_attempts}\t\\N\t{pgcopy.text_value(r.ref)}\t{stamp}\t1\t{links[i].hash}\n"
        for r, i in plain
    ))
    inserted = plain + _insert_keyed(session, keyed, tenant_id, batch_id, now, links)
    kept = {i for _, i in inserted}
    duplicates = _existing(session, tenant_id, [r for r, i in keyed if i not in kept])
    audit.insert_links(session, [links[i] for i in sorted(kept)])
    return inserted, duplicates


def _insert_keyed(
    session: Session, keyed: list[tuple[NewJob, int]], tenant_id: int, batch_id: int,
    now: datetime, links: dict[int, Link],
) -> list[tuple[NewJob, int]]:
    if not keyed:
        return []
    got = set(session.execute(
        text("INSERT INTO jobs (id, tenant_id, batch_id, line, kind, params, priority, "
             "max_attempts, idempotency_key, ref, published_at, audit_seq, audit_head) "
             "SELECT v.id, :tenant, :batch, v.line, v.kind, v.params, v.priority, v.attempts, "
             "v.ikey, v.ref, :now, 1, v.head FROM unnest(CAST(:ids AS bigint[]), "
             "CAST(:lines AS int[]), CAST(:kinds AS text[]), CAST(:params AS jsonb[]), "
             "CAST(:pris AS smallint[]), CAST(:attempts AS int[]), CAST(:ikeys AS text[]), "
             "CAST(:refs AS text[]), CAST(:heads AS text[])) "
             "AS v(id, line, kind, params, priority, attempts, ikey, ref, head) "
             "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL "
             "DO NOTHING RETURNING id"),
        {"tenant": tenant_id, "batch": batch_id, "now": now,
         "ids": [i for _, i in keyed], "lines": [r.line for r, _ in keyed],
         "kinds": [r.kind for r, _ in keyed],
         "params": [orjson.dumps(r.params).decode() for r, _ in keyed],
         "pris": [r.priority for r, _ in keyed], "attempts": [r.max_attempts for r, _ in keyed],
         "ikeys": [r.idempotency_key for r, _ in keyed], "refs": [r.ref for r, _ in keyed],
         "heads": [links[i].hash for _, i in keyed]},
    ).scalars())
    return [(r, i) for r, i in keyed if i in got]


def _existing(session: Session, tenant_id: int, rows: list[NewJob]) -> list[tuple[NewJob, int]]:
    if not rows:
        return []
    found: dict[str, int] = {key: job_id for key, job_id in session.execute(
        text("SELECT idempotency_key, id FROM jobs WHERE tenant_id = :t "
             "AND idempotency_key = ANY(CAST(:keys AS text[]))"),
        {"t": tenant_id, "keys": [r.idempotency_key for r in rows]},
    )}
    return [(r, found[r.idempotency_key]) for r in rows if r.idempotency_key in found]
