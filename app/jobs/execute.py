"""Running jobs: claim a chunk (queued → running), then finish it (results or errors)."""

from __future__ import annotations

import hashlib
import logging
import operator
import random
import time
import traceback
from collections import Counter, namedtuple
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.broker.fastlane import Fresh
from app.config import get_settings
from app.core.canonical import canonical_json
from app.core.status import JobStatus
from app.jobs import audit, metrics, webhooks
from app.jobs.audit import Link
from app.jobs.counters import Moves, move_counters
from app.jobs.dispatch import SETTLE_SQL
from app.observe import tracing
from app.observe.logs import job_fields
from app.store import pgcopy
from app.store.db import (
    array_literal,
    conn_rows,
    driver_autocommit,
    driver_rows,
    driver_sql,
    hex_array_literal,
)
from app.store.models import Decision

Q, R, S, D = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.DEAD

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LockedJob:
    """A job this worker has locked, with what it needs to compute and to write back.

    Either inline (computed under its row lock, its row still `queued`) or to be claimed
    (claim(): queued → running with a lease, computed after that commit).
    """

    id: int
    kind: str
    params: dict[str, Any]
    attempt: int
    attempts_left: int
    batch_id: int | None
    #: its "started" event: written by claim(), or with the outcome when inline
    head: Link
    #: held by a row lock in the open transaction, its row still `queued` (see lock_queued())
    inline: bool = False
    priority: int = 1
    tenant_id: int | None = None
    #: seconds since submission when taken (the database's clock), whether a first start,
    #: and time.monotonic() then: for the queue wait and latency metrics
    waited: float = 0.0
    first: bool = False
    taken: float = 0.0
    #: W3C trace context of its submission (app/observe/tracing.py)
    traceparent: str | None = None


#: Texts up to this length keep an inline encode to a few milliseconds even with codec hd.
INLINE_TEXT = 4096


def runs_inline(kind: str, params: dict[str, Any]) -> bool:
    """Whether a job is cheap enough to compute inside the transaction that locks it."""
    return kind == "encode" and len(params.get("text", "")) <= INLINE_TEXT


# Each id is looked up and locked by its key alone (a LATERAL with LIMIT, which the
# planner neither turns into a join nor pushes the status test into), and the status is
# tested on the row it locked. With the status inside, the statistics of a fresh batch
# (a table "of a few thousand rows", all finished) made a partial index on queued jobs
# look like one row: the planner hashed all of it on every chunk (124 ms for a 200,000
# job backlog, growing with it) or, per id, scanned it whole (21 ms an id). By key it
# is 2 ms a chunk of 500, whatever the backlog. A job no longer queued (a duplicate
# message's, a batch's being cancelled) is locked until this transaction ends and left
# alone; EvalPlanQual hands the status test the newest version of a row just changed.
# The ids are sorted and unique: locks are taken in id order and no job comes twice.
#
# The message's dispatch row goes in the same statement (app.jobs.dispatch.SETTLE_SQL):
# a round trip less per message than a statement of its own (psycopg's pipeline mode,
# to send both at once, cost more CPU than the round trip it saved, 215 against 150 µs,
# and the inline lease's test failed with it).
#
# It also sets idle_in_transaction_session_timeout to the lease for this transaction (in
# the same round trip as the lock, not a SET LOCAL of its own): see lock_queued(). The
# uncorrelated subqueries are one-time filters, run once before any row is read; the
# first makes no job of a batch being cancelled start (the few marked batches are read
# through the batches_cancelling partial index).
LOCK_QUEUED_SQL = """
WITH settled AS (""" + SETTLE_SQL + """)
SELECT j.id, j.kind, j.params, j.attempt + 1 AS attempt, j.attempt_base, j.max_attempts,
       j.batch_id, j.audit_seq, j.audit_head, j.priority, j.tenant_id, j.traceparent,
       extract(epoch FROM now() - j.created_at) AS waited, j.started_at IS NULL AS first
FROM (SELECT DISTINCT id FROM unnest(CAST(:ids AS bigint[])) AS u(id) ORDER BY id) AS v
CROSS JOIN LATERAL (SELECT * FROM jobs WHERE jobs.id = v.id
                    LIMIT 1 FOR UPDATE SKIP LOCKED) AS j
WHERE j.status = 'queued' AND (j.run_after IS NULL OR j.run_after <= now())
  AND (j.batch_id IS NULL OR j.batch_id <> ALL(coalesce(
       (SELECT array_agg(b.id) FROM batches b WHERE b.cancelling), '{}')))
  AND (SELECT set_config('idle_in_transaction_session_timeout', :idle, true)) IS NOT NULL
ORDER BY j.id
"""
_LOCK_QUEUED = driver_sql(text(LOCK_QUEUED_SQL))

