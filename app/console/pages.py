"""The console's list pages: overview (live), jobs (filtered, searched, paged) and batches."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app.console import queries
from app.console.auth import LoginDep
from app.console.render import page
from app.console.scope import SEARCH_FIELDS, job_query, query_string, scope_of
from app.store.db import new_session
from app.store.models import Batch

router = APIRouter(prefix="/console", include_in_schema=False)

TenantParam = Annotated[str | None, Query(max_length=100)]


def _overview_context(login: LoginDep, tenant: str | None) -> dict[str, object]:
    with new_session() as session:
        scope = scope_of(session, login, tenant)
        view = queries.overview(session, scope.count_ids,
                                per_tenant=scope.login.principal.is_admin and not tenant)
    return {**scope.context(), "view": view, "nav": "overview", "kinds": queries.kinds(),
            "statuses": queries.STATUSES, "cap": queries.COUNT_CAP, "now": datetime.now(UTC),
            "tenant_cap": queries.TENANT_CAP,
            "rate_seconds": int(queries.RATE_WINDOW.total_seconds())}


@router.get("")
def read_overview(request: Request, login: LoginDep, tenant: TenantParam = None) -> HTMLResponse:
    """Backlog and throughput per lane, jobs per status and kind, unfinished batches."""
    return page(request, "overview.html", _overview_context(login, tenant))


@router.get("/overview/live")
def read_overview_live(request: Request, login: LoginDep,
                       tenant: TenantParam = None) -> HTMLResponse:
    """The overview's live part, which the page fetches again every few seconds."""
    return page(request, "_overview_live.html", _overview_context(login, tenant))


@router.get("/jobs")
def read_jobs(request: Request, login: LoginDep) -> HTMLResponse:
    """Jobs newest first, filtered and searched, a page at a time."""
    params = dict(request.query_params)
    query = job_query(params)
    with new_session() as session:
        scope = scope_of(session, login, params.get("tenant"))
        result = queries.list_jobs(session, query, scope.tenant_ids)
    form = {"created_after": params.get("created_after", ""),
            "created_before": params.get("created_before", "")}
    return page(request, "jobs.html", {
        **scope.context(), "nav": "jobs", "q": query, "page": result, "form": form,
        "fields": SEARCH_FIELDS, "statuses": queries.STATUSES, "kinds": queries.kinds(),
        "filter_query": query_string(query, scope.tenant), "window": queries.WINDOW,
        "page_size": queries.PAGE,
    })


@router.get("/batches")
def read_batches(request: Request, login: LoginDep, tenant: TenantParam = None,
                 cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None
                 ) -> HTMLResponse:
    """Batches newest first."""
    with new_session() as session:
        scope = scope_of(session, login, tenant)
        stmt = select(Batch).order_by(Batch.id.desc()).limit(queries.PAGE + 1)
        if scope.tenant_ids is not None:
            stmt = stmt.where(Batch.tenant_id.in_(scope.tenant_ids))
        if cursor is not None:
            stmt = stmt.where(Batch.id < cursor)
        rows = list(session.scalars(stmt))
    more = len(rows) > queries.PAGE
    return page(request, "batches.html", {
        **scope.context(), "nav": "batches", "batches": rows[:queries.PAGE],
        "next_cursor": rows[queries.PAGE - 1].id if more else None,
    })
