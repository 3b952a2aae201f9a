"""Single jobs: submit, read (with long-poll), list, cancel, retry, audit, decision."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BeforeValidator
from sqlalchemy.orm import Session

from app import jobs
from app.api.deps import MAX_ID, IdPath, PrincipalDep, SessionDep, get_principal
from app.api.errors import ApiError
from app.api.schemas import (
    ERRORS,
    AuditEventRead,
    AuditRead,
    DecisionRead,
    JobCreate,
    JobRead,
    JobsRead,
    Kind,
    Status,
)
from app.api.waiters import Waiters
from app.config import get_settings
from app.core.status import TERMINAL
from app.jobs import audit, delayed, reads
from app.jobs.admission import check_cap, check_submission
from app.jobs.keys import Principal
from app.store.models import Job, Result

#: A Job, or a row read like one (see _read).
T = TypeVar("T", bound=Any)  # bound=Any: mypy lets _visible read its attributes

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: Seconds between database re-reads while long-polling, in case a notification is lost.
POLL_FALLBACK = 1.0


def _iso_only(value: object) -> object:
    """Refuse Unix timestamps: the schema promises ISO 8601 date-times, nothing else."""
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("expected an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]


def get_job(session: Session, principal: Principal, job_id: int) -> Job:
    """The job if the caller may see it; 404 otherwise (also for other tenants' jobs)."""
    return _visible(reads.get_job(session, job_id), principal, job_id)


def _visible(job: T | None, principal: Principal, job_id: int) -> T:
    if job is None or (job.tenant_id != principal.tenant_id and not principal.is_admin):
        raise ApiError(404, f"job {job_id} not found")
    return job


def job_read(session: Session, job: Job | jobs.JobRow) -> JobRead:
    """The job with its result when it has one."""
    return JobRead.of(job, *_result_of(reads.get_result(session, job)))


def _result_of(res: Result | None) -> tuple[Any, str | None]:
    return (res.result, res.result_sha256) if res else (None, None)


def _json(job: JobRead, status_code: int = 200) -> Response:
    """The job as the response itself: FastAPI would validate it once more to serialise it."""
    return Response(job.model_dump_json(), status_code, media_type="application/json")


@router.post("", status_code=201, response_model=JobRead, responses=ERRORS)
async def create_job(
    job_in: JobCreate,
    request: Request,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=200, pattern=r"^[!-~]+$")] = None,
    wait: Annotated[float, Query(ge=0, le=60, description=(
        "long-poll seconds: answer once the job is terminal (or when they are up), "
        "as GET /v1/jobs/{id}?wait does, saving the producer that second request"))] = 0,
) -> Response:
    """Submit one job; 200 with the existing job if the idempotency key was seen."""
    return await _submitted(request, principal, job_in, idempotency_key, wait)


async def submit(request: Request, job_in: JobCreate, idempotency_key: str | None,
                 wait: float) -> Response:
    """create_job for app.api.hot, which has checked the body, header and query."""
    return await _submitted(request, await get_principal(request), job_in, idempotency_key,
                            wait)


async def _submitted(request: Request, principal: Principal, job_in: JobCreate,
                     idempotency_key: str | None, wait: float) -> Response:
    deadline = time.monotonic() + wait
    stored = await _create_now(request, principal, job_in, idempotency_key)
    if stored is None:
        stored = await run_in_threadpool(_create, job_in, principal, idempotency_key)
    job, status = stored
    if status == 201 and job.status not in TERMINAL:  # for the long-poll that follows
        request.app.state.waiters.submitted.add(job.id, principal.tenant_id)
    if wait > 0 and job.status not in TERMINAL:
        job = await _until_terminal(request, principal, job.id, deadline, known=job)
    return _json(job, status)


async def _create_now(request: Request, principal: Principal, job_in: JobCreate,
                      idempotency_key: str | None) -> tuple[JobRead, int] | None:
    """_create in the event loop when one statement is all it takes (jobs.submit_now): no
    idempotency key to look up, due now, no submission limit to check (their reads and
    locks are _create's). None when it is not, or submit_now declined."""
    settings = get_settings()
    pool = getattr(request.app.state, "db_async", None)
    if pool is None or idempotency_key or job_in.idempotency_key or job_in.run_at or \
            job_in.delay or settings.max_queued_per_tenant or settings.rate_limit_per_second:
        return None
    try:
        job = await jobs.submit_now(
            pool, request.app.state.redis_async, tenant_id=principal.tenant_id,
            kind=job_in.kind, params=job_in.params, actor=principal.actor,
            priority=job_in.priority, max_attempts=job_in.max_attempts, ref=job_in.ref)
    except jobs.UnknownKind as exc:
        raise _unknown_kind(exc) from None
    return (JobRead.of(job), 201) if job is not None else None