#: queued → running with a lease, for jobs lock_queued() locked. A finishing statement
#: sets the same attempt, worker, started_at and audit head, which for a claimed job
#: changes nothing and for an inline one (never claimed) records its run.
CLAIM_SQL = """
UPDATE jobs SET status = 'running', lease_until = now() + make_interval(secs => :lease),
       attempt = v.attempt, worker = :worker, started_at = coalesce(started_at, now()),
       updated_at = statement_timestamp(), audit_seq = v.seq, audit_head = v.head
FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:seqs AS int[]),
            CAST(:heads AS text[])) AS v(id, attempt, seq, head)
WHERE jobs.id = v.id
"""
_CLAIM = text(CLAIM_SQL)


def lock_queued(session: Session, ids: Sequence[int], *, worker: str, inline_ok: bool = True,
                dispatch: int | None = None) -> tuple[list[LockedJob], list[LockedJob]]:
    """Lock the due jobs of a chunk: (inline, to_claim). Nothing is written yet.

    Cheap jobs (runs_inline) stay `queued` under their row lock, to be computed and
    finished in this same transaction: one row version, one commit. The lock is their
    lease: a worker that dies drops its connection and PostgreSQL releases them; one that
    hangs is cut off by idle_in_transaction_session_timeout, set to the lease. The others
    are for claim(): claimed for all to see (queued → running with a lease), computed after
    commit. With inline_ok False (a redelivered or republished message, which may be a job
    that killed its worker) every job is for claim(), so each attempt is counted. dispatch:
    the message's dispatch row, deleted by the same statement (app.jobs.dispatch).

    Compute the inline jobs before claim() and finish(): their writes, the batch counters'
    row locks among them, then come at the end of the transaction.
    """
    idle = str(int(get_settings().lease_seconds * 1000))
    # By the driver, as _SUCCEED_WITH_ROWS: a one-job chunk's statements are mostly
    # SQLAlchemy's own overhead (see db.driver_autocommit).
    # ids come from a broker message: anything but ints fails here (operator.index).
    rows = driver_rows(session, _LOCK_QUEUED, {
        "ids": array_literal(map(operator.index, ids)), "idle": idle, "dispatch": dispatch})
    if not rows:
        return [], []
    now = datetime.now(UTC)
    stamp = audit.timestamp(now)
    taken = [
        LockedJob(r.id, r.kind, r.params, r.attempt, r.max_attempts - (r.attempt - r.attempt_base),
                r.batch_id, audit.link_at(r.id, r.audit_seq, r.audit_head, "started", worker,
                                          {"attempt": r.attempt}, now, stamp),
                inline_ok and runs_inline(r.kind, r.params), r.priority, r.tenant_id,
                float(r.waited), r.first, time.monotonic(), r.traceparent)
        for r in rows
    ]
    if tracing.enabled():
        _batch_traces(session, taken)
    metrics.started(session, taken)
    inline = [c for c in taken if c.inline]
    claimed = [c for c in taken if not c.inline]
    if not inline:
        # Nothing but claims: the commit need not wait for the disk. If PostgreSQL crashes
        # and loses it, the jobs are simply queued again and fencing discards this attempt.
        session.execute(text("SET LOCAL synchronous_commit = off"))
    return inline, claimed


_BATCH_TRACES = text("SELECT id, traceparent FROM batches WHERE id = ANY(CAST(:ids AS bigint[]))")


def _batch_traces(session: Session, taken: list[LockedJob]) -> None:
    """A batch's jobs are traced in its upload's trace (batches.traceparent)."""
    ids = {c.batch_id for c in taken if c.batch_id is not None and c.traceparent is None}
    if not ids:
        return
    rows = session.execute(_BATCH_TRACES, {"ids": list(ids)}).all()
    found: dict[int, str | None] = {r.id: r.traceparent for r in rows}
    for c in taken:
        if c.traceparent is None and c.batch_id is not None:
            c.traceparent = found.get(c.batch_id)


