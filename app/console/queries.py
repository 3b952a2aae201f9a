"""What the console reads, each statement bounded at 10 million jobs (migration 0007).

Counts stop at COUNT_CAP index entries each, so a refresh of the overview never scans
the table. Running jobs are read once per refresh from their own partial index: there
are few (the chunks workers hold), and joined with the tenant index the planner would
read a whole tenant's rows for each lane. Job lists page by id (keyset); filters no
index serves (kind, created range, error and params text, the statuses other than dead
and cancelled) are searched one window of WINDOW ids per page, and the page says which
ids it has searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, String, cast, func, select, text
from sqlalchemy.orm import Session

from app.core import KINDS as CORE_KINDS
from app.jobs.kinds import extra
from app.store.models import Batch, Job, Tenant

STATUSES = ("queued", "running", "succeeded", "dead", "cancelled")
FINISHED = ("succeeded", "dead", "cancelled")
#: Most index entries one overview count reads; beyond it the page shows "100,000+".
COUNT_CAP = 100_000
#: The per-tenant table's counts stop here: an admin's overview has one row per tenant.
TENANT_CAP = 10_000
#: Throughput is what finished in this window, per second.
RATE_WINDOW = timedelta(seconds=10)
#: The overview's counts of finished jobs cover this much of the past.
RECENT = timedelta(hours=1)
#: Ids one page of an unindexed search looks through.
WINDOW = 100_000
#: Jobs per page of the list.
PAGE = 50

#: Per lane (kind and priority): backlog, running, and jobs run to an end (succeeded or
#: dead) within the rate window.
_LANES = text("""
WITH running AS MATERIALIZED (SELECT tenant_id, kind, priority FROM jobs
                              WHERE status = 'running')
SELECT lk.kind, lp.priority,
  (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.tenant_id = ANY(CAST(:tenants AS bigint[]))
     AND j.kind = lk.kind AND j.priority = lp.priority AND j.status = 'queued'
     LIMIT :cap) q) AS queued,
  (SELECT count(*) FROM running r WHERE r.tenant_id = ANY(CAST(:tenants AS bigint[]))
     AND r.kind = lk.kind AND r.priority = lp.priority) AS running,
  (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.tenant_id = ANY(CAST(:tenants AS bigint[]))
     AND j.kind = lk.kind AND j.priority = lp.priority
     AND j.status IN ('succeeded', 'dead')
     AND j.finished_at IS NOT NULL AND j.finished_at > now() - :rate_window
     LIMIT :cap) f) AS finished
FROM unnest(CAST(:kinds AS text[])) AS lk(kind)
CROSS JOIN unnest(CAST('{0,1,2}' AS smallint[])) AS lp(priority)
""")

#: Per kind and finished status: how many finished within RECENT.
_RECENT = text("""
SELECT k.kind, s.status,
  (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.tenant_id = ANY(CAST(:tenants AS bigint[]))
     AND j.kind = k.kind AND j.priority = ANY(CAST('{0,1,2}' AS smallint[]))
     AND j.status = s.status AND j.finished_at IS NOT NULL
     AND j.finished_at > now() - :recent LIMIT :cap) c) AS n
FROM unnest(CAST(:kinds AS text[])) AS k(kind)
CROSS JOIN unnest(CAST('{succeeded,dead,cancelled}' AS text[])) AS s(status)
""")

#: Per tenant (an admin's view of every tenant): backlog, running, and within RECENT the
#: jobs that succeeded and died.
_PER_TENANT = text("""
WITH running AS MATERIALIZED (SELECT tenant_id FROM jobs WHERE status = 'running')
SELECT t.id, t.name,
  (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.tenant_id = t.id
     AND j.status = 'queued' LIMIT :cap) q) AS queued,
  (SELECT count(*) FROM running r WHERE r.tenant_id = t.id) AS running,
  (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.tenant_id = t.id
     AND j.kind = ANY(CAST(:kinds AS text[])) AND j.priority = ANY(CAST('{0,1,2}' AS smallint[]))
     AND j.status = 'succeeded' AND j.finished_at IS NOT NULL
     AND j.finished_at > now() - :recent LIMIT :cap) s) AS succeeded,
  (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.tenant_id = t.id
     AND j.kind = ANY(CAST(:kinds AS text[])) AND j.priority = ANY(CAST('{0,1,2}' AS smallint[]))
     AND j.status = 'dead' AND j.finished_at IS NOT NULL
     AND j.finished_at > now() - :recent LIMIT :cap) d) AS dead
