"""SQLAlchemy 2 typed models: the whole data model of docs/design.md."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.core.status import INITIAL, TERMINAL, JobStatus, sql_list

__all__ = ["PRIORITIES", "PRIORITY_NAMES", "TERMINAL", "ApiKey", "AuditEvent", "Base", "Batch",
           "Decision", "Job", "Result", "Tenant"]
#: Priority lanes, stored as small ints so ORDER BY priority puts high first.
PRIORITIES = {"high": 0, "normal": 1, "low": 2}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}


def _ts(*, nullable: bool = True, default_now: bool = False) -> Any:
    return mapped_column(
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if default_now else None,
    )


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Tenant(Base):
    """An organisation whose keys see only its own jobs."""

    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)


class ApiKey(Base):
    """An API key; only the sha256 of the secret is stored."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text, default="")
    prefix: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
    revoked_at: Mapped[datetime | None] = _ts()


class Batch(Base):
    """A bulk upload; its counters move in the same transactions as its jobs."""

    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    total: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    running: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    dead: Mapped[int] = mapped_column(Integer, default=0)
    cancelled: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()


class Job(Base):
    """One unit of work; only app.jobs changes its status."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # No foreign keys: checked row by row, they cost ingestion a third of its time
    # (migration 0002); only app.jobs inserts jobs, for a live tenant and batch.
    tenant_id: Mapped[int] = mapped_column(BigInteger)
    batch_id: Mapped[int | None] = mapped_column(BigInteger)
    line: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    priority: Mapped[int] = mapped_column(SmallInteger, default=1)
    #: one of JobStatus (the CHECK below); changed only by app.jobs, per TRANSITIONS
    status: Mapped[str] = mapped_column(Text, default=INITIAL.value)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    #: attempt count at the last manual retry; attempts left = max_attempts - (attempt - base)
    attempt_base: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime | None] = _ts()
    lease_until: Mapped[datetime | None] = _ts()
    published_at: Mapped[datetime | None] = _ts()
    worker: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    ref: Mapped[str | None] = mapped_column(Text)
    #: head of the job's audit chain, so appending needs no read of audit_events
    audit_seq: Mapped[int] = mapped_column(Integer, default=0)
    audit_head: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()
    updated_at: Mapped[datetime] = _ts(nullable=False, default_now=True)

    __table_args__ = (
        Index(
            "jobs_tenant_idempotency",
            "tenant_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        CheckConstraint(f"status IN {sql_list(set(JobStatus))}", name="jobs_status_valid"),
        Index("jobs_tenant_id", "tenant_id", "id"),
        Index("jobs_batch_line", "batch_id", "line"),
        Index(
            "jobs_queued",
            "priority",
            "id",
            postgresql_where=text("status = 'queued'"),
        ),
        Index("jobs_running_lease", "lease_until", postgresql_where=text("status = 'running'")),
        Index(
            "jobs_unpublished",
            "priority",
            "id",
            postgresql_where=text("status = 'queued' AND published_at IS NULL"),
        ),
    )


class Result(Base):
    """The result of a succeeded job, written once."""

    __tablename__ = "results"
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    result: Mapped[dict[str, Any]] = mapped_column(JSONB)
    result_sha256: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)


class Decision(Base):
    """The governor outcome of an evaluate job."""

    __tablename__ = "decisions"
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    decision: Mapped[str] = mapped_column(Text)
    stop_reason: Mapped[str | None] = mapped_column(Text)
    cycles_evaluated: Mapped[int] = mapped_column(Integer)
    similarity: Mapped[float] = mapped_column(Double)
    risk: Mapped[float] = mapped_column(Double)
    composite_quality: Mapped[float] = mapped_column(Double)
    remaining_budget: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)


class AuditEvent(Base):
    """One link of a job's hash chain; the database refuses UPDATE and DELETE."""

    __tablename__ = "audit_events"
    job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_type: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _ts(nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB)
    prev_hash: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(Text)
