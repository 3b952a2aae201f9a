"""One job (params, result, error, attempts, audit chain, decision) and one batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.console.auth import LoginDep
from app.console.chart import trajectories_svg
from app.console.render import page
from app.console.scope import IdPath, NotFound, Scope, scope_of
from app.jobs import audit
from app.jobs.documents import batch_read
from app.store.db import new_session
from app.store.models import AuditEvent, Batch, Decision, Job, Result, Tenant

router = APIRouter(prefix="/console", include_in_schema=False)

#: Audit events that open and close an attempt.
_STARTS = {"started"}
_ENDS = {"succeeded", "dead", "retry_scheduled", "lease_expired", "cancelled"}
#: Result lines read per round of a download.
DOWNLOAD_PAGE = 10_000
_RESULTS = text(
    "SELECT j.line, j.id, j.status, r.result, j.error FROM jobs j "
    "LEFT JOIN results r ON r.job_id = j.id "
    "WHERE j.batch_id = :b AND j.line > :after ORDER BY j.line LIMIT :limit")

#: What the ?notice= of a redirect after an action says (fixed texts: nothing reflected).
NOTICES = {
    "cancelled": ("Cancelled.", False), "retried": ("Queued again.", False),
    "not-cancellable": ("Only queued or running jobs can be cancelled.", True),
    "not-retryable": ("Only dead or cancelled jobs can be retried.", True),
    "busy": ("A worker is finishing these jobs right now; nothing changed. Try again.", True),
    "capped": ("The tenant is at its cap of unfinished jobs; nothing was queued.", True),
    "batch-cancelled": ("Every job of the batch that had not started is cancelled.", False),
}


def notice_context(request: Request) -> dict[str, Any]:
    """The page's notice, from the ?notice= an action redirected with."""
    text_, error = NOTICES.get(request.query_params.get("notice", ""), (None, False))
    return {"notice": text_, "notice_error": error}


def visible_job(session: Session, scope: Scope, job_id: int) -> Job:
    """The job if this login may see it; NotFound otherwise, as for an unknown id."""
    job = session.get(Job, job_id)
    if job is None or not scope.may_see(job.tenant_id):
        raise NotFound(f"job {job_id} not found")
    return job


def visible_batch(session: Session, scope: Scope, batch_id: int) -> Batch:
    """The batch if this login may see it; NotFound otherwise."""
    batch = session.get(Batch, batch_id)
    if batch is None or not scope.may_see(batch.tenant_id):
        raise NotFound(f"batch {batch_id} not found")
    return batch


def attempts(events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
    """Each attempt of the job, from its audit events: who ran it, when, and how it ended."""
    rows: list[dict[str, Any]] = []
    for e in events:
        if e.event_type in _STARTS:
            rows.append({"attempt": e.details.get("attempt", len(rows) + 1), "worker": e.actor,
                         "started": e.created_at, "ended": None, "outcome": "running",
                         "error": None})
        elif e.event_type in _ENDS and rows and rows[-1]["ended"] is None:
            error = e.details.get("error") or {}
            rows[-1].update(ended=e.created_at, outcome=e.event_type,
                            error=error.get("message") if isinstance(error, dict) else None)
    return rows


def _job_context(session: Session, scope: Scope, job_id: int) -> dict[str, Any]:
    job = visible_job(session, scope, job_id)
    result = session.get(Result, job.id) if job.status == "succeeded" else None
    events = audit.job_events(session, job.id)
    decision = session.get(Decision, job.id)
    body = result.result if result else None
    cycles = body.get("cycles") if decision and isinstance(body, dict) else None
    chart = (trajectories_svg(body["trajectories"])
             if cycles and isinstance(body, dict) and body.get("trajectories") else None)
    tenant = session.get(Tenant, job.tenant_id)
    return {"job": job, "result": body, "result_sha256": result.result_sha256 if result else None,
            "decision": decision, "cycles": cycles, "chart": chart, "events": events,
            "report": audit.verify_job(session, job.id, events), "attempts": attempts(events),
            "tenant_name": tenant.name if tenant else job.tenant_id}


@router.get("/jobs/{job_id}")
def read_job(job_id: IdPath, request: Request, login: LoginDep) -> HTMLResponse:
    """Everything about one job."""
    with new_session() as session:
        scope = scope_of(session, login, None)
        context = _job_context(session, scope, job_id)
    return page(request, "job.html", {**scope.context(), **context, **notice_context(request),
                                      "nav": "jobs"})


def _batch_context(login: LoginDep, batch_id: int) -> dict[str, Any]:
    with new_session() as session:
        scope = scope_of(session, login, None)
        batch = visible_batch(session, scope, batch_id)
    return {**scope.context(), "batch": batch, "view": batch_read(batch), "nav": "batches"}


@router.get("/batches/{batch_id}")
def read_batch(batch_id: IdPath, request: Request, login: LoginDep) -> HTMLResponse:
    """A batch's progress, rate, ETA, counts and rejected lines."""
    return page(request, "batch.html", {**_batch_context(login, batch_id),
                                        **notice_context(request)})


@router.get("/batches/{batch_id}/live")
def read_batch_live(batch_id: IdPath, request: Request, login: LoginDep) -> HTMLResponse:
    """The batch page's live part."""
    return page(request, "_batch_live.html", _batch_context(login, batch_id))


def _result_lines(batch_id: int) -> Iterator[bytes]:
    """Every line's outcome in line order, read DOWNLOAD_PAGE lines per statement."""
    after = 0
    while True:
        with new_session() as session:
            rows = session.execute(_RESULTS, {"b": batch_id, "after": after,
                                              "limit": DOWNLOAD_PAGE}).all()
        for line, job_id, status, result, error in rows:
            if error:
                error = {k: v for k, v in error.items() if k != "traceback"}
            yield orjson.dumps({"line": line, "job_id": job_id, "status": status,
                                "result": result, "error": error}) + b"\n"
        if len(rows) < DOWNLOAD_PAGE:
            return
        after = rows[-1][0]


@router.get("/batches/{batch_id}/results.ndjson")
def download_results(batch_id: IdPath, login: LoginDep) -> StreamingResponse:
    """The batch's results as an NDJSON file, one line per job, in line order."""
    _batch_context(login, batch_id)  # 404 unless visible
    return StreamingResponse(_result_lines(batch_id), media_type="application/x-ndjson",
                             headers={"Content-Disposition":
                                      f'attachment; filename="batch-{batch_id}-results.ndjson"'})