FROM tenants t WHERE t.id = ANY(CAST(:tenants AS bigint[])) ORDER BY t.name
""")

_TENANTS = text("SELECT id, name FROM tenants ORDER BY name")
_MAX_ID = text("SELECT coalesce(max(id), 0) FROM jobs")
#: A batch's first and last job ids: ids are reserved in line order (app.jobs.reserve_ids).
_BATCH_IDS = text(
    "SELECT (SELECT id FROM jobs WHERE batch_id = :b ORDER BY line LIMIT 1), "
    "(SELECT id FROM jobs WHERE batch_id = :b ORDER BY line DESC LIMIT 1)")


@dataclass(frozen=True, slots=True)
class Lane:
    """One kind and priority: its backlog, running jobs and throughput."""

    kind: str
    priority: int
    queued: int
    running: int
    per_second: float
    capped: bool


@dataclass(slots=True)
class Overview:
    """What the overview shows for the tenants in view."""

    lanes: list[Lane]
    #: (kind, status) -> count: queued and running now, finished ones within RECENT
    counts: dict[tuple[str, str], int]
    batches: list[Batch]
    #: (tenant name, queued, running, succeeded and dead within RECENT): an admin's view
    per_tenant: list[tuple[str, int, int, int, int]] = field(default_factory=list)


def kinds() -> tuple[str, ...]:
    """Every job kind: app.core's three, then any a plugin registered."""
    return tuple(CORE_KINDS) + tuple(sorted(extra()))


def tenants(session: Session) -> list[tuple[int, str]]:
    """Every tenant's id and name (few: one per team)."""
    return [(r.id, r.name) for r in session.execute(_TENANTS)]


def overview(session: Session, tenant_ids: Sequence[int], *, per_tenant: bool = False
             ) -> Overview:
    """Lanes, counts by kind and status, and unfinished batches of these tenants; with
    per_tenant, also each tenant's backlog and recent outcomes."""
    params = {"tenants": list(tenant_ids), "kinds": list(kinds()), "cap": COUNT_CAP,
              "rate_window": RATE_WINDOW, "recent": RECENT}
    lanes = [Lane(r.kind, r.priority, r.queued, r.running,
                  r.finished / RATE_WINDOW.total_seconds(), r.finished >= COUNT_CAP)
             for r in session.execute(_LANES, params)]
    counts: dict[tuple[str, str], int] = {}
    for lane in lanes:
        counts[(lane.kind, "queued")] = counts.get((lane.kind, "queued"), 0) + lane.queued
        counts[(lane.kind, "running")] = counts.get((lane.kind, "running"), 0) + lane.running
    for r in session.execute(_RECENT, params):
        counts[(r.kind, r.status)] = r.n
    batches = list(session.scalars(
        select(Batch).where(Batch.tenant_id.in_(tenant_ids), Batch.finished_at.is_(None))
        .order_by(Batch.id.desc()).limit(20)))
    rows = (session.execute(_PER_TENANT, {**params, "cap": TENANT_CAP}).all()
            if per_tenant else [])
    return Overview(lanes, counts, batches,
                    [(r.name, r.queued, r.running, r.succeeded, r.dead) for r in rows])


@dataclass(slots=True)
class JobQuery:
    """The list's filters and search, as the form sends them."""

    status: str | None = None
    kind: str | None = None
    batch_id: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    #: what q is searched in: id, ref, idempotency_key, error or params
    field: str = "ref"
    q: str = ""
    cursor: int | None = None

    @property
    def windowed(self) -> bool:
        """Whether a filter no index serves is on: then a page searches WINDOW ids.

        Indexes serve a tenant, a batch, the dead and cancelled statuses, and a search
        by id, ref or idempotency key. Any other filter may have to pass over millions of
        newer rows (a backlog of queued jobs ahead of the succeeded ones, say).
        """
        text_search = bool(self.q) and self.field in ("error", "params")
        other_status = self.status is not None and self.status not in ("dead", "cancelled")
        return text_search or other_status or any(v is not None for v in (
            self.kind, self.created_after, self.created_before))


@dataclass(slots=True)
class JobPage:
    """A page of jobs and where the next one starts."""

    jobs: list[Job]
    next_cursor: int | None
    #: the ids this page searched, when it searched a window: (lowest, highest)
    searched: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)


