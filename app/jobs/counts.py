"""Jobs per lane and status, and the oldest waiting job per lane, without reading jobs.

Triggers on jobs (migration 0006) append what each UPDATE and DELETE changed to
job_count_deltas, and added() what an insert added; fold() adds those rows into
job_counts. Reading costs the number of
lanes and statuses plus the deltas not yet folded, never the number of jobs: the
relay folds every pass, and a reader folds first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.store.models import PRIORITY_NAMES

#: Any fixed number: fold() runs in one transaction at a time, the others skip.
_FOLD_LOCK = 0x62715F636F756E74

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")

#: Delta rows, deleted and added into job_counts in one statement.
_FOLD = text(
    "WITH gone AS (DELETE FROM job_count_deltas RETURNING kind, priority, status, n) "
    "INSERT INTO job_counts (kind, priority, status, n) "
    "SELECT kind, priority, status, sum(n) FROM gone GROUP BY kind, priority, status "
    "ON CONFLICT (kind, priority, status) DO UPDATE SET n = job_counts.n + excluded.n"
)

#: Folded counts plus the deltas written since (by transactions that committed).
_COUNTS = text(
    "SELECT kind, priority, status, sum(n)::bigint AS n FROM ("
    "SELECT kind, priority, status, n FROM job_counts "
    "UNION ALL SELECT kind, priority, status, n FROM job_count_deltas) AS c "
    "GROUP BY kind, priority, status ORDER BY kind, priority, status"
)

#: Jobs just inserted, queued, per lane: what the triggers do not see (see migration 0006).
_ADDED = text(
    "INSERT INTO job_count_deltas (kind, priority, status, n) SELECT kind, priority, "
    "'queued', n FROM unnest(CAST(:kinds AS text[]), CAST(:priorities AS smallint[]), "
    "CAST(:ns AS bigint[])) AS a(kind, priority, n)"
)

#: Seconds the longest-waiting due job of each lane has waited: one descent of the
#: jobs_queued_due index per lane. A job backing off or delayed is not waiting yet.
_OLDEST = text(
    "SELECT l.kind, l.priority, coalesce(extract(epoch FROM greatest(interval '0', "
    "now() - (SELECT min(coalesce(j.run_after, j.created_at)) FROM jobs j "
    "WHERE j.status = 'queued' AND j.kind = l.kind AND j.priority = l.priority))), 0) "
    "AS seconds FROM unnest(CAST(:kinds AS text[]), CAST(:priorities AS smallint[])) "
    "AS l(kind, priority)"
)


@dataclass(frozen=True, slots=True)
class LaneCount:
    """How many jobs of a kind and priority lane are in one status."""

    kind: str
    priority: str
    status: str
    n: int


def added(session: Session, lanes: Mapping[tuple[str, int], int]) -> None:
    """Count jobs this transaction inserted as queued: n per (kind, priority number)."""
    if lanes:
        session.execute(_ADDED, {"kinds": [k for k, _ in lanes],
                                 "priorities": [p for _, p in lanes],
                                 "ns": list(lanes.values())})


def fold(session: Session) -> bool:
    """Add the pending deltas into job_counts, unless another transaction is doing it."""
    if not session.execute(_TRY_LOCK, {"key": _FOLD_LOCK}).scalar_one():
        return False
    session.execute(_FOLD)
    return True


def read(session: Session) -> list[LaneCount]:
    """Jobs per kind, priority and status (statuses never reached are left out)."""
    return [LaneCount(r.kind, PRIORITY_NAMES.get(r.priority, str(r.priority)), r.status, r.n)
            for r in session.execute(_COUNTS) if r.n]


def oldest_waiting(session: Session, lanes: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Seconds the longest-waiting due job of each (kind, priority) lane has waited."""
    if not lanes:
        return {}
    numbers = {name: number for number, name in PRIORITY_NAMES.items()}
    rows = session.execute(_OLDEST, {"kinds": [k for k, _ in lanes],
                                     "priorities": [numbers[p] for _, p in lanes]})
    return {(r.kind, PRIORITY_NAMES[r.priority]): float(r.seconds) for r in rows}