def claim(session: Session, claimed: Sequence[LockedJob], *, worker: str) -> Moves:
    """queued → running with a lease for jobs lock_queued() locked: the UPDATE and events.

    Returns their batch counter moves, unapplied: finish() takes them with its own, so a
    chunk holding both inline and claimed jobs of a batch updates the batch's row once.
    """
    if not claimed:
        return Counter()
    session.execute(_CLAIM, {
        "worker": worker, "lease": get_settings().lease_seconds,
        "ids": array_literal(c.id for c in claimed),
        "attempts": array_literal(c.attempt for c in claimed),
        "seqs": array_literal(c.head.seq for c in claimed),
        "heads": hex_array_literal(c.head.hash for c in claimed),
    })
    audit.insert_links(session, [c.head for c in claimed])
    return Counter((c.batch_id, Q, R) for c in claimed if c.batch_id is not None)


@dataclass(slots=True)
class Outcome:
    """What computing a claimed job gave: a result, or an error."""

    job: LockedJob
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    links: list[Link] = field(default_factory=list)
    #: the result's canonical JSON and its sha256, encoded once for every use
    canonical: str = ""
    sha: str = ""
    #: the job's row as its success left it (FINISHED_COLUMNS), when written by
    #: SUCCEED_WITH_ROWS_SQL: what finished_jobs() tells the waiting long-polls
    row: Any = None
    #: seconds spent computing it
    seconds: float = 0.0


def error_info(exc: BaseException) -> dict[str, Any]:
    """Type, message and traceback of a failure, as stored on the job."""
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-20_000:],
    }


