"""SQLAlchemy 2 typed models: the whole data model of docs/design.md."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
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
    #: share of the dispatch when several tenants are backlogged in a lane (migration 0003)
    weight: Mapped[float] = mapped_column(Double, server_default=text("1"))
    #: cap on this tenant's jobs in flight (sent or running) across all workers; None: none
    max_running: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint("weight > 0", name="tenants_weight_positive"),
        CheckConstraint("max_running > 0", name="tenants_max_running_positive"),
    )


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
    #: a cancel is under way, a slice at a time: workers start none of its jobs
    cancelling: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: W3C trace context of the upload, when tracing is on
    traceparent: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()

    __table_args__ = (Index("batches_cancelling", "id", postgresql_where=text("cancelling")),)


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
    #: W3C trace context of the submission, when tracing is on
    traceparent: Mapped[str | None] = mapped_column(Text)
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
        # The oldest due job of a lane, for /metrics (migration 0006).
        Index(
            "jobs_queued_due",
            "kind",
            "priority",
            text("(coalesce(run_after, created_at))"),
            postgresql_where=text("status = 'queued'"),
        ),
        # Delayed jobs wait here until due (app.jobs.delayed), out of every relay scan.
        Index("jobs_held", "run_after", postgresql_where=text(
            "status = 'queued' AND published_at = '9999-01-01 00:00:00+00'")),
        Index(
            "jobs_unpublished",
            "priority",
            "id",
            postgresql_where=text("status = 'queued' AND published_at IS NULL"),
        ),
        # The console's (migration 0007): backlog and throughput per lane, failed jobs, refs.
        Index("jobs_console_queued", "tenant_id", "kind", "priority",
              postgresql_where=text("status = 'queued'")),
        Index("jobs_console_finished", "tenant_id", "kind", "priority", "status", "finished_at",
              postgresql_where=text("finished_at IS NOT NULL")),
        Index("jobs_console_failed", "status", "id",
              postgresql_where=text("status IN ('dead', 'cancelled')")),
        Index("jobs_console_tenant_failed", "tenant_id", "status", "id",
              postgresql_where=text("status IN ('dead', 'cancelled')")),
        Index("jobs_console_ref", "ref", postgresql_using="hash",
              postgresql_where=text("ref IS NOT NULL")),
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


class PendingJobs(Base):
    """Job ids handed to the dispatcher and not yet sent to Redis (app.jobs.dispatch)."""

    __tablename__ = "pending_jobs"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(SmallInteger)
    ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    #: len(ids), kept so counting a backlog never reads the arrays
    size: Mapped[int] = mapped_column(Integer)
    #: how many of ids (the first ones) were sent already
    taken: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)

    __table_args__ = (Index("pending_jobs_lane", "kind", "priority", "tenant_id", "id"),)


class Dispatch(Base):
    """A message sent to Redis and not yet taken by a worker (app.jobs.dispatch)."""

    __tablename__ = "dispatches"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(SmallInteger)
    ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    sent_at: Mapped[datetime] = _ts(nullable=False, default_now=True)

    __table_args__ = (Index("dispatches_sent_at", "sent_at"),)


class FairDeficit(Base):
    """Deficit round robin state of one tenant in one lane (kind, priority)."""

    __tablename__ = "fair_deficits"
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    priority: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    deficit: Mapped[float] = mapped_column(Double, server_default=text("0"))
    #: whether this tenant holds the lane's turn
    turn: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class WebhookEndpoint(Base):
    """A tenant's receiver of job and batch events; its secret is stored encrypted."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    include_batch_jobs: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    #: the whsec_ secret, sealed by app.webhooks.secrets
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)

    __table_args__ = (Index("webhook_endpoints_tenant", "tenant_id", "id"),)


class WebhookDelivery(Base):
    """One event for one endpoint: pending until delivered, or failed after a day of tries."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    batch_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    #: the last attempts: {"at", "status_code", "error", "ms"}, oldest first, bounded
    history: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    #: the body, kept when the first attempt fails, so every retry sends the same data
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    #: the last response body, at most 1 KB
    response: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
    #: when retrying stops: set at the first attempt (and again by a manual redelivery)
    retry_until: Mapped[datetime | None] = _ts()
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
    finished_at: Mapped[datetime | None] = _ts()

    __table_args__ = (
        Index("webhook_deliveries_due", "next_attempt_at",
              postgresql_where=text("status = 'pending'")),
        Index("webhook_deliveries_endpoint", "endpoint_id", "id"),
    )


class Schedule(Base):
    """A cron schedule that submits one job per fire time."""

    __tablename__ = "schedules"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    cron: Mapped[str] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text)
    #: the job each fire submits: kind, params, priority, max_attempts, ref
    job: Mapped[dict[str, Any]] = mapped_column(JSONB)
    paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    next_fire_at: Mapped[datetime] = _ts(nullable=False)
    last_fire_at: Mapped[datetime | None] = _ts()
    last_job_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="schedules_tenant_name"),
        Index("schedules_due", "next_fire_at", postgresql_where=text("NOT paused")),
    )


class ConsoleSession(Base):
    """A login to the web console: the sha256 of its cookie and the key it stands for."""

    __tablename__ = "console_sessions"
    token_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
    expires_at: Mapped[datetime] = _ts(nullable=False)


class JobCount(Base):
    """Jobs per kind, priority and status, kept by triggers on jobs (migration 0006)."""

    __tablename__ = "job_counts"
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    priority: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    status: Mapped[str] = mapped_column(Text, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


#: What each statement on jobs changed, until app.jobs.counts folds it into job_counts.
job_count_deltas = Table(
    "job_count_deltas",
    Base.metadata,
    Column("kind", Text, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("n", BigInteger, nullable=False),
)
