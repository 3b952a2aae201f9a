"""Fair dispatch: PostgreSQL keeps what waits, Redis a bounded window of messages.

Jobs reach workers in three steps. They are *pending* (a row of `pending_jobs` holds
their ids) from the commit that queues them; a dispatch pass *sends* some of them as a
message (a row of `dispatches`, published after commit), filling each lane's window,
choosing the tenant by deficit round robin (app.jobs.fair); a worker *takes* the
message and deletes its dispatch row in the transaction that claims or finishes its
jobs. So a dispatch row older than `requeue_after` is a message Redis lost, a publish
that failed, or a claim a PostgreSQL crash undid: the relay sends it again, whatever
the backlog (resend_stale). Only one pass sends at a time (a transaction advisory lock;
the others skip), so each pending job is sent once, by however many dispatchers.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.broker import window
from app.broker.window import RedisWindow, Sent
from app.config import get_settings
from app.jobs import metrics
from app.jobs.fair import Round
from app.store.db import array_literal, session_scope

#: Ids per pending_jobs row: small enough that sending a message reads little of its array.
PENDING_ROW = 1000
#: Key of the advisory lock a dispatch pass holds (any constant no other code uses).
DISPATCH_LOCK = 0x62717564  # "bqud"
#: Pending rows looked at per pass beyond the messages sent (rows whose jobs were all
#: cancelled send nothing).
MAX_EMPTY_TAKES = 50


class Broker(Protocol):
    """What a dispatch pass needs of the broker (app.broker.window.RedisWindow)."""

    def room(self, kind: str, priority: int) -> int:
        """Messages this lane may still take before its window is full."""

    def chunk_size(self, kind: str) -> int:
        """Jobs per message of this kind: about chunk_seconds of work, at most chunk_size."""


# --- becoming pending --------------------------------------------------------------

_PEND = text(
    "INSERT INTO pending_jobs (tenant_id, kind, priority, ids, size) "
    "VALUES (:tenant, :kind, :priority, CAST(:ids AS bigint[]), :size)"
)


def pend(session: Session, tenant_id: int, kind: str, priority: int, ids: Sequence[int]) -> None:
    """Queue job ids for dispatch, in the caller's transaction (rows of PENDING_ROW ids)."""
    rows = [{"tenant": tenant_id, "kind": kind, "priority": priority,
             "ids": array_literal(ids[start:start + PENDING_ROW]),
             "size": len(ids[start:start + PENDING_ROW])}
            for start in range(0, len(ids), PENDING_ROW)]
    if rows:  # one executemany: psycopg pipelines the rows, one round trip in all
        session.execute(_PEND, rows)


_PEND_JOBS = text(
    "INSERT INTO pending_jobs (tenant_id, kind, priority, ids, size) "
    "SELECT tenant_id, kind, priority, array_agg(id ORDER BY id), count(*) FROM jobs "
    "WHERE id = ANY(:ids) GROUP BY tenant_id, kind, priority"
)


def pend_jobs(session: Session, ids: Sequence[int]) -> None:
    """Queue these jobs (of any tenants and lanes) for dispatch, e.g. a manual retry."""
    session.execute(_PEND_JOBS, {"ids": list(ids)})


#: Queued jobs that nothing will send (new retries, returned leases, manual retries) and
#: that are due: marked published and made pending, in one statement.
_PEND_UNPUBLISHED = text(
    "WITH due AS (UPDATE jobs SET published_at = now() FROM ("
    "SELECT id FROM jobs WHERE status = 'queued' AND published_at IS NULL "
    "AND (run_after IS NULL OR run_after <= now()) "
    "ORDER BY priority, id LIMIT :limit FOR UPDATE SKIP LOCKED) AS d "
    "WHERE jobs.id = d.id RETURNING jobs.id, jobs.tenant_id, jobs.kind, jobs.priority), "
    "ins AS (INSERT INTO pending_jobs (tenant_id, kind, priority, ids, size) "
    "SELECT tenant_id, kind, priority, array_agg(id ORDER BY id), count(*) FROM due "
    "GROUP BY tenant_id, kind, priority RETURNING size) "
    "SELECT coalesce(sum(size), 0) FROM ins"
)


def pend_unpublished(session: Session, *, limit: int = 10_000) -> int:
    """Make due never-published queued jobs pending; how many (limit: more may wait)."""
    return int(session.execute(_PEND_UNPUBLISHED, {"limit": limit}).scalar_one())