def backoff(attempt: int) -> float:
    """Exponential backoff, capped, with equal jitter: between half and all of it (seconds)."""
    s = get_settings()
    ceiling = min(s.retry_backoff_max, s.retry_backoff_base * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


# Fencing, in every finishing statement: a claimed job must still be `running` on this
# attempt; an inline one `queued` on the attempt before (its row lock is held, so this
# always holds). A finishing statement sets attempt, worker, started_at and the audit
# head as CLAIM_SQL does: for a claimed job nothing changes, an inline one records its run.

#: running → succeeded (queued → succeeded inline), fenced: the rows it changed.
SUCCEED_SQL = """
UPDATE jobs SET status = 'succeeded', finished_at = statement_timestamp(), lease_until = NULL,
       error = NULL, attempt = v.attempt, worker = :worker,
       started_at = coalesce(started_at, now()), updated_at = statement_timestamp(),
       audit_seq = v.seq, audit_head = v.head
FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:seqs AS int[]),
            CAST(:heads AS text[]), CAST(:inline AS bool[])) AS v(id, attempt, seq, head, inline)
WHERE jobs.id = v.id
  AND jobs.status = CASE WHEN v.inline THEN 'queued' ELSE 'running' END
  AND jobs.attempt = v.attempt - CASE WHEN v.inline THEN 1 ELSE 0 END
RETURNING jobs.id, jobs.batch_id, jobs.tenant_id
"""
_SUCCEED = text(SUCCEED_SQL)

#: SUCCEED_SQL with the winners' results and events in the same statement: one round
#: trip where UPDATE, then COPY results, then COPY events take five.
SUCCEED_WITH_ROWS_SQL = """
WITH won AS (
  UPDATE jobs SET status = 'succeeded', finished_at = statement_timestamp(),
         lease_until = NULL, error = NULL, attempt = v.attempt, worker = :worker,
         started_at = coalesce(started_at, now()), updated_at = statement_timestamp(),
         audit_seq = v.seq, audit_head = v.head
  FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:seqs AS int[]),
              CAST(:heads AS text[]), CAST(:inline AS bool[])) AS v(id, attempt, seq, head, inline)
  WHERE jobs.id = v.id
    AND jobs.status = CASE WHEN v.inline THEN 'queued' ELSE 'running' END
    AND jobs.attempt = v.attempt - CASE WHEN v.inline THEN 1 ELSE 0 END
  RETURNING jobs.id, jobs.batch_id, jobs.tenant_id, jobs.line, jobs.kind, jobs.params,
            jobs.priority, jobs.status, jobs.attempt, jobs.max_attempts, jobs.run_after,
            jobs.worker, jobs.error, jobs.idempotency_key, jobs.ref, jobs.created_at,
            jobs.started_at, jobs.finished_at),
res AS (
  INSERT INTO results (job_id, result, result_sha256)
  SELECT r.id, r.result, r.sha
  FROM unnest(CAST(:ids AS bigint[]), CAST(:results AS jsonb[]), CAST(:shas AS text[]))
       AS r(id, result, sha)
  JOIN won ON won.id = r.id),
ev AS (
  INSERT INTO audit_events (job_id, seq, event_type, actor, created_at, details, prev_hash, hash)
  SELECT e.* FROM unnest(CAST(:e_job_id AS bigint[]), CAST(:e_seq AS int[]),
         CAST(:e_event_type AS text[]), CAST(:e_actor AS text[]),
         CAST(:e_created_at AS timestamptz[]), CAST(:e_details AS jsonb[]),
         CAST(:e_prev_hash AS text[]), CAST(:e_hash AS text[]))
       AS e(job_id, seq, event_type, actor, created_at, details, prev_hash, hash)
  JOIN won ON won.id = e.job_id)
SELECT * FROM won
"""
_SUCCEED_WITH_ROWS = driver_sql(text(SUCCEED_WITH_ROWS_SQL))

#: Up to this many outcomes are written with _SUCCEED_WITH_ROWS; more by COPY, which
#: costs a third as much per 4 KB result as arrays of parameters do.
FEW_OUTCOMES = 8

#: running → queued (a retry, after backoff) or dead (out of attempts); the same from
#: queued for an inline job. Fenced as SUCCEED_SQL; v.status is 'queued' or 'dead'.
FAIL_SQL = """
UPDATE jobs SET status = v.status, error = v.error, lease_until = NULL,
       run_after = v.run_after, published_at = NULL,
       finished_at = CASE WHEN v.status = 'dead' THEN statement_timestamp() ELSE NULL END,
       attempt = v.attempt, worker = :worker, started_at = coalesce(started_at, now()),
       updated_at = statement_timestamp(), audit_seq = v.seq, audit_head = v.head
FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]),
            CAST(:errors AS jsonb[]), CAST(:run_afters AS timestamptz[]), CAST(:seqs AS int[]),
            CAST(:heads AS text[]), CAST(:inline AS bool[]))
     AS v(id, attempt, status, error, run_after, seq, head, inline)
WHERE jobs.id = v.id
  AND jobs.status = CASE WHEN v.inline THEN 'queued' ELSE 'running' END
  AND jobs.attempt = v.attempt - CASE WHEN v.inline THEN 1 ELSE 0 END
RETURNING jobs.id, jobs.batch_id, jobs.tenant_id, v.status
"""
_FAIL = text(FAIL_SQL)


def _succeed(session: Session, outcomes: list[Outcome], worker: str) -> Moves:
    at = datetime.now(UTC)
    stamp = audit.timestamp(at)
    for o in outcomes:
        o.row = None  # a row of an earlier try, rolled back, must not be announced
        encoded = canonical_json(o.result)
        o.canonical = encoded.decode()
        o.sha = hashlib.sha256(encoded).hexdigest()
        o.links = _success_links(o, worker, at, stamp)
    params = {**_fenced(outcomes), "worker": worker}
    rows: Sequence[Any]
    if len(outcomes) <= FEW_OUTCOMES:
        rows = driver_rows(session, _SUCCEED_WITH_ROWS, {
            **params, "results": [o.canonical for o in outcomes],
            "shas": [o.sha for o in outcomes], **audit.arrays(_links(outcomes))})
        kept = _kept(outcomes, rows)
        by_id = {r.id: r for r in rows}
        for o in kept:
            o.row = by_id[o.job.id]
    else:
        rows = session.execute(_SUCCEED, params).all()
        kept = _kept(outcomes, rows)  # then their results and events, by COPY
        _write_results(session, kept)
        audit.insert_links(session, _links(kept))
    _write_decisions(session, [o for o in kept if o.job.kind == "evaluate"])
    metrics.succeeded(session, kept)
    webhooks.record_job_events(session, "job.succeeded",
                               [(r.id, r.tenant_id, r.batch_id) for r in rows])
    return _moves(outcomes, [(r.id, r.batch_id, S) for r in rows])


# --- a fast-lane job, run from its message -------------------------------------------

def fresh_job(job_id: int, fresh: Fresh, worker: str) -> LockedJob:
    """A fast-lane job as its message has it, to compute before anything is read or locked.

    It is its first attempt: the message is sent once, right after the job is stored, and
    finish_fresh() writes nothing unless the row is still exactly that job.
    """
    now = datetime.now(UTC)
    head = audit.link_at(job_id, 1, fresh.head, "started", worker, {"attempt": 1}, now,
                         audit.timestamp(now))
    return LockedJob(job_id, fresh.kind, fresh.params, 1, fresh.max_attempts - 1, None, head,
                     inline=True, priority=fresh.priority, first=True, taken=time.monotonic())


# A fast-lane job computed from its message, finished in one statement and one commit
# (autocommit): no BEGIN, no lock statement before computing, no COMMIT of its own. The
# job is locked by key (SKIP LOCKED: a worker holding it is running it) and changed only
# if it is still the job the message carries, untouched since it was stored: queued, no
# attempt yet, the audit chain at its "submitted" event, same kind and params, due, and
# no batch's. Anything else (a duplicate message, a cancel, a retry, another worker) and
# nothing is written: the lane then runs the job the usual way (execute_chunk), which
# settles the message. Webhook deliveries of job.succeeded are recorded in the same
# statement (as webhooks.record_job_events does in a chunk's transaction).
FINISH_FRESH_SQL = """
WITH won AS (
  UPDATE jobs SET status = 'succeeded', finished_at = statement_timestamp(),
         lease_until = NULL, error = NULL, attempt = 1, worker = :worker,
         started_at = now(), updated_at = statement_timestamp(),
         audit_seq = :seq, audit_head = :head
  WHERE jobs.id = (SELECT j.id FROM jobs j WHERE j.id = :id FOR UPDATE SKIP LOCKED)
    AND jobs.status = 'queued' AND jobs.attempt = 0 AND jobs.audit_seq = 1
    AND jobs.audit_head = :prev_head AND jobs.batch_id IS NULL AND jobs.kind = :kind
    AND jobs.params = CAST(:params AS jsonb)
    AND (jobs.run_after IS NULL OR jobs.run_after <= now())
  RETURNING jobs.id, jobs.batch_id, jobs.tenant_id, jobs.line, jobs.kind, jobs.params,
            jobs.priority, jobs.status, jobs.attempt, jobs.max_attempts, jobs.run_after,
            jobs.worker, jobs.error, jobs.idempotency_key, jobs.ref, jobs.created_at,
            jobs.started_at, jobs.finished_at,
            extract(epoch FROM now() - jobs.created_at) AS waited),
settled AS (
  DELETE FROM dispatches WHERE id = (SELECT id FROM dispatches WHERE id = :dispatch
                                     FOR UPDATE SKIP LOCKED)
    AND EXISTS (SELECT 1 FROM won)),
res AS (
  INSERT INTO results (job_id, result, result_sha256)
  SELECT id, CAST(:result AS jsonb), :sha FROM won),
ev AS (
  INSERT INTO audit_events (job_id, seq, event_type, actor, created_at, details, prev_hash, hash)
  SELECT won.id, e.seq, e.event_type, :worker, e.created_at, e.details, e.prev_hash, e.hash
  FROM won, (VALUES
    (CAST(:s1 AS int), 'started', CAST(:at1 AS timestamptz), CAST(:d1 AS jsonb), :h0, :h1),
    (CAST(:s2 AS int), 'succeeded', CAST(:at2 AS timestamptz), CAST(:d2 AS jsonb), :h1, :h2)
  ) AS e(seq, event_type, created_at, details, prev_hash, hash)),
hooks AS (
  INSERT INTO webhook_deliveries (endpoint_id, tenant_id, event, job_id)
  SELECT e.id, e.tenant_id, 'job.succeeded', won.id
  FROM won JOIN webhook_endpoints e ON e.tenant_id = won.tenant_id
  WHERE 'job.succeeded' = ANY(e.events))
SELECT * FROM won
"""
_FINISH_FRESH = driver_sql(text(FINISH_FRESH_SQL))
#: A finished job's columns, as SUCCEED_WITH_ROWS_SQL returns them (see finished_jobs).
_FinishedRow = namedtuple("_FinishedRow", (
    "id batch_id tenant_id line kind params priority status attempt max_attempts run_after "
    "worker error idempotency_key ref created_at started_at finished_at"))


def finish_fresh(o: Outcome, *, worker: str, dispatch: int) -> bool:
    """Write a fast-lane job's success from its message, if its row is still that job.

    One statement in autocommit: the job, its result, its "started" and "succeeded"
    events, its webhook deliveries and its message's settling, committed together.
    False (nothing written) when the row is not the job the message carries.
    """
    at = datetime.now(UTC)
    stamp = audit.timestamp(at)
    encoded = canonical_json(o.result)
    o.canonical, o.sha = encoded.decode(), hashlib.sha256(encoded).hexdigest()
    o.links = _success_links(o, worker, at, stamp)
    if len(o.links) != 1:  # only "started" and "succeeded" fit the statement (an encode's)
        return False
    started, last = o.job.head, o.links[0]
    # Scalars, not the arrays of EVENTS_FROM_ARRAYS: psycopg dumps a list item by item
    # in Python, the largest CPU share of this statement's call.
    with driver_autocommit() as conn:
        rows = conn_rows(conn, _FINISH_FRESH, {
            "id": o.job.id, "worker": worker, "seq": last.seq, "head": last.hash,
            "prev_head": started.prev_hash, "kind": o.job.kind,
            "params": orjson.dumps(o.job.params).decode(), "dispatch": dispatch,
            "result": o.canonical, "sha": o.sha,
            "s1": started.seq, "at1": audit.timestamp(started.created_at),
            "d1": orjson.dumps(started.details).decode(), "h0": started.prev_hash,
            "h1": started.hash, "s2": last.seq, "at2": stamp,
            "d2": orjson.dumps(last.details).decode(), "h2": last.hash})
    if not rows:
        return False
    *columns, waited = rows[0]
    o.row = _FinishedRow._make(columns)
    o.job.waited, o.job.tenant_id = float(waited), o.row.tenant_id
    metrics.started(None, [o.job])  # committed by itself: recorded now
    metrics.succeeded(None, [o])
    return True


#: Largest finished job (its JSON as a read shows it, params and result) announced whole.
#: Every api process keeps up to RecentlyFinished.MAX of the jobs announced whole, so
#: this bounds that memory (1,024 x 16 KB) whatever tenants submit: an evaluate's params
#: alone may be 400 KB. A babel encode (about 4.5 KB) fits; a larger job is announced by
#: id, and its long-poll reads it.
WHOLE_JOB_BYTES = 16_384


def finished_jobs(outcomes: Sequence[Outcome]) -> list[orjson.Fragment]:
    """The succeeded jobs of these outcomes as a read shows them, as JSON, for
    notify.finished.

    Only outcomes whose row their finishing statement returned (a few-job chunk), and of
    those only the jobs of at most WHOLE_JOB_BYTES; the result goes as its canonical JSON,
    unparsed. Call after the commit.
    """
    whole = []
    for o in outcomes:
        if o.row is None:
            continue
        data = orjson.dumps({**o.row._asdict(), "result": orjson.Fragment(o.canonical),
                             "result_sha256": o.sha})
        if len(data) <= WHOLE_JOB_BYTES:
            whole.append(orjson.Fragment(data))
    return whole


def _kept(outcomes: list[Outcome], rows: Sequence[Any]) -> list[Outcome]:
    """The outcomes whose jobs the fenced statement changed."""
    won = {r.id for r in rows}
    return [o for o in outcomes if o.job.id in won]


def _fenced(outcomes: list[Outcome]) -> dict[str, str]:
    """The per-job arrays every fenced finishing statement takes (hashes are hex)."""
    return {
        "ids": array_literal(o.job.id for o in outcomes),
        "attempts": array_literal(o.job.attempt for o in outcomes),
        "seqs": array_literal(o.links[-1].seq for o in outcomes),
        "heads": hex_array_literal(o.links[-1].hash for o in outcomes),
        "inline": array_literal(o.job.inline for o in outcomes),
    }


def _links(kept: list[Outcome]) -> list[Link]:
    """Events to append: an inline job's "started" event was not written yet."""
    return [lk for o in kept for lk in ([o.job.head, *o.links] if o.job.inline else o.links)]


def _moves(outcomes: list[Outcome], changed: list[tuple[int, int | None, str]]) -> Moves:
    """Counter moves of the rows a finishing statement changed: (id, batch_id, new status)."""
    inline = {o.job.id for o in outcomes if o.job.inline}
    return Counter(
        (batch_id, Q if job_id in inline else R, JobStatus(status))
        for job_id, batch_id, status in changed if batch_id is not None
    )


def _success_links(o: Outcome, worker: str, at: datetime, stamp: str) -> list[Link]:
    """One event per governor cycle of an evaluate job, then the succeeded event."""
    assert o.result is not None
    links: list[Link] = []
    seq, head = o.job.head.seq, o.job.head.hash
    events: list[tuple[str, dict[str, Any]]] = []
    if o.job.kind == "evaluate":
        events = [("governor_cycle", cycle) for cycle in o.result["cycles"]]
    events.append(("succeeded", {"attempt": o.job.attempt, "result_sha256": o.sha}))
    for event_type, details in events:
        lk = audit.link_at(o.job.id, seq, head, event_type, worker, details, at, stamp)
        links.append(lk)
        seq, head = lk.seq, lk.hash
    return links


def _write_results(session: Session, kept: list[Outcome]) -> None:
    # COPY is safe: only the fenced winner of a job's current attempt gets here, and a job
    # succeeds once (a manual retry is only for dead or cancelled jobs).
    if not kept:
        return
    pgcopy.copy_binary(session, "results", ("job_id", "result", "result_sha256"),
                       ("int8", "jsonb", "text"),
                       ((o.job.id, Jsonb(o.canonical, dumps=str), o.sha) for o in kept))


def _write_decisions(session: Session, outcomes: list[Outcome]) -> None:
    if not outcomes:
        return
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
    session.execute(insert(Decision).on_conflict_do_nothing(), rows)
    metrics.decided(session, rows)


def _json(value: Any) -> str:
    return canonical_json(value).decode()


def _fail(session: Session, outcomes: list[Outcome], worker: str) -> Moves:
    now = datetime.now(UTC)
    stamp = audit.timestamp(now)
    statuses, run_afters = [], []
    for o in outcomes:
        dead = o.job.attempts_left <= 0
        delay = 0.0 if dead else backoff(o.job.attempt)
        statuses.append(D if dead else Q)
        run_afters.append(None if dead else now + timedelta(seconds=delay))
        details = {"attempt": o.job.attempt, "error": {k: v for k, v in (o.error or {}).items()
                                                       if k != "traceback"}}
        if not dead:
            details["retry_in"] = round(delay, 3)
        o.links = [audit.link_at(o.job.id, o.job.head.seq, o.job.head.hash,
                                 "dead" if dead else "retry_scheduled", worker, details, now,
                                 stamp)]
    rows = session.execute(_FAIL, {
        **_fenced(outcomes), "worker": worker, "statuses": [str(s) for s in statuses],
        "errors": [_json(o.error) for o in outcomes], "run_afters": run_afters,
    }).all()
    audit.insert_links(session, _links(_kept(outcomes, rows)))
    metrics.failed(session, outcomes, rows)
    _log_failed(outcomes, rows)
    webhooks.record_job_events(session, "job.dead", [(r.id, r.tenant_id, r.batch_id)
                                                     for r in rows if r.status == "dead"])
    return _moves(outcomes, [(r.id, r.batch_id, r.status) for r in rows])


def _log_failed(outcomes: list[Outcome], rows: Sequence[Any]) -> None:
    """One line per failed attempt written: retried, or dead (error type, never params)."""
    by_id = {o.job.id: o for o in outcomes}
    for r in rows:
        o = by_id[r.id]
        kind_of_error = (o.error or {}).get("type")
        if r.status == "dead":
            log.error("job dead after attempt %d: %s", o.job.attempt, kind_of_error,
                      extra=job_fields(o.job))
        else:
            log.warning("job attempt %d failed (%s), retry scheduled", o.job.attempt,
                        kind_of_error, extra=job_fields(o.job))


def finish(session: Session, outcomes: Sequence[Outcome], *, worker: str,
           held: Moves | None = None) -> None:
    """Write results, decisions, errors, audit events and statuses of a chunk at once.

    Only the holder of a job's current attempt writes (fencing): a late or duplicate
    outcome of a job that was cancelled, re-leased or already finished is discarded.
    held: counter moves of claim() in this transaction, applied with the outcomes' own.
    """
    good = [o for o in outcomes if o.error is None]
    bad = [o for o in outcomes if o.error is not None]
    moves: Moves = Counter(held)
    if good:
        moves += _succeed(session, good, worker)
    if bad:
        moves += _fail(session, bad, worker)
    move_counters(session, moves)
