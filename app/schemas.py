"""HTTP request and response schemas (params of each kind are validated by app.core)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.core.schemas import storable
from app.models import PRIORITY_NAMES, Job

Kind = Literal["encode", "enumerate", "evaluate"]
Priority = Literal["high", "normal", "low"]
#: Longest kind name a job may be submitted with (the known ones are shorter).
KIND_MAX = 64
Status = Literal["queued", "running", "succeeded", "dead", "cancelled"]


#: Free-text fields of requests (refs, names, idempotency keys): bounded and storable.
Label = Annotated[str, Field(max_length=200), AfterValidator(storable)]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(storable)]


class JobCreate(BaseModel):
    """One job to submit."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="encode, enumerate or evaluate", max_length=KIND_MAX)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
    max_attempts: int | None = Field(default=None, ge=1, le=20)
    idempotency_key: IdempotencyKey | None = None
    ref: Label | None = None
    run_at: datetime | None = Field(
        default=None, description="ISO 8601 time with zone: the job starts no earlier")
    delay: float | None = Field(default=None, ge=0, description="seconds: the same, from now")


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
