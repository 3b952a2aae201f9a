"""Console actions: cancel and retry a job, cancel a batch, retry dead jobs in bulk.

Every action is a POST carrying the session's CSRF token (auth.checked_form), goes
through app.jobs (which writes the job's audit event, with the acting key as its actor)
and answers with a redirect to a page that shows the outcome.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from app import jobs
from app.console import queries
from app.console.auth import FormDep, LoginDep
from app.console.detail import visible_batch, visible_job
from app.console.render import page
from app.console.scope import (
    IdPath,
    Scope,
    describe,
    job_query,
    query_fields,
    query_string,
    scope_of,
)
from app.jobs.admission import check_cap
from app.jobs.refusals import Refused
from app.store.db import new_session

router = APIRouter(prefix="/console", include_in_schema=False)

#: Dead jobs queued again per transaction by a bulk retry.
BULK_SLICE = 500
#: Slices one confirmation runs; more needs another confirmation.
BULK_SLICES = 20
#: Dead jobs one confirmation may queue again (and the most its page counts).
PER_CONFIRMATION = BULK_SLICE * BULK_SLICES


def _back(path: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?notice={notice}", status_code=303)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: IdPath, login: LoginDep, _: FormDep) -> RedirectResponse:
    """Cancel a queued or running job."""
    with new_session() as session:
        job = visible_job(session, scope_of(session, login, None), job_id)
        try:
            done = jobs.cancel(session, job.id, actor=login.principal.actor)
        except jobs.Busy:
            return _back(f"/console/jobs/{job_id}", "busy")
        session.commit()
    return _back(f"/console/jobs/{job_id}", "cancelled" if done else "not-cancellable")


@router.post("/jobs/{job_id}/retry")
def retry_job(job_id: IdPath, login: LoginDep, _: FormDep) -> RedirectResponse:
    """Queue a dead or cancelled job again (counted against its tenant's cap)."""
    with new_session() as session:
        job = visible_job(session, scope_of(session, login, None), job_id)
        try:
            check_cap(session, job.tenant_id, 1)
        except Refused:
            return _back(f"/console/jobs/{job_id}", "capped")
        done = jobs.retry(session, job.id, actor=login.principal.actor)
        session.commit()
    return _back(f"/console/jobs/{job_id}", "retried" if done else "not-retryable")


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(batch_id: IdPath, login: LoginDep, _: FormDep) -> RedirectResponse:
    """Cancel every job of the batch that has not started."""
    with new_session() as session:
        visible_batch(session, scope_of(session, login, None), batch_id)
        jobs.mark_cancelling(session, batch_id)
        session.commit()
        # A slice per transaction, as the api does; past a busy worker the batch stays
        # marked and the relay finishes the cancel.
        try:
            while jobs.cancel_batch(session, batch_id,
                                    actor=login.principal.actor) == jobs.CANCEL_SLICE:
                session.commit()
        except jobs.Busy:
            return _back(f"/console/batches/{batch_id}", "busy")
        session.commit()
    return _back(f"/console/batches/{batch_id}", "batch-cancelled")


def _confirmation(request: Request, scope: Scope, params: dict[str, str],
                  done: int | None, refused: str | None = None) -> HTMLResponse:
    query = job_query({**params, "status": "dead"})
    with new_session() as session:
        matching = queries.count_dead(session, query, scope.tenant_ids, PER_CONFIRMATION)
    return page(request, "retry_dead.html", {
        **scope.context(), "nav": "jobs", "done": done, "matching": matching,
        "cap": PER_CONFIRMATION, "slice": BULK_SLICE, "per_request": PER_CONFIRMATION,
        "description": describe(query, scope.tenant), "hidden": query_fields(query, scope.tenant),
        "filter_query": query_string(query, scope.tenant),
        "notice": refused, "notice_error": refused is not None,
    })


@router.get("/retry-dead")
def confirm_retry_dead(request: Request, login: LoginDep) -> HTMLResponse:
    """How many dead jobs match the filter, and a button to retry them."""
    params = dict(request.query_params)
    with new_session() as session:
        scope = scope_of(session, login, params.get("tenant"))
    return _confirmation(request, scope, params, None)


def _retry_slice(scope: Scope, query: Any, actor: str) -> int:
    """Queue one slice of matching dead jobs again, in one transaction; how many."""
    with new_session() as session:
        rows = queries.dead_ids(session, query, scope.tenant_ids, BULK_SLICE)
        for tenant_id, n in Counter(t for _, t in rows).items():
            check_cap(session, tenant_id, n)
        done = sum(jobs.retry(session, job_id, actor=actor) for job_id, _ in rows)
        session.commit()
    return done


@router.post("/retry-dead")
def retry_dead(request: Request, login: LoginDep, form: FormDep) -> HTMLResponse:
    """Retry matching dead jobs, BULK_SLICE per transaction, BULK_SLICES slices at most."""
    query = job_query({**form, "status": "dead"})
    with new_session() as session:
        scope = scope_of(session, login, form.get("tenant"))
    done, refused = 0, None
    try:
        for _ in range(BULK_SLICES):
            n = _retry_slice(scope, query, login.principal.actor)
            done += n
            if n < BULK_SLICE:
                break
    except Refused as exc:  # the tenant's cap: the slices already queued stay queued
        refused = f"Stopped: {exc.message}"
    return _confirmation(request, scope, form, done, refused)