# --- sending -------------------------------------------------------------------------

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
_NO_SYNC = text("SET LOCAL synchronous_commit = off")
_BACKLOG = text(
    "SELECT kind, priority, tenant_id, sum(size - taken)::bigint AS n FROM pending_jobs "
    "GROUP BY kind, priority, tenant_id ORDER BY priority, kind, tenant_id"
)
_TENANTS = text("SELECT id, weight, max_running FROM tenants WHERE id = ANY(:ids)")
#: Jobs of capped tenants in flight: in messages not yet taken, or running.
#: The running jobs are read whole (MATERIALIZED) through their small partial index: by
#: tenant the planner could walk a big tenant's every job.
_IN_FLIGHT = text(
    "WITH running AS MATERIALIZED (SELECT tenant_id FROM jobs WHERE status = 'running') "
    "SELECT tenant_id, sum(n)::bigint FROM ("
    "SELECT tenant_id, cardinality(ids) AS n FROM dispatches WHERE tenant_id = ANY(:ids) "
    "UNION ALL SELECT tenant_id, 1 FROM running WHERE tenant_id = ANY(:ids)) f "
    "GROUP BY tenant_id"
)
_STATE = text("SELECT tenant_id, deficit, turn FROM fair_deficits "
              "WHERE kind = :kind AND priority = :priority")
#: The lane's state after a pass: these tenants' deficits (and the turn), no others.
_SAVE_STATE = text(
    "WITH saved AS (INSERT INTO fair_deficits (kind, priority, tenant_id, deficit, turn) "
    "SELECT :kind, :priority, t, d, t = :turn FROM unnest(CAST(:tenants AS bigint[]), "
    "CAST(:deficits AS float8[])) AS v(t, d) ON CONFLICT (kind, priority, tenant_id) "
    "DO UPDATE SET deficit = excluded.deficit, turn = excluded.turn) "
    "DELETE FROM fair_deficits WHERE kind = :kind AND priority = :priority "
    "AND tenant_id <> ALL(CAST(:tenants AS bigint[]))"
)
#: One message of a tenant's lane, in one statement: up to :n ids from its oldest pending
#: rows (a single job's row holds one id, an upload block's up to PENDING_ROW); each row
#: advances, or goes when used up. Of those ids, the ones still queued and due are
#: recorded as a dispatch. Queued ones due later (a delayed job) go back to the
#: never-published path, which makes them pending when due. Each id is looked up by its
#: key (a LATERAL with LIMIT, which the planner cannot turn into a join: with a fresh
#: batch's stale statistics it ran the join as a scan of every job, 90 ms). The status
#: is checked outside the LIMIT: inside it, a partial index on queued jobs (the
#: console's) matched, and the planner filtered it by id: 18 ms per id, 9 s a chunk.
_TAKE = text(
    "WITH r AS (SELECT id, ids, taken, size - taken AS rest, "
    "sum(size - taken) OVER (ORDER BY id) - (size - taken) AS before FROM pending_jobs "
    "WHERE kind = :kind AND priority = :priority AND tenant_id = :tenant "
    "ORDER BY id LIMIT :n), "
    "part AS (SELECT id, rest, least(rest, :n - before) AS k, "
    "ids[taken + 1:taken + least(rest, :n - before)] AS part FROM r WHERE before < :n), "
    "adv AS (UPDATE pending_jobs p SET taken = p.taken + part.k FROM part "
    "WHERE p.id = part.id AND part.rest > part.k), "
    "gone AS (DELETE FROM pending_jobs p USING part "
    "WHERE p.id = part.id AND part.rest <= part.k), "
    "v AS MATERIALIZED (SELECT j.id, j.run_after > now() AS later FROM part "
    "CROSS JOIN LATERAL unnest(part.part) AS u(id) CROSS JOIN LATERAL (SELECT id, run_after, "
    "status FROM jobs WHERE jobs.id = u.id LIMIT 1) j WHERE j.status = 'queued'), "
    "later AS (UPDATE jobs SET published_at = NULL "
    "WHERE id = ANY(ARRAY(SELECT id FROM v WHERE later))), "
    "due AS (SELECT array_agg(id ORDER BY id) AS ids FROM v WHERE later IS NOT TRUE), "
    "sent AS (INSERT INTO dispatches (tenant_id, kind, priority, ids) "
    "SELECT :tenant, :kind, :priority, ids FROM due WHERE ids IS NOT NULL RETURNING id, ids) "
    "SELECT (SELECT sum(k) FROM part) AS took, sent.id, sent.ids "
    "FROM (SELECT 1) AS one LEFT JOIN sent ON true"
)
#: Tenants with a message of this lane not yet taken by a worker.
_IN_WINDOW = text("SELECT DISTINCT tenant_id FROM dispatches "
                  "WHERE kind = :kind AND priority = :priority")


