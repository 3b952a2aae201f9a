"""Reading jobs for producers: the one way the api's job routes reach the database.

Reads change nothing, so they need no transition; they live here so that routes
hold no SQL and no ORM queries of their own. The poll of one job is the api's hottest
read and goes by the driver (see db.driver_autocommit).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.config import get_settings
from app.core.status import JobStatus
from app.store.db import autocommit, conn_rows, driver_autocommit, new_session
from app.store.models import Decision, Job, Result

#: A job with its result, if any, in one statement (so in autocommit, one round trip).
JOB_AND_RESULT_SQL = """
SELECT j.id, j.kind, j.status, j.priority, j.params, j.attempt, j.max_attempts, j.batch_id,
       j.line, j.ref, j.idempotency_key, j.worker, j.error, j.created_at, j.started_at,
       j.finished_at, j.run_after, j.tenant_id, r.result, r.result_sha256
FROM jobs j LEFT JOIN results r ON r.job_id = j.id WHERE j.id = %s
"""


def poll(job_id: int) -> Any | None:
    """The job's row with its result columns (read like a Job), or None."""
    with driver_autocommit() as conn:
        rows = conn_rows(conn, JOB_AND_RESULT_SQL, (job_id,))
    return rows[0] if rows else None


def get_job(session: Session, job_id: int) -> Job | None:
    """The job, or None."""
    return session.get(Job, job_id)


def get_result(session: Session, job: Any) -> Result | None:
    """The stored result of a job that succeeded, else None."""
    return session.get(Result, job.id) if job.status == JobStatus.SUCCEEDED else None


def get_decision(session: Session, job_id: int) -> Decision | None:
    """The governor decision of an evaluate job, or None."""
    return session.get(Decision, job_id)


def list_jobs(
    session: Session, *, tenant_id: int | None, status: str | None = None,
    kind: str | None = None, batch_id: int | None = None,
    created_after: datetime | None = None, created_before: datetime | None = None,
    before_id: int | None = None, limit: int = 100, scheduled: bool | None = None,
) -> list[Job]:
    """Jobs newest first, filtered (tenant_id None: every tenant's), at most limit.

    scheduled: True for queued jobs waiting for a later time (run_at, delay, or a retry's
    backoff), False for every other job.
    """
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    filters = [(status, Job.status == status), (kind, Job.kind == kind),
               (batch_id, Job.batch_id == batch_id)]
    for value, clause in filters:
        if value is not None:
            stmt = stmt.where(clause)
    if scheduled is not None:
        waiting = (Job.status == JobStatus.QUEUED) & (Job.run_after > func.now())
        stmt = stmt.where(waiting if scheduled else ~waiting)
    if created_after is not None:
        stmt = stmt.where(Job.created_at >= created_after)
    if created_before is not None:
        stmt = stmt.where(Job.created_at < created_before)
    if before_id is not None:
        stmt = stmt.where(Job.id < before_id)
    return list(session.scalars(stmt))


def results_of(session: Session, jobs: Sequence[Job]) -> dict[int, Result]:
    """The stored results of those of jobs that succeeded, by job id."""
    done = [j.id for j in jobs if j.status == JobStatus.SUCCEEDED]
    if not done:
        return {}
    return {r.job_id: r for r in session.scalars(select(Result).where(Result.job_id.in_(done)))}


def submission_session() -> AbstractContextManager[Session]:
    """The session one submission runs in.

    The job and its event are written by one statement, so a transaction would only add
    its BEGIN and COMMIT round trips; except with the tenant cap on, whose advisory lock
    must be held from the count to the insert.
    """
    if get_settings().max_queued_per_tenant > 0:
        return new_session()  # a Session closes itself at the end of a with block
    return autocommit()


#: Lines of a batch's results page read per statement: what a page costs in memory,
#: however many lines the client asked for.
RESULTS_SLICE = 250

#: A slice of a batch's results in line order, results and errors as PostgreSQL's JSON
#: text (passed through, never parsed).
BATCH_RESULTS_SQL = """
SELECT j.line, j.id, j.status, r.result::text AS result,
       (j.error - 'traceback')::text AS error
FROM jobs j LEFT JOIN results r ON r.job_id = j.id
WHERE j.batch_id = %(b)s AND j.line > %(after)s ORDER BY j.line LIMIT %(limit)s
"""
#: The last line of a full page of a batch's results, if the page is full (index only).
PAGE_END_SQL = """
SELECT line FROM jobs WHERE batch_id = :b AND line > :after ORDER BY line
OFFSET :limit - 1 LIMIT 1
"""
_PAGE_END = text(PAGE_END_SQL)


def page_end(session: Session, batch_id: int, after: int, limit: int) -> int | None:
    """The last line of the page of limit lines after `after`, None if the page is not full."""
    end = session.execute(_PAGE_END, {"b": batch_id, "after": after, "limit": limit})
    return end.scalar_one_or_none()


def result_slices(batch_id: int, after: int, limit: int) -> Iterator[list[Any]]:
    """A page of a batch's results, RESULTS_SLICE rows per statement, each in autocommit.

    Keyset slices, not one server-side cursor: a cursor holds its transaction (and a
    pooled connection) for as long as the client takes to read the page, while between
    two slices this holds nothing at all.
    """
    while limit > 0:
        with driver_autocommit() as conn:
            rows = conn_rows(conn, BATCH_RESULTS_SQL, {"b": batch_id, "after": after,
                                                       "limit": min(limit, RESULTS_SLICE)})
        if not rows:
            return
        yield rows
        after, limit = rows[-1].line, limit - len(rows)
