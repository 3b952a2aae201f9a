"""HTTP request and response schemas (params of each kind are validated by app.core)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from app.core.status import JobStatus
from app.jobs.submission import KIND_MAX, IdempotencyKey, JobCreate, Label, Priority
from app.store.models import PRIORITY_NAMES, Job

__all__ = ["ERRORS", "KIND_MAX", "BatchCreated", "BatchRead", "IdempotencyKey", "JobCreate",
           "Label", "Priority", "Status"]

Kind = Literal["encode", "enumerate", "evaluate"]
#: A job's status: the state machine's own enum (app/core/status.py).
Status = JobStatus


class JobError(BaseModel):
    """Why the last attempt failed."""

    type: str
    message: str
    traceback: str = ""


class JobRead(BaseModel):
    """A job as producers see it."""

    id: int
    kind: str
    status: Status
    priority: Priority
    params: dict[str, Any]
    attempt: int
    max_attempts: int
    batch_id: int | None = None
    line: int | None = None
    ref: str | None = None
    idempotency_key: str | None = None
    worker: str | None = None
    error: JobError | None = None
    result: dict[str, Any] | None = None
    result_sha256: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_after: datetime | None = None

    @classmethod
    def of(cls, job: Job | Any, result: Any = None, sha: str | None = None) -> JobRead:
        """Build from a Job (or a row with its columns as attributes) and its result."""
        return cls(
            id=job.id, kind=job.kind, status=job.status,  # type: ignore[arg-type]
            priority=PRIORITY_NAMES[job.priority],  # type: ignore[arg-type]
            params=job.params, attempt=job.attempt,
            max_attempts=job.max_attempts, batch_id=job.batch_id, line=job.line, ref=job.ref,
            idempotency_key=job.idempotency_key, worker=job.worker,
            error=JobError(**job.error) if job.error else None,
            result=result, result_sha256=sha, created_at=job.created_at,
            started_at=job.started_at, finished_at=job.finished_at, run_after=job.run_after,
        )


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


class BatchRead(BaseModel):
    """A batch's progress."""

    id: int
    total: int
    rejected: int
    counts: dict[str, int]
    done: bool
    progress: float
    jobs_per_second: float | None
    eta_seconds: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