@dataclass
class _Tenants:
    """The backlogged tenants' weights, caps and jobs in flight, for one pass."""

    weights: dict[int, float]
    caps: dict[int, int]
    in_flight: dict[int, int]

    def room(self, tenant: int) -> int:
        """Jobs tenant may still have in flight (a large number when uncapped)."""
        cap = self.caps.get(tenant)
        return 1 << 30 if cap is None else cap - self.in_flight.get(tenant, 0)


def fill(session: Session, broker: Broker) -> list[Sent]:
    """Send pending jobs into the lanes; the messages to publish after commit.

    Lanes are filled high priority first, up to their room; a tenant with nothing in a
    lane's window gets one message at the head of it even when the window is full.
    Nothing is sent if another pass holds the lock.
    """
    backlog: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
    for r in session.execute(_BACKLOG):
        backlog[(r.kind, r.priority)][r.tenant_id] = r.n
    room = {lane: broker.room(*lane) for lane in backlog}
    lanes = list(backlog)
    # The lock guards the takes; the backlog read before it only guides the turns.
    if not lanes or not session.execute(_TRY_LOCK, {"key": DISPATCH_LOCK}).scalar_one():
        return []
    # A pass lost in a crash of PostgreSQL only sends its jobs again (they are pending
    # again; fencing keeps the effect single), so its commit need not wait for the disk.
    session.execute(_NO_SYNC)
    tenants = _load_tenants(session, {t for lane in lanes for t in backlog[lane]})
    sent: list[Sent] = []
    for kind, priority in sorted(lanes, key=lambda lane: (lane[1], lane[0])):
        sent += _fill_lane(session, kind, priority, backlog[(kind, priority)], tenants,
                           room[(kind, priority)], broker.chunk_size(kind))
    return sent


def _load_tenants(session: Session, ids: set[int]) -> _Tenants:
    rows = session.execute(_TENANTS, {"ids": sorted(ids)}).all()
    caps = {r.id: r.max_running for r in rows if r.max_running is not None}
    in_flight: dict[int, int] = {}
    if caps:
        in_flight = {t: n for t, n in session.execute(_IN_FLIGHT, {"ids": sorted(caps)}).all()}
    return _Tenants({r.id: r.weight for r in rows}, caps, in_flight)


def _fill_lane(session: Session, kind: str, priority: int, backlog: dict[int, int],
               tenants: _Tenants, messages: int, size: int) -> list[Sent]:
    """This lane's messages: first one at the head of the lane for each newly backlogged
    tenant (none in the round's state, none in the window: its turn comes before what
    waits there, as new flows go first in FQ-CoDel's DRR), then up to `messages` more,
    tenant by tenant in deficit round robin."""
    lane = {"kind": kind, "priority": priority}
    fair = Round(float(size), tenants.weights)
    for r in session.execute(_STATE, lane):
        fair.deficits[r.tenant_id] = r.deficit
        fair.turn = r.tenant_id if r.turn else fair.turn
    known = set(fair.deficits) | set(session.execute(_IN_WINDOW, lane).scalars())
    sent: list[Sent] = []
    for tenant in sorted(t for t, n in backlog.items() if n > 0 and t not in known):
        if tenants.room(tenant) > 0:
            message = _send(session, lane, tenant, size, backlog, tenants, fair)
            sent += [dataclasses.replace(message, ahead=True)] if message else []
    queued = 0
    for _ in range(messages + MAX_EMPTY_TAKES):
        active = [t for t, n in backlog.items() if n > 0 and tenants.room(t) > 0]
        if queued >= messages or not active:
            break
        tenant, _n = fair.pick(active, lambda t: min(size, backlog[t], tenants.room(t)))
        message = _send(session, lane, tenant, size, backlog, tenants, fair)
        if message is not None:
            sent.append(message)
            queued += 1
    for tenant, n in backlog.items():
        if n <= 0:
            fair.forget(tenant)
    _save_state(session, lane, fair)
    return sent


def _send(session: Session, lane: dict[str, Any], tenant: int, size: int,
          backlog: dict[int, int], tenants: _Tenants, fair: Round) -> Sent | None:
    """Take the tenant's next chunk and record it as a message, charging its deficit."""
    n = min(size, backlog[tenant], tenants.room(tenant))
    took, message = _take(session, lane["kind"], lane["priority"], tenant, n)
    backlog[tenant] = backlog[tenant] - took if took else 0
    if message is not None:
        fair.charge(tenant, len(message.ids))
        tenants.in_flight[tenant] = tenants.in_flight.get(tenant, 0) + len(message.ids)
    return message


