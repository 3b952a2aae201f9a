"""Lease renewal: a worker keeps the leases of the jobs it is running alive.

A claimed job's lease (`lease_until`) is what tells the relay the worker still runs it.
Renewed while the chunk runs, a lease can be short, so the jobs of a dead worker run
again soon, and still no healthy chunk ever outlives it however long it takes.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.config import get_settings
from app.jobs.execute import LockedJob
from app.store.db import array_literal

#: running → running, a lease later. Fenced by attempt: a job cancelled, re-leased or
#: finished meanwhile is left alone. Rows another transaction holds (a cancel, the
#: finishing write) are skipped, not waited for.
RENEW_SQL = """
UPDATE jobs SET lease_until = now() + make_interval(secs => :lease)
FROM (SELECT j.id FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]))
        AS v(id, attempt) JOIN jobs j ON j.id = v.id AND j.attempt = v.attempt
      WHERE j.status = 'running' FOR UPDATE OF j SKIP LOCKED) AS mine
WHERE jobs.id = mine.id
"""
_RENEW = text(RENEW_SQL)


def renew_leases(session: Session, claimed: Sequence[LockedJob]) -> int:
    """Push the leases of these claimed jobs (this attempt of each) a full lease ahead."""
    if not claimed:
        return 0
    result = session.execute(_RENEW, {
        "lease": get_settings().lease_seconds,
        "ids": array_literal(c.id for c in claimed),
        "attempts": array_literal(c.attempt for c in claimed),
    })
    return int(result.rowcount)  # type: ignore[attr-defined]