def _unknown_kind(exc: jobs.UnknownKind) -> ApiError:
    return ApiError(422, str(exc), [{"field": "kind", "message": str(exc)}])


def _create(job_in: JobCreate, principal: Principal, idempotency_key: str | None
            ) -> tuple[JobRead, int]:
    """The submission itself (blocking): the job as stored, and 201, or 200 for a replay."""
    # Refused params and replays of a seen idempotency key take no rate-limit token, so
    # params are checked here first (and again by submit: 2-6 us, of about 3 ms).
    try:
        jobs.validate(job_in.kind, job_in.params)
    except jobs.UnknownKind as exc:
        raise _unknown_kind(exc) from None
    key = job_in.idempotency_key or idempotency_key
    try:
        after = delayed.run_after(job_in.run_at, job_in.delay)
    except delayed.BadDelay as exc:
        raise ApiError(422, str(exc), [{"field": "run_at", "message": str(exc)}]) from None
    with reads.submission_session() as session:
        seen = jobs.find_keyed(session, principal.tenant_id, key) if key else None
        if seen is not None:
            return job_read(session, seen), 200
        check_submission(session, principal, 1)
        job, created = jobs.submit(
            session, tenant_id=principal.tenant_id, kind=job_in.kind, params=job_in.params,
            actor=principal.actor, priority=job_in.priority, max_attempts=job_in.max_attempts,
            idempotency_key=key, ref=job_in.ref, run_after=after,
        )
        session.commit()
        return job_read(session, job), 201 if created else 200


def _read(principal: Principal, job_id: int) -> tuple[JobRead, bool]:
    """A poll of one job: the hottest read, so by the driver (see driver_autocommit)."""
    job: Any = _visible(reads.poll(job_id), principal, job_id)  # a row, read like a Job
    done = job.status == "succeeded"
    return (JobRead.of(job, job.result if done else None, job.result_sha256 if done else None),
            job.status in TERMINAL)


@router.get("/{job_id}", response_model=JobRead, responses=ERRORS)
async def read_job(
    job_id: IdPath,
    request: Request,
    principal: PrincipalDep,
    wait: Annotated[float, Query(ge=0, le=60, description="long-poll seconds")] = 0,
) -> Response:
    """The job; with wait=S, block up to S seconds until it reaches a terminal state."""
    return await _answer_read(request, principal, job_id, wait)


async def read(request: Request, job_id: int, wait: float) -> Response:
    """read_job for app.api.hot, which has checked the path and query."""
    return await _answer_read(request, await get_principal(request), job_id, wait)


async def _answer_read(request: Request, principal: Principal, job_id: int, wait: float
                       ) -> Response:
    if wait <= 0:  # a plain read always asks PostgreSQL: what is stored now
        job, _done = await run_in_threadpool(_read, principal, job_id)
        return _json(job)
    return _json(await _until_terminal(request, principal, job_id, time.monotonic() + wait))


async def _until_terminal(request: Request, principal: Principal, job_id: int,
                          deadline: float, known: JobRead | None = None) -> JobRead:
    """The job once terminal, or as it is at the deadline: a long-poll.

    The watch is registered before each look, so no notification slips between. A job its
    worker announced a moment ago needs no read (waiters.recent). `known` is the job as
    the caller just wrote it: it stands for the first read unless the job was announced.
    A job this process stored a moment ago (waiters.submitted, if the caller's tenant may
    see it) is still queued as far as it knows: the first look then waits without a read.
    """
    waiters = request.app.state.waiters
    tenant = waiters.submitted.get(job_id) if known is None else None
    queued = tenant is not None and (tenant == principal.tenant_id or principal.is_admin)
    with waiters.waiting(principal.tenant_id, get_settings().max_long_polls_per_tenant) as ok:
        # Over the tenant's limit: one look, no wait (the job as it is, as wait=0 answers).
        return await _poll(waiters, principal, job_id, deadline if ok else 0.0, known, queued)


async def _poll(waiters: Waiters, principal: Principal, job_id: int, deadline: float,
                known: JobRead | None, queued: bool) -> JobRead:
    """_until_terminal's loop, for a long-poll the tenant's limit admitted (or one look)."""
    while True:
        with waiters.watch(job_id) as changed:
            final = waiters.recent.get(job_id)
            if final is not None:
                return _finished(principal, job_id, final)
            left = deadline - time.monotonic()
            unchanged = not waiters.recent.announced(job_id)
            job: JobRead | None
            if known is not None and unchanged:
                job, done = known, False
            elif queued and unchanged and left > 0:
                job, done = None, False  # waited for below: never answered as it is
            else:
                job, done = await run_in_threadpool(_read, principal, job_id)
                left = deadline - time.monotonic()
            known, queued = None, False
            if done or left <= 0:
                assert job is not None
                return job
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(left, POLL_FALLBACK))
            if changed.final is not None:  # the worker sent the finished job: no re-read
                return _finished(principal, job_id, changed.final)


