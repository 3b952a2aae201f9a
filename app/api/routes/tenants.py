"""Tenant dispatch settings (weight, max_running), for admin keys only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AdminDep, SessionDep
from app.api.errors import ApiError
from app.api.schemas import ErrorBody
from app.jobs import tenants

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 422, 503)
}

TenantName = Annotated[str, Path(pattern=tenants.TENANT_PATTERN)]


class TenantRead(BaseModel):
    """A tenant's dispatch settings, and its jobs waiting to start and running."""

    name: str
    weight: float
    max_running: int | None
    queued: int
    running: int


class TenantUpdate(BaseModel):
    """Fields to change; max_running null removes the cap."""

    model_config = ConfigDict(extra="forbid")
    weight: float | None = Field(None, gt=0, le=1_000_000)
    max_running: int | None = Field(None, ge=1, le=1_000_000_000)


def _read(share: tenants.TenantShare) -> TenantRead:
    return TenantRead(name=share.name, weight=share.weight, max_running=share.max_running,
                      queued=share.queued, running=share.running)


@router.get("", response_model=list[TenantRead], responses=ERRORS)
def read_tenants(session: SessionDep, _: AdminDep) -> list[TenantRead]:
    """Every tenant with its weight, max_running, queued and running jobs."""
    return [_read(t) for t in tenants.list_tenants(session)]


@router.patch("/{name}", response_model=TenantRead, responses=ERRORS)
def update_tenant(name: TenantName, tenant_in: TenantUpdate, session: SessionDep,
                  _: AdminDep) -> TenantRead:
    """Change a tenant's weight or max_running; the dispatcher applies it within a pass."""
    fields = tenant_in.model_fields_set
    try:
        share = tenants.set_tenant(
            session, name, weight=tenant_in.weight, max_running=tenant_in.max_running,
            unlimited="max_running" in fields and tenant_in.max_running is None)
    except tenants.UnknownTenant as exc:
        raise ApiError(404, str(exc)) from None
    session.commit()
    return _read(share)
