"""HTTP request and response schemas (params of each kind are validated by app.core)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from app.core.status import JobStatus
from app.jobs.documents import BatchRead, JobError, JobRead
from app.jobs.submission import KIND_MAX, IdempotencyKey, JobCreate, Label, Priority

__all__ = ["ERRORS", "KIND_MAX", "BatchCreated", "BatchRead", "IdempotencyKey", "JobCreate",
           "JobError", "JobRead", "Label", "Priority", "Status"]

Kind = Literal["encode", "enumerate", "evaluate"]
#: A job's status: the state machine's own enum (app/core/status.py).
Status = JobStatus


class JobsRead(BaseModel):
    """A page of jobs; pass next_cursor as cursor for the next page."""

    data: list[JobRead]
    count: int
    next_cursor: str | None = None


class AuditEventRead(BaseModel):
    """One link of a job's audit chain."""

    seq: int
    type: str
    actor: str
    at: datetime
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditRead(BaseModel):
    """A job's audit trail and whether its chain verifies."""

    job_id: int
    verified: bool
    broken_seq: int | None = None
    reason: str | None = None
    events: list[AuditEventRead]


class DecisionRead(BaseModel):
    """The governor decision of an evaluate job."""

    job_id: int
    decision: str
    stop_reason: str | None
    cycles_evaluated: int
    similarity: float
    risk: float
    composite_quality: float
    remaining_budget: float


class ErrorDetail(BaseModel):
    """code, message and details of an error."""

    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """Every error response: {"error": {...}}."""

    error: ErrorDetail


#: The error responses every route documents.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


class BatchCreated(BaseModel):
    """The outcome of an upload."""

    id: int
    lines: int
    accepted: int
    rejected: int
    rejected_lines: list[dict[str, Any]]
    rejected_truncated: bool
