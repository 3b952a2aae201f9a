"""Creating jobs: one at a time (submit), or a batch's rows with COPY (prepare_rows, then
store_rows)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.orm import Session

from app import core
from app.broker import fastlane, window
from app.broker.fastlane import Fresh
from app.broker.window import Sent, room_seen
from app.config import get_settings
from app.jobs import audit, counts, kinds, metrics
from app.jobs.audit import Link
from app.jobs.delayed import HELD, HELD_SQL
from app.jobs.execute import runs_inline
from app.jobs.pending_publish import lane_has_room, schedule_publish
from app.observe import tracing
from app.store import pgcopy
from app.store.db import AsyncPool, conn_rows_async, driver_rows, driver_sql
from app.store.models import PRIORITIES

log = logging.getLogger(__name__)


class JobRow(NamedTuple):
    """A job's columns as stored: what submit() and find_keyed() return."""

    id: int
    tenant_id: int
    batch_id: int | None
    line: int | None
    kind: str
    params: dict[str, Any]
    priority: int
    status: str
    attempt: int
    attempt_base: int
    max_attempts: int
    run_after: datetime | None
    lease_until: datetime | None
    published_at: datetime | None
    worker: str | None
    error: dict[str, Any] | None
    idempotency_key: str | None
    ref: str | None
    audit_seq: int
    audit_head: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class UnknownKind(ValueError):
    """No computation of that name exists."""


