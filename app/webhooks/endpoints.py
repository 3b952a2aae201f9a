"""A tenant's webhook endpoints and their deliveries: create, list, delete, redeliver."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.store.models import WebhookDelivery, WebhookEndpoint
from app.webhooks import secrets
from app.webhooks.urls import check_url


def create(session: Session, *, tenant_id: int, url: str, events: Sequence[str],
           include_batch_jobs: bool = False) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret (shown once); UnsafeUrl or SecretKeyMissing if refused."""
    settings = get_settings()
    production = settings.env == "production"
    if production and not settings.webhook_secret_key:
        raise secrets.SecretKeyMissing(
            "set BABELQ_WEBHOOK_SECRET_KEY: production keeps endpoint secrets sealed")
    check_url(url, require_https=production, allow_private=settings.webhook_allow_private)
    secret = secrets.new_secret()
    endpoint = WebhookEndpoint(tenant_id=tenant_id, url=url, events=sorted(set(events)),
                               include_batch_jobs=include_batch_jobs,
                               secret=secrets.seal(secret, settings.webhook_secret_key))
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def get_all(session: Session, *, tenant_id: int) -> Sequence[WebhookEndpoint]:
    """The tenant's endpoints, oldest first."""
    return session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
                           .order_by(WebhookEndpoint.id)).all()


def get(session: Session, *, tenant_id: int, endpoint_id: int) -> WebhookEndpoint | None:
    """The tenant's endpoint of that id (None for another tenant's)."""
    found = session.get(WebhookEndpoint, endpoint_id)
    return found if found is not None and found.tenant_id == tenant_id else None


def remove(session: Session, endpoint: WebhookEndpoint) -> None:
    """Delete an endpoint with its deliveries: nothing more is sent to it."""
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id))


def deliveries(session: Session, endpoint: WebhookEndpoint, *, status: str | None = None,
               before: int | None = None, limit: int = 100) -> Sequence[WebhookDelivery]:
    """An endpoint's deliveries, newest first, optionally of one status, before an id."""
    stmt = (select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
            .order_by(WebhookDelivery.id.desc()).limit(limit))
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    if before is not None:
        stmt = stmt.where(WebhookDelivery.id < before)
    return session.scalars(stmt).all()


def redeliver(session: Session, endpoint: WebhookEndpoint, delivery_id: int
              ) -> WebhookDelivery | None:
    """Send a delivery again now, with a fresh day of retries; None if not the endpoint's."""
    found = session.get(WebhookDelivery, delivery_id)
    if found is None or found.endpoint_id != endpoint.id:
        return None
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(
        status="pending", next_attempt_at=text("now()"), retry_until=None, finished_at=None))
    session.refresh(found)
    return found


def backlog(session: Session) -> tuple[int, float]:
    """Deliveries waiting to be sent, and the age in seconds of the oldest (for metrics).

    Both come from the partial index of pending deliveries: cheap at any table size.
    """
    n, age = session.execute(text(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0) "
        "FROM webhook_deliveries WHERE status = 'pending'")).one()
    return int(n), max(float(age), 0.0)
