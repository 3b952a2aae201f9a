"""Webhook endpoints of the caller's tenant, and their deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.api.deps import MAX_ID, IdPath, PrincipalDep, SessionDep
from app.api.errors import ApiError
from app.api.routes.jobs import ERRORS
from app.jobs.keys import Principal
from app.store.models import WebhookDelivery, WebhookEndpoint
from app.webhooks import endpoints
from app.webhooks.secrets import SecretKeyMissing
from app.webhooks.urls import MAX_URL, UnsafeUrl

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

Event = Literal["job.succeeded", "job.dead", "job.cancelled", "batch.completed"]
DeliveryStatus = Literal["pending", "delivered", "failed"]


class WebhookCreate(BaseModel):
    """An endpoint to register."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=MAX_URL, description="https (http outside production)")
    events: list[Event] = Field(min_length=1, max_length=4)
    include_batch_jobs: bool = Field(
        False, description="job events for the jobs of batches too, not only single jobs")


class WebhookRead(BaseModel):
    """An endpoint as listed: never its secret."""

    id: int
    url: str
    events: list[str]
    include_batch_jobs: bool
    created_at: datetime

    @classmethod
    def of(cls, e: WebhookEndpoint) -> WebhookRead:
        """From its row."""
        return cls(id=e.id, url=e.url, events=e.events, include_batch_jobs=e.include_batch_jobs,
                   created_at=e.created_at)


class WebhookCreated(WebhookRead):
    """A new endpoint: its signing secret is in this response and nowhere else."""

    secret: str


class WebhooksRead(BaseModel):
    """The tenant's endpoints."""

    data: list[WebhookRead]
    count: int


class AttemptRead(BaseModel):
    """One attempt of a delivery."""

    at: datetime
    status_code: int | None
    error: str | None
    ms: float


class DeliveryRead(BaseModel):
    """One event for one endpoint, with its last attempts."""

    id: int
    endpoint_id: int
    event: str
    job_id: int | None
    batch_id: int | None
    status: DeliveryStatus
    attempts: int
    history: list[AttemptRead]
    response: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, d: WebhookDelivery) -> DeliveryRead:
        """From its row."""
        return cls(id=d.id, endpoint_id=d.endpoint_id, event=d.event, job_id=d.job_id,
                   batch_id=d.batch_id, status=d.status,  # type: ignore[arg-type]
                   attempts=d.attempts, history=[AttemptRead(**h) for h in d.history],
                   response=d.response,
                   next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
                   created_at=d.created_at, finished_at=d.finished_at)


class DeliveriesRead(BaseModel):
    """A page of deliveries, newest first; pass next_cursor as cursor for the next."""

    data: list[DeliveryRead]
    count: int
    next_cursor: str | None = None


def _endpoint(session: Session, principal: Principal, endpoint_id: int) -> WebhookEndpoint:
    """The tenant's endpoint, or 404 (also for another tenant's)."""
    found = endpoints.get(session, tenant_id=principal.tenant_id, endpoint_id=endpoint_id)
    if found is None:
        raise ApiError(404, f"webhook {endpoint_id} not found")
    return found


@router.post("", status_code=201, response_model=WebhookCreated, responses=ERRORS)
def create_webhook(hook_in: WebhookCreate, session: SessionDep,
                   principal: PrincipalDep) -> WebhookCreated:
    """Register an endpoint; the answer holds its secret, shown this once."""
    try:
        row, secret = endpoints.create(session, tenant_id=principal.tenant_id, url=hook_in.url,
                                       events=hook_in.events,
                                       include_batch_jobs=hook_in.include_batch_jobs)
    except UnsafeUrl as exc:
        raise ApiError(422, str(exc), [{"field": "url", "message": str(exc)}]) from None
    except SecretKeyMissing as exc:
        raise ApiError(503, str(exc)) from None
    session.commit()
    return WebhookCreated(**WebhookRead.of(row).model_dump(), secret=secret)


@router.get("", response_model=WebhooksRead, responses=ERRORS)
def read_webhooks(session: SessionDep, principal: PrincipalDep) -> WebhooksRead:
    """The tenant's endpoints."""
    data = [WebhookRead.of(e) for e in endpoints.get_all(session, tenant_id=principal.tenant_id)]
    return WebhooksRead(data=data, count=len(data))


@router.delete("/{endpoint_id}", status_code=204, responses=ERRORS)
def delete_webhook(endpoint_id: IdPath, session: SessionDep, principal: PrincipalDep) -> None:
    """Delete an endpoint and its deliveries; nothing more is sent to it."""
    endpoints.remove(session, _endpoint(session, principal, endpoint_id))
    session.commit()


@router.get("/{endpoint_id}/deliveries", response_model=DeliveriesRead, responses=ERRORS)
def read_deliveries(
    endpoint_id: IdPath,
    session: SessionDep,
    principal: PrincipalDep,
    status: DeliveryStatus | None = None,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveriesRead:
    """The endpoint's deliveries, newest first, with each one's last attempts."""
    endpoint = _endpoint(session, principal, endpoint_id)
    rows = endpoints.deliveries(session, endpoint, status=status, before=cursor, limit=limit)
    data = [DeliveryRead.of(d) for d in rows]
    more = len(rows) == limit
    return DeliveriesRead(data=data, count=len(data), next_cursor=str(rows[-1].id) if more
                          else None)


@router.post("/{endpoint_id}/deliveries/{delivery_id}/redeliver", response_model=DeliveryRead,
             responses=ERRORS)
def redeliver(endpoint_id: IdPath, delivery_id: IdPath, session: SessionDep,
              principal: PrincipalDep) -> DeliveryRead:
    """Send a delivery again now (same webhook-id), with a fresh day of retries."""
    endpoint = _endpoint(session, principal, endpoint_id)
    found = endpoints.redeliver(session, endpoint, delivery_id)
    if found is None:
        raise ApiError(404, f"delivery {delivery_id} of webhook {endpoint_id} not found")
    session.commit()
    return DeliveryRead.of(found)

