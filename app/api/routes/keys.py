"""API key management, for admin keys only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AdminDep, IdPath, SessionDep
from app.api.errors import ApiError
from app.api.schemas import ErrorBody, Label
from app.broker import notify
from app.jobs import keys

router = APIRouter(prefix="/v1/keys", tags=["keys"])

#: Tenant names: short, and safe in logs, URLs and shell commands.
TENANT_PATTERN = r"^[A-Za-z0-9_.-]+$"

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 422, 503)
}


class KeyCreate(BaseModel):
    """A key to create."""

    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1, max_length=100, pattern=TENANT_PATTERN)
    admin: bool = False
    name: Label = ""


class KeyRead(BaseModel):
    """A key as listed: never its secret."""

    id: int
    tenant: str
    name: str
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyRead):
    """A new key: the secret is in this response and nowhere else, ever."""

    key: str


@router.post("", status_code=201, response_model=KeyCreated, responses=ERRORS)
def create_key(key_in: KeyCreate, session: SessionDep, _: AdminDep) -> KeyCreated:
    """Create a key for a tenant (the tenant is created if new)."""
    row, secret = keys.create_key(session, tenant=key_in.tenant, admin=key_in.admin,
                                  name=key_in.name)
    session.commit()
    return KeyCreated(id=row.id, tenant=key_in.tenant, name=row.name, prefix=row.prefix,
                      admin=row.is_admin, created_at=row.created_at, key=secret)


@router.get("", response_model=list[KeyRead], responses=ERRORS)
def read_keys(
    session: SessionDep,
    _: AdminDep,
    tenant: Annotated[str | None, Query(max_length=100, pattern=TENANT_PATTERN)] = None,
) -> list[KeyRead]:
    """Every key, or one tenant's."""
    return [
        KeyRead(id=k.id, tenant=t, name=k.name, prefix=k.prefix, admin=k.is_admin,
                created_at=k.created_at, revoked_at=k.revoked_at)
        for k, t in keys.list_keys(session, tenant)
    ]


@router.delete("/{key_id}", status_code=204, responses=ERRORS)
def revoke_key(key_id: IdPath, session: SessionDep, _: AdminDep, request: Request) -> None:
    """Revoke a key; requests with it fail from now on."""
    if not keys.revoke_key(session, key_id):
        raise ApiError(404, f"no live key {key_id}")
    session.commit()
    request.app.state.keys.drop(key_id)  # this process at once, the others when told
    notify.key_revoked(key_id)
