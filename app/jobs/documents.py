"""Jobs and batches as producers read them: GET /v1/jobs/{id}, GET /v1/batches/{id}, and
the data of the webhook events about them (one document, so the two never drift)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from app.core.status import JobStatus
from app.jobs.submission import Priority
from app.store.models import PRIORITY_NAMES, Batch, Job

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


def batch_read(batch: Batch) -> BatchRead:
    """Counts, progress, rate and ETA of a batch."""
    counts = {s.value: getattr(batch, s.value) for s in JobStatus}
    finished = counts["succeeded"] + counts["dead"] + counts["cancelled"]
    done = batch.total > 0 and finished == batch.total
    rate = eta = None
    if batch.started_at is not None and finished:
        end = batch.finished_at if done and batch.finished_at else datetime.now(UTC)
        elapsed = max((end - batch.started_at).total_seconds(), 1e-3)
        rate = finished / elapsed
        eta = 0.0 if done else (batch.total - finished) / rate
    return BatchRead(
        id=batch.id, total=batch.total, rejected=batch.rejected, counts=counts, done=done,
        progress=finished / batch.total if batch.total else 0.0, jobs_per_second=rate,
        eta_seconds=eta, created_at=batch.created_at, started_at=batch.started_at,
        finished_at=batch.finished_at if done else None,
    )
