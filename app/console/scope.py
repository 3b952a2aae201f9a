"""What a console request may see (its tenants), and the job filters of its query string."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Path
from sqlalchemy.orm import Session

from app.console import queries
from app.console.queries import JobQuery
from app.console.sessions import Login
from app.store.models import PRIORITY_NAMES

#: What the search box can search in, as (form value, label).
SEARCH_FIELDS = [("ref", "ref"), ("id", "job id"), ("idempotency_key", "idempotency key"),
                 ("error", "error text"), ("params", "params")]
#: Longest search text taken from a form.
MAX_Q = 200
#: A job or batch id in a path (PostgreSQL's bigint range; larger ones get 422).
IdPath = Annotated[int, Path(ge=1, le=2**63 - 1)]


class NotFound(Exception):
    """Not there, or not this login's to see: the same 404 either way."""


@dataclass(slots=True)
class Scope:
    """The tenants a page shows: one for a tenant key; for an admin, all or the one picked."""

    login: Login
    #: the admin's chosen tenant, by name (None: every tenant)
    tenant: str | None
    #: the tenants' ids to filter by; None means every tenant (an admin's default)
    tenant_ids: list[int] | None
    #: every tenant, for an admin's picker (empty for a tenant key)
    tenants: list[tuple[int, str]]

    @property
    def count_ids(self) -> list[int]:
        """The tenant ids the overview counts over (always a list: its indexes lead with it)."""
        return self.tenant_ids if self.tenant_ids is not None else [i for i, _ in self.tenants]

    def may_see(self, tenant_id: int) -> bool:
        """Whether a row of this tenant is visible here."""
        return self.login.principal.is_admin or tenant_id == self.login.principal.tenant_id

    def context(self) -> dict[str, object]:
        """What every page's template needs about the login and its tenants."""
        return {"login": self.login, "tenant": self.tenant, "tenants": self.tenants,
                "tenant_names": dict(self.tenants), "priorities": PRIORITY_NAMES}


def scope_of(session: Session, login: Login, tenant: str | None) -> Scope:
    """The scope of this login; a tenant key's own tenant whatever the query string says."""
    principal = login.principal
    if not principal.is_admin:
        return Scope(login, None, [principal.tenant_id], [])
    everyone = queries.tenants(session)
    if not tenant:
        return Scope(login, None, None, everyone)
    return Scope(login, tenant, [i for i, name in everyone if name == tenant], everyone)


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() and 0 < int(value) < 2**63 else None


def _moment(value: str | None) -> datetime | None:
    """A datetime-local field's value (taken as UTC), or None if empty or malformed."""
    try:
        at = datetime.fromisoformat((value or "").strip())
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def job_query(params: Mapping[str, str]) -> JobQuery:
    """The job filters of a query string or form; values that make no sense are dropped."""
    status, kind = params.get("status"), params.get("kind")
    field = params.get("field", "ref")
    return JobQuery(
        status=status if status in queries.STATUSES else None,
        kind=kind if kind in queries.kinds() else None,
        batch_id=_int(params.get("batch")),
        created_after=_moment(params.get("created_after")),
        created_before=_moment(params.get("created_before")),
        field=field if field in dict(SEARCH_FIELDS) else "ref",
        q=(params.get("q") or "")[:MAX_Q],
        cursor=_int(params.get("cursor")),
    )


def query_fields(query: JobQuery, tenant: str | None) -> list[tuple[str, str]]:
    """The filters as form fields (no cursor): for links and for hidden inputs."""
    values = [("field", query.field if query.q else ""), ("q", query.q),
              ("status", query.status or ""), ("kind", query.kind or ""),
              ("batch", str(query.batch_id or "")), ("tenant", tenant or ""),
              ("created_after", _local(query.created_after)),
              ("created_before", _local(query.created_before))]
    return [(k, v) for k, v in values if v]


def query_string(query: JobQuery, tenant: str | None) -> str:
    """The filters as a query string."""
    return urlencode(query_fields(query, tenant))


def _local(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if at else ""


def describe(query: JobQuery, tenant: str | None) -> str:
    """The filters in words, for a confirmation."""
    parts = [f"{k} = {v}" for k, v in query_fields(query, tenant) if k != "field"]
    if query.q:
        parts = [p for p in parts if not p.startswith("q =")] + [f"{query.field} ~ {query.q!r}"]
    return ", ".join(parts) or "every dead job you can see"