def _finished(principal: Principal, job_id: int, final: dict[str, Any]) -> JobRead:
    """A finished job as its worker announced it, to the same tenant check as a read."""
    job: Any = _visible(SimpleNamespace(**final), principal, job_id)
    return JobRead.of(job, final["result"], final["result_sha256"])


@router.get("", response_model=JobsRead, responses=ERRORS)
def read_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    status: Status | None = None,
    kind: Kind | None = None,
    batch_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    scheduled: Annotated[bool | None, Query(
        description="true: only queued jobs waiting for a later time (run_at, delay, or a "
                    "retry's backoff); false: every other job")] = None,
    created_after: IsoDatetime | None = None,
    created_before: IsoDatetime | None = None,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,19}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobsRead:
    """Jobs newest first, filtered; pass next_cursor back as cursor for the next page."""
    rows = reads.list_jobs(
        session, tenant_id=None if principal.is_admin else principal.tenant_id, status=status,
        kind=kind, batch_id=batch_id, created_after=created_after, created_before=created_before,
        scheduled=scheduled,
        before_id=int(cursor) if cursor is not None else None, limit=limit + 1)
    page = rows[:limit]
    results = reads.results_of(session, page)
    data = [JobRead.of(j, *_result_of(results.get(j.id))) for j in page]
    more = len(rows) > limit
    return JobsRead(data=data, count=len(data), next_cursor=str(page[-1].id) if more else None)


@router.post("/{job_id}/cancel", response_model=JobRead, responses=ERRORS)
def cancel_job(job_id: IdPath, session: SessionDep, principal: PrincipalDep) -> JobRead:
    """Cancel a queued or running job; a running job's late result is discarded."""
    job = get_job(session, principal, job_id)
    if not jobs.cancel(session, job.id, actor=principal.actor):
        raise ApiError(409, f"job {job_id} is {job.status}; only queued or running jobs cancel")
    session.commit()  # announces the cancel to the job's long-polls (jobs.cancel)
    session.refresh(job)
    return job_read(session, job)


@router.post("/{job_id}/retry", response_model=JobRead, responses=ERRORS)
def retry_job(job_id: IdPath, session: SessionDep, principal: PrincipalDep) -> JobRead:
    """Queue a dead or cancelled job again, with a fresh allowance of attempts."""
    job = get_job(session, principal, job_id)
    check_cap(session, job.tenant_id, 1)
    if not jobs.retry(session, job.id, actor=principal.actor):
        raise ApiError(409, f"job {job_id} is {job.status}; only dead or cancelled jobs retry")
    session.commit()
    session.refresh(job)
    return job_read(session, job)


@router.get("/{job_id}/audit", response_model=AuditRead, responses=ERRORS)
def read_audit(job_id: IdPath, session: SessionDep, principal: PrincipalDep) -> AuditRead:
    """The job's audit trail and whether its hash chain verifies."""
    job = get_job(session, principal, job_id)
    events = audit.job_events(session, job.id)  # after the row: see audit.verify_job
    report = audit.verify_job(session, job.id, events, (job.audit_seq, job.audit_head))
    return AuditRead(
        job_id=job.id, verified=report.ok, broken_seq=report.broken_seq, reason=report.reason,
        events=[
            AuditEventRead(seq=e.seq, type=e.event_type, actor=e.actor, at=e.created_at,
                           details=e.details, prev_hash=e.prev_hash, hash=e.hash)
            for e in events
        ],
    )


@router.get("/{job_id}/decision", response_model=DecisionRead, responses=ERRORS)
def read_decision(job_id: IdPath, session: SessionDep, principal: PrincipalDep) -> DecisionRead:
    """The governor decision of a finished evaluate job."""
    job = get_job(session, principal, job_id)
    row = reads.get_decision(session, job.id)
    if row is None:
        why = "is not an evaluate job" if job.kind != "evaluate" else f"is {job.status}"
        raise ApiError(404, f"job {job_id} has no decision: it {why}")
    return DecisionRead(
        job_id=row.job_id, decision=row.decision, stop_reason=row.stop_reason,
        cycles_evaluated=row.cycles_evaluated, similarity=row.similarity, risk=row.risk,
        composite_quality=row.composite_quality, remaining_budget=row.remaining_budget,
    )