def validate(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Normalised params; UnknownKind or pydantic.ValidationError when they are not valid."""
    extra = kinds.extra_kind(kind)
    if extra is not None:
        return extra.validate(params)
    if kind not in core.KINDS:
        raise UnknownKind(f"unknown kind {kind!r}; expected one of {', '.join(core.KINDS)}")
    return core.validate(kind, params)


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
    run_after: datetime | None = None,
) -> tuple[JobRow, bool]:
    """Insert one job (the enqueue) in the caller's transaction; publish after commit.

    Returns (job, created); created is False when the idempotency key was seen, and job
    is then the job submitted with it.
    Raises pydantic.ValidationError / ValueError for invalid params: nothing is written.
    A job with a run_after is held, not published, until then (app.jobs.delayed).
    """
    clean = validate(kind, params)
    attempts = max_attempts or get_settings().default_max_attempts
    lane = PRIORITIES[priority]
    room = run_after is None and lane_has_room(kind, lane)
    rows = driver_rows(session, _INSERT_ONE, _insert_params(
        tenant_id, kind, clean, actor, priority, attempts, idempotency_key, ref, run_after,
        room))
    if not rows:
        assert idempotency_key is not None  # only a keyed insert can skip its row
        existing = find_keyed(session, tenant_id, idempotency_key)
        assert existing is not None
        return existing, False
    job, sent = _stored(rows[0], kind, clean, lane, attempts, room)
    if sent is not None:
        schedule_publish(session, sent, fast=sent.fresh is not None)
    metrics.submitted(session, {(kind, lane): 1})
    return job, True


async def submit_now(
    pool: AsyncPool, redis: aioredis.Redis, *, tenant_id: int, kind: str,
    params: dict[str, Any], actor: str, priority: str = "normal",
    max_attempts: int | None = None, ref: str | None = None,
) -> JobRow | None:
    """submit() from an event loop, for a job due now with no idempotency key: stored by
    its statement in autocommit on one of the pool's connections, its message published
    before this returns. None, having done nothing, unless it is a fast-lane job whose
    lane's length this process saw lately (window.room_seen): the caller then submits
    it the usual way (submit(), in a thread), as a producer's first job does.

    The usual way costs a thread hop there and back and a session's pool checkout
    around the same statement: 0.5-0.6 ms of a 3 ms submission on the bench machine.
    """
    clean = validate(kind, params)
    lane = PRIORITIES[priority]
    room = room_seen(kind, lane)
    if room is None or not runs_inline(kind, clean):
        return None
    attempts = max_attempts or get_settings().default_max_attempts
    async with pool.connection() as conn:
        rows = await conn_rows_async(conn, _INSERT_ONE, _insert_params(
            tenant_id, kind, clean, actor, priority, attempts, None, ref, None, room))
    job, sent = _stored(rows[0], kind, clean, lane, attempts, room)
    metrics.submitted(None, {(kind, lane): 1})  # committed by itself: recorded now
    if sent is not None:
        try:  # committed: the relay sends what is left
            if sent.fresh is not None:
                await fastlane.send_async(redis, [sent])
            else:  # its tenant's first, ahead of a full lane: a Celery message
                await asyncio.to_thread(window.send, [sent])
        except Exception as exc:
            log.warning("publish after commit failed, the relay will send: %s", exc)
    return job


def _insert_params(tenant_id: int, kind: str, clean: dict[str, Any], actor: str,
                   priority: str, attempts: int, idempotency_key: str | None, ref: str | None,
                   run_after: datetime | None, room: bool) -> dict[str, Any]:
    """INSERT_ONE_SQL's parameters. The statement takes the id and hashes the event with
    it: the row is inserted with its audit head, never updated for it."""
    first = audit.first_link(actor, {"kind": kind, "priority": priority,
                                     "max_attempts": attempts})
    return {
        "tenant_id": tenant_id, "kind": kind, "params": Jsonb(clean),
        "priority": PRIORITIES[priority], "max_attempts": attempts,
        "idempotency_key": idempotency_key, "ref": ref,
        "run_after": run_after, "published_at": None if run_after is None else HELD,
        "direct": room, "traceparent": tracing.current_traceparent(),
        "prefix": first.prefix, "suffix": first.suffix, "actor": first.actor,
        "created_at": first.created_at, "details": Jsonb(first.details),
        "genesis": audit.GENESIS,
    }


def _stored(row: Any, kind: str, clean: dict[str, Any], lane: int, attempts: int,
            room: bool) -> tuple[JobRow, Sent | None]:
    """The job INSERT_ONE_SQL stored, and its message to publish if it recorded one.

    The fast lane only when the lane has room: a job sent ahead of a full lane (its
    tenant's first) takes its fair turn through Celery, not a side door. A fast message
    carries the job as stored, so the lane can run it before reading it.
    """
    *columns, dispatch = row
    job = JobRow._make(columns)
    if dispatch is None:
        return job, None
    fresh = Fresh(kind, clean, lane, attempts, job.audit_head) if (
        room and runs_inline(kind, clean)) else None
    return job, Sent(dispatch, kind, lane, [job.id], ahead=not room, fresh=fresh)


#: The tenant's job submitted with an idempotency key.
FIND_KEYED_SQL = """
SELECT id, tenant_id, batch_id, line, kind, params, priority, status, attempt, attempt_base,
       max_attempts, run_after, lease_until, published_at, worker, error, idempotency_key,
       ref, audit_seq, audit_head, created_at, started_at, finished_at, updated_at
FROM jobs WHERE tenant_id = :tenant_id AND idempotency_key = :key
"""
_FIND_KEYED = text(FIND_KEYED_SQL)


def find_keyed(session: Session, tenant_id: int, idempotency_key: str) -> JobRow | None:
    """The tenant's job submitted with this idempotency key, if any."""
    row = session.execute(_FIND_KEYED, {"tenant_id": tenant_id, "key": idempotency_key}).first()
    return JobRow._make(row) if row is not None else None


#: One job and its submitted event in one statement; no row (and no event) when the
#: tenant's idempotency key was seen. Run by the driver itself (a single submission is the
#: api's hottest write; see db.driver_autocommit), so compiled to its placeholders once.
#: The id comes from the sequence here, and the event's hash is taken here from it
#: (audit.FirstLink): a statement reserving the id first cost a round trip, 0.8 ms of a
#: single submission's 5 on the 2-core machine of the latency bench. The sequence is
#: looked up once, in an InitPlan (see _RESERVE).
#: With :direct (its lane's window has room), or when the tenant has nothing waiting in
#: the lane (then it goes to the head of the lane: its turn comes first), and no
#: max_running on the tenant, the job's message is recorded (`dispatch`, published after
#: commit); else the job is pending, and a dispatch pass sends it in its tenant's turn.
INSERT_ONE_SQL = """
WITH new AS (
  SELECT nextval((SELECT pg_get_serial_sequence('jobs', 'id')::regclass)) AS id),
head AS (
  SELECT id, encode(sha256(CAST(:prefix AS bytea) || convert_to(id::text, 'UTF8')
                           || CAST(:suffix AS bytea)), 'hex') AS hash
  FROM new),
job AS (
  INSERT INTO jobs (id, tenant_id, kind, params, priority, max_attempts, idempotency_key, ref,
                    run_after, published_at, audit_seq, audit_head, traceparent)
  SELECT head.id, :tenant_id, :kind, :params, :priority, :max_attempts, :idempotency_key, :ref,
         CAST(:run_after AS timestamptz),
         coalesce(CAST(:published_at AS timestamptz), now()), 1, head.hash, :traceparent
  FROM head
  ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING *),
event AS (
  INSERT INTO audit_events (job_id, seq, event_type, actor, created_at, details, prev_hash, hash)
  SELECT job.id, 1, 'submitted', :actor, :created_at, :details, :genesis, job.audit_head
  FROM job),
-- counted for /metrics in the same statement (as app.jobs.counts.added does for a block)
counted AS (
  INSERT INTO job_count_deltas (kind, priority, status, n)
  SELECT kind, priority, status, 1 FROM job),
sent AS (
  INSERT INTO dispatches (tenant_id, kind, priority, ids)
  SELECT tenant_id, kind, priority, ARRAY[id] FROM job
  WHERE job.run_after IS NULL AND (:direct OR (NOT EXISTS (
    SELECT 1 FROM dispatches d
    WHERE d.tenant_id = job.tenant_id AND d.kind = job.kind AND d.priority = job.priority)
  AND NOT EXISTS (
    SELECT 1 FROM pending_jobs p
    WHERE p.kind = job.kind AND p.priority = job.priority AND p.tenant_id = job.tenant_id)))
  AND NOT EXISTS (
    SELECT 1 FROM tenants t WHERE t.id = job.tenant_id AND t.max_running IS NOT NULL)
  RETURNING id),
pend AS (
  INSERT INTO pending_jobs (tenant_id, kind, priority, ids, size)
  SELECT tenant_id, kind, priority, ARRAY[id], 1 FROM job
  WHERE job.run_after IS NULL AND NOT EXISTS (SELECT 1 FROM sent))
SELECT id, tenant_id, batch_id, line, kind, params, priority, status, attempt, attempt_base,
       max_attempts, run_after, lease_until, published_at, worker, error, idempotency_key,
       ref, audit_seq, audit_head, created_at, started_at, finished_at, updated_at,
       (SELECT id FROM sent) AS dispatch
FROM job
"""
_INSERT_ONE = driver_sql(text(INSERT_ONE_SQL))


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
    #: not before then (held, not published, until it is: app.jobs.delayed)
    run_after: datetime | None = None


_JOB_COLUMNS = ("id", "tenant_id", "batch_id", "line", "kind", "params", "priority",
                "max_attempts", "idempotency_key", "ref", "published_at", "audit_seq",
                "audit_head", "run_after")


# The sequence is looked up once, in an InitPlan: as a plain argument of nextval() the
# lookup ran for every id, 2.4 us each, 7x the nextval itself (200,000 ids: 473 ms, now 65).
_RESERVE = ("SELECT array_agg(nextval((SELECT pg_get_serial_sequence('jobs', 'id')::regclass))) "
            "FROM generate_series(1, %s)")


def reserve_ids(session: Session, n: int) -> list[int]:
    """n fresh job ids from the jobs sequence, so rows can be COPYed with their ids.

    Sequence values are never rolled back, so any connection will do: ingestion takes
    them on a second connection while its own is busy with the previous block's COPY.
    """
    return list(driver_rows(session, _RESERVE, (n,))[0][0])


@dataclass(slots=True)
class PreparedRows:
    """A block of validated batch jobs turned into COPY data, ready to store."""

    #: COPY lines of the jobs without an idempotency key, and of their submitted events
    jobs_copy: bytes
    audit_copy: bytes
    plain: list[tuple[NewJob, int]]
    #: jobs with an idempotency key: inserted one statement per block, skipping conflicts
    keyed: list[tuple[NewJob, int]]
    keyed_links: dict[int, Link]
    #: the moment of submission: every event's time, and published_at of keyed rows
    now: datetime


def prepare_rows(
    rows: Sequence[NewJob], ids: Sequence[int], *, tenant_id: int, batch_id: int, actor: str,
    now: datetime,
) -> PreparedRows:
    """Everything about storing rows that needs no database: ids given, events hashed."""
    stamp = audit.timestamp(now)
    events = audit.SubmittedEvents(actor, stamp, batch_id)
    pairs = list(zip(rows, ids, strict=True))
    plain = [(r, i) for r, i in pairs if r.idempotency_key is None]
    keyed = [(r, i) for r, i in pairs if r.idempotency_key is not None]
    prefix = f"{tenant_id}\t{batch_id}\t"
    job_lines, event_lines = [], []
    for r, i in plain:
        head = events.hash(i, r.kind, r.line)
        held = "\\N" if r.run_after is None else r.run_after.isoformat()
        job_lines.append(
            f"{i}\t{prefix}{r.line}\t{r.kind}\t{pgcopy.json_value(r.params)}\t{r.priority}\t"
            f"{r.max_attempts}\t\\N\t{pgcopy.text_value(r.ref)}\t"
            f"{stamp if r.run_after is None else HELD_SQL}\t1\t{head}\t{held}\n")
        event_lines.append(events.copy_line(i, r.kind, r.line, head))
    keyed_links = {i: audit.link_at(i, 0, "", "submitted", actor,
                                    events.details(r.kind, r.line), now, stamp)
                   for r, i in keyed}
    return PreparedRows("".join(job_lines).encode(), "".join(event_lines).encode(), plain,
                        keyed, keyed_links, now)


def store_rows(
    session: Session, block: PreparedRows, *, tenant_id: int, batch_id: int
) -> tuple[list[tuple[NewJob, int]], list[tuple[NewJob, int]]]:
    """Insert a prepared block: (inserted, duplicates) as (row, job id) pairs.

    For a duplicate (its idempotency key was used before) the id is the existing job's.
    Nothing is published here: the caller publishes after commit.
    """
    pgcopy.copy_bytes(session, "jobs", _JOB_COLUMNS, block.jobs_copy)
    kept = _insert_keyed(session, block.keyed, tenant_id, batch_id, block.now,
                         block.keyed_links)
    kept_ids = {i for _, i in kept}
    duplicates = _existing(session, tenant_id,
                           [r for r, i in block.keyed if i not in kept_ids])
    pgcopy.copy_bytes(session, "audit_events", audit.COLUMNS, block.audit_copy)
    audit.insert_links(session, [block.keyed_links[i] for i in sorted(kept_ids)])
    lanes = Counter((r.kind, r.priority) for r, _ in (*block.plain, *kept))
    counts.added(session, lanes)
    metrics.submitted(session, lanes)
    return block.plain + kept, duplicates


#: A block's jobs that carry an idempotency key, skipping keys already used: the ids
#: it inserted.
INSERT_KEYED_SQL = """
INSERT INTO jobs (id, tenant_id, batch_id, line, kind, params, priority, max_attempts,
                  idempotency_key, ref, published_at, audit_seq, audit_head, run_after)
SELECT v.id, :tenant, :batch, v.line, v.kind, v.params, v.priority, v.attempts, v.ikey, v.ref,
       CASE WHEN v.run_after IS NULL THEN :now ELSE :held END, 1, v.head, v.run_after
FROM unnest(CAST(:ids AS bigint[]), CAST(:lines AS int[]), CAST(:kinds AS text[]),
            CAST(:params AS jsonb[]), CAST(:pris AS smallint[]), CAST(:attempts AS int[]),
            CAST(:ikeys AS text[]), CAST(:refs AS text[]), CAST(:heads AS text[]),
            CAST(:run_afters AS timestamptz[]))
     AS v(id, line, kind, params, priority, attempts, ikey, ref, head, run_after)
ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""
_INSERT_KEYED = text(INSERT_KEYED_SQL)


def _insert_keyed(
    session: Session, keyed: list[tuple[NewJob, int]], tenant_id: int, batch_id: int,
    now: datetime, links: dict[int, Link],
) -> list[tuple[NewJob, int]]:
    if not keyed:
        return []
    got = set(session.execute(
        _INSERT_KEYED,
        {"tenant": tenant_id, "batch": batch_id, "now": now, "held": HELD,
         "ids": [i for _, i in keyed], "lines": [r.line for r, _ in keyed],
         "kinds": [r.kind for r, _ in keyed],
         "params": [orjson.dumps(r.params).decode() for r, _ in keyed],
         "pris": [r.priority for r, _ in keyed], "attempts": [r.max_attempts for r, _ in keyed],
         "ikeys": [r.idempotency_key for r, _ in keyed], "refs": [r.ref for r, _ in keyed],
         "heads": [links[i].hash for _, i in keyed],
         "run_afters": [r.run_after for r, _ in keyed]},
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
