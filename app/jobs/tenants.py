"""Tenant dispatch settings: weight (share when backlogged) and max_running (a cap).

Read by every dispatch pass (app.jobs.dispatch), so a change takes effect within one
pass: no restart, no cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

#: Tenant names the api and the CLI accept.
TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"


class UnknownTenant(LookupError):
    """No tenant has that name."""


@dataclass(frozen=True, slots=True)
class TenantShare:
    """A tenant's dispatch settings and its jobs now queued and running."""

    name: str
    weight: float
    max_running: int | None
    queued: int
    running: int


_LIST = text(
    "SELECT t.name, t.weight, t.max_running, "
    "coalesce((SELECT sum(size - taken) FROM pending_jobs p WHERE p.tenant_id = t.id), 0) "
    "+ coalesce((SELECT sum(cardinality(ids)) FROM dispatches d WHERE d.tenant_id = t.id), 0) "
    "AS queued, coalesce(r.n, 0) AS running FROM tenants t LEFT JOIN ("
    "SELECT tenant_id, count(*) AS n FROM jobs WHERE status = 'running' GROUP BY tenant_id"
    ") r ON r.tenant_id = t.id ORDER BY t.name"
)
_SET = text(
    "UPDATE tenants SET weight = coalesce(:weight, weight), "
    "max_running = CASE WHEN :clear THEN NULL ELSE coalesce(:max_running, max_running) END "
    "WHERE name = :name RETURNING name"
)


def list_tenants(session: Session) -> list[TenantShare]:
    """Every tenant with its settings, jobs waiting for dispatch or in Redis, and running."""
    return [TenantShare(r.name, r.weight, r.max_running, int(r.queued), int(r.running))
            for r in session.execute(_LIST)]


def set_tenant(session: Session, name: str, *, weight: float | None = None,
               max_running: int | None = None, unlimited: bool = False) -> TenantShare:
    """Change a tenant's weight and/or max_running (unlimited clears the cap)."""
    if weight is not None and weight <= 0:
        raise ValueError("weight must be above 0")
    if max_running is not None and max_running < 1:
        raise ValueError("max_running must be at least 1")
    found = session.execute(_SET, {"name": name, "weight": weight, "max_running": max_running,
                                   "clear": unlimited}).first()
    if found is None:
        raise UnknownTenant(f"no tenant {name!r}")
    return next(t for t in list_tenants(session) if t.name == name)
