"""Recording webhook deliveries in the transaction of the state change that causes them.

One INSERT .. SELECT per event and chunk, from the ids the transition's own statement
returned joined to the tenants' endpoints; nothing at all for tenants without endpoints,
which a per-process list (refreshed every webhook_endpoint_cache_seconds) tells apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.config import get_settings

#: A job that changed: (id, tenant_id, batch_id).
Changed = tuple[int, int, int | None]

_JOB_EVENTS = text(
    "INSERT INTO webhook_deliveries (endpoint_id, tenant_id, event, job_id) "
    "SELECT e.id, e.tenant_id, :event, j.id FROM unnest(CAST(:ids AS bigint[]), "
    "CAST(:tenants AS bigint[]), CAST(:batched AS bool[])) AS j(id, tenant_id, batched) "
    "JOIN webhook_endpoints e ON e.tenant_id = j.tenant_id "
    "WHERE :event = ANY(e.events) AND (NOT j.batched OR e.include_batch_jobs)"
)
_BATCH_EVENTS = text(
    "INSERT INTO webhook_deliveries (endpoint_id, tenant_id, event, batch_id) "
    "SELECT e.id, e.tenant_id, 'batch.completed', b.id FROM unnest(CAST(:ids AS bigint[]), "
    "CAST(:tenants AS bigint[])) AS b(id, tenant_id) "
    "JOIN webhook_endpoints e ON e.tenant_id = b.tenant_id "
    "WHERE 'batch.completed' = ANY(e.events)"
)
_TENANTS = text("SELECT DISTINCT tenant_id FROM webhook_endpoints")


class _EndpointTenants:
    """Tenants that have at least one endpoint, as last read, and when that was."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tenants: frozenset[int] = frozenset()
        self.read_at = float("-inf")

    def get(self, session: Session) -> frozenset[int]:
        """The tenants, re-read when older than the cache setting."""
        with self.lock:
            if time.monotonic() - self.read_at > get_settings().webhook_endpoint_cache_seconds:
                self.tenants = frozenset(session.execute(_TENANTS).scalars())
                self.read_at = time.monotonic()
            return self.tenants


_ENDPOINT_TENANTS = _EndpointTenants()


def record_job_events(session: Session, event: str, changed: Iterable[Changed]) -> None:
    """Deliveries of `event` for these jobs, to the endpoints of their tenants that ask."""
    rows = list(changed)
    if not rows:
        return
    wanted = _ENDPOINT_TENANTS.get(session)
    rows = [r for r in rows if r[1] in wanted]
    if rows:
        session.execute(_JOB_EVENTS, {
            "event": event, "ids": [r[0] for r in rows], "tenants": [r[1] for r in rows],
            "batched": [r[2] is not None for r in rows]})


def record_batch_completed(session: Session, batches: Iterable[tuple[int, int]]) -> None:
    """batch.completed deliveries for these (batch id, tenant id) pairs."""
    rows = list(batches)
    if not rows:
        return
    wanted = _ENDPOINT_TENANTS.get(session)
    rows = [r for r in rows if r[1] in wanted]
    if rows:
        session.execute(_BATCH_EVENTS, {"ids": [r[0] for r in rows],
                                        "tenants": [r[1] for r in rows]})