def _take(session: Session, kind: str, priority: int, tenant: int, n: int
          ) -> tuple[int, Sent | None]:
    """Up to n of the tenant's pending ids of this lane: how many were taken, and the
    message of those still queued and due (None if none is)."""
    row = session.execute(_TAKE, {"kind": kind, "priority": priority, "tenant": tenant,
                                  "n": n}).one()
    sent = Sent(row.id, kind, priority, list(row.ids)) if row.id is not None else None
    return int(row.took or 0), sent


def _save_state(session: Session, lane: dict[str, Any], fair: Round) -> None:
    tenants = sorted(fair.deficits)
    session.execute(_SAVE_STATE, {
        **lane, "turn": fair.turn or 0, "tenants": array_literal(tenants),
        "deficits": "{" + ",".join(repr(fair.deficits[t]) for t in tenants) + "}"})


# --- taking and recovering -------------------------------------------------------------

#: The worker's side: the message is taken, its row deleted in the transaction that takes
#: its jobs, as part of the statement that locks them (jobs.lock_queued). SKIP LOCKED: a
#: duplicate of a message another worker is running (its row locked by that transaction)
#: must not wait for it.
SETTLE_SQL = (
    "DELETE FROM dispatches WHERE id = (SELECT id FROM dispatches WHERE id = :dispatch "
    "FOR UPDATE SKIP LOCKED)"
)


_STALE = text(
    "SELECT id, tenant_id, kind, priority, ids FROM dispatches "
    "WHERE sent_at < now() - make_interval(secs => :age) "
    "ORDER BY sent_at LIMIT :limit FOR UPDATE SKIP LOCKED"
)
#: Of a stale message's jobs, those still queued, due and not held by a running chunk.
#: Each is read by its key alone and tested outside the LIMIT: with the status inside, a
#: fresh backlog's stale statistics sent the planner through the queued partial index,
#: filtering it by id (a scan of the backlog per id: 0.45 ms each 5,000 jobs in).
STILL_QUEUED_SQL = (
    "SELECT id FROM jobs WHERE id = ANY(ARRAY(SELECT j.id FROM unnest(CAST(:ids AS bigint[])) "
    "AS u(id) CROSS JOIN LATERAL (SELECT id, status, run_after FROM jobs WHERE jobs.id = u.id "
    "LIMIT 1) j WHERE j.status = 'queued' AND (j.run_after IS NULL OR j.run_after <= now()))) "
    "ORDER BY id FOR UPDATE SKIP LOCKED"
)
_STILL_QUEUED = text(STILL_QUEUED_SQL)
_RESEND = text("UPDATE dispatches SET sent_at = now(), ids = CAST(:ids AS bigint[]) "
               "WHERE id = :id")
_FORGET = text("DELETE FROM dispatches WHERE id = :id")


def resend_stale(session: Session, *, limit: int = 1000) -> list[Sent]:
    """Messages sent more than requeue_after ago and never taken: to publish again.

    Reads only the dispatch rows (at most a window per lane, plus what is lost), never
    the backlog. A row whose jobs all left `queued` (cancelled, or a duplicate ran them)
    is deleted.
    """
    again: list[Sent] = []
    stale = session.execute(_STALE, {"age": get_settings().requeue_after, "limit": limit})
    for r in stale.all():
        ids = list(session.execute(_STILL_QUEUED, {"ids": array_literal(r.ids)}).scalars())
        if not ids:
            session.execute(_FORGET, {"id": r.id})
            continue
        session.execute(_RESEND, {"id": r.id, "ids": array_literal(ids)})
        again.append(Sent(r.id, r.kind, r.priority, ids))
    metrics.republished(session, again)
    return again


# --- passes ----------------------------------------------------------------------------


def run_pass(redis_window: RedisWindow | None = None) -> int:
    """One dispatch pass: fill every lane's window from PostgreSQL; messages sent.

    A publish that fails loses nothing: the dispatch rows are committed, and the relay
    sends them again after requeue_after.
    """
    broker = redis_window or RedisWindow()
    with session_scope() as session:
        sent = fill(session, broker)
    window.send(sent)
    return len(sent)


def refill(queue: str, priority: int) -> None:
    """After a chunk of this lane: a pass if the lane drained to half its window."""
    redis_window = RedisWindow()
    if redis_window.low(queue, priority):
        run_pass(redis_window)


def resend() -> int:
    """Send again the messages not taken within requeue_after; how many."""
    with session_scope() as session:
        again = resend_stale(session)
    window.send(again, claim_first=True)
    return len(again)