def _like(q: str) -> str:
    """q as a case-insensitive substring pattern, its own wildcards escaped."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _search(query: JobQuery) -> ColumnElement[bool] | None:
    """The clause of the search box, or None when the query cannot match (a bad id)."""
    q = query.q.strip()
    if query.field == "id":
        return Job.id == int(q) if q.isdigit() and int(q) < 2**63 else None
    if query.field == "idempotency_key":
        return Job.idempotency_key == q
    if query.field == "error":
        return Job.error["message"].astext.ilike(_like(q)) | Job.error["type"].astext.ilike(
            _like(q))
    if query.field == "params":
        return _params_clause(q)
    return Job.ref == q


def _params_clause(q: str) -> ColumnElement[bool]:
    """name=value: the params hold exactly that value at that name; else a substring."""
    name, sep, value = q.partition("=")
    if sep and name.strip():
        return Job.params.contains({name.strip(): value.strip()})
    return cast(Job.params, String).ilike(_like(q))


def filtered(query: JobQuery, tenant_ids: Sequence[int] | None) -> Select[Any] | None:
    """The list's statement without its id bounds; None when nothing can match."""
    stmt = select(Job).order_by(Job.id.desc())
    if tenant_ids is not None:
        stmt = stmt.where(Job.tenant_id.in_(tenant_ids))
    if query.status is not None:
        stmt = stmt.where(Job.status == query.status)
    if query.kind is not None:
        stmt = stmt.where(Job.kind == query.kind)
    if query.batch_id is not None:
        stmt = stmt.where(Job.batch_id == query.batch_id)
    if query.created_after is not None:
        stmt = stmt.where(Job.created_at >= query.created_after)
    if query.created_before is not None:
        stmt = stmt.where(Job.created_at < query.created_before)
    if query.q.strip():
        search = _search(query)
        if search is None:
            return None
        stmt = stmt.where(search)
        if query.field == "idempotency_key" and tenant_ids is None:
            # its index leads with the tenant: one seek per tenant, not a scan of it all
            stmt = stmt.where(Job.tenant_id.in_(select(Tenant.id)))
    return stmt


def list_jobs(session: Session, query: JobQuery, tenant_ids: Sequence[int] | None) -> JobPage:
    """One page of jobs, newest first."""
    stmt = filtered(query, tenant_ids)
    if stmt is None:
        return JobPage([], None)
    if query.batch_id is not None:
        first, last = session.execute(_BATCH_IDS, {"b": query.batch_id}).one()
        if first is None:
            return JobPage([], None)
        stmt = stmt.where(Job.id >= first, Job.id <= last)
    if query.cursor is not None:
        stmt = stmt.where(Job.id < query.cursor)
    searched = None
    if query.windowed:
        top = query.cursor if query.cursor is not None else session.scalar(_MAX_ID) + 1
        low = max(top - WINDOW, 1)
        stmt = stmt.where(Job.id >= low)
        searched = (low, top - 1)
    rows: list[Job] = list(session.scalars(stmt.limit(PAGE + 1)))
    if len(rows) > PAGE:
        return JobPage(rows[:PAGE], rows[PAGE - 1].id, searched)
    more = searched is not None and searched[0] > 1
    return JobPage(rows, searched[0] if more and searched else None, searched)


def dead_ids(session: Session, query: JobQuery, tenant_ids: Sequence[int] | None,
             limit: int) -> list[tuple[int, int]]:
    """(id, tenant_id) of up to limit dead jobs matching the query, newest first."""
    stmt = filtered(JobQuery(**{**_fields(query), "status": "dead", "cursor": None}), tenant_ids)
    if stmt is None:
        return []
    ids = stmt.with_only_columns(Job.id, Job.tenant_id).limit(limit)
    return [(r.id, r.tenant_id) for r in session.execute(ids)]


def count_dead(session: Session, query: JobQuery, tenant_ids: Sequence[int] | None,
               cap: int) -> int:
    """How many dead jobs match the query, counting up to cap."""
    stmt = filtered(JobQuery(**{**_fields(query), "status": "dead", "cursor": None}), tenant_ids)
    if stmt is None:
        return 0
    ids = stmt.with_only_columns(Job.id).order_by(None).limit(cap).subquery()
    return int(session.scalar(select(func.count()).select_from(ids)) or 0)


def _fields(query: JobQuery) -> dict[str, Any]:
    return {name: getattr(query, name) for name in JobQuery.__dataclass_fields__}

