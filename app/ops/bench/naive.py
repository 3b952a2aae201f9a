"""The naive baseline: how most teams run jobs on Celery and an ORM today.

One ORM INSERT and commit plus one `apply_async` per job on the producer side, one
Celery task per job that loads its row, computes, and writes its status and result
with one session commit. Same Redis and PostgreSQL as Babel Queue, its own queue
and its own tables (`naive_jobs`, `naive_results`): the naive code writes job status
directly, which only app.jobs may do on the real `jobs` table, and it keeps no audit
trail or batch counters, so it does strictly less work per job than we do.

Run its workers with `celery -A app.ops.bench.naive worker -Q babelq_naive -c 2`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Celery
from sqlalchemy import BigInteger, DateTime, Engine, ForeignKey, Identity, Text, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from app import core
from app.config import get_settings
from app.store.db import engine_for

#: The baseline's own broker queue, so it never meets Babel Queue's messages.
NAIVE_QUEUE = "babelq_naive"
TASK_NAME = "babelq_naive.run_job"
#: The single-job latency baseline: a plain task that stores one durable result row.
ENCODE_ONE = "babelq_naive.encode_one"


class NaiveBase(DeclarativeBase):
    """Metadata of the baseline's tables only (never in alembic: the bench creates them)."""


class NaiveJob(NaiveBase):
    """A job row as a typical ORM app keeps it."""

    __tablename__ = "naive_jobs"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, default="queued")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class NaiveResult(NaiveBase):
    """A job's result, one row per job."""

    __tablename__ = "naive_results"
    job_id: Mapped[int] = mapped_column(ForeignKey("naive_jobs.id"), primary_key=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSONB)


class NaiveOutput(NaiveBase):
    """The result row of one latency sample, keyed by the client's own key."""

    __tablename__ = "naive_outputs"
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSONB)


naive_app = Celery("babelq_naive")


def configure(redis_url: str | None) -> Celery:
    """Celery defaults (that is the point), one queue, no result backend."""
    naive_app.conf.update(
        broker_url=redis_url,
        broker_connection_retry_on_startup=True,
        task_default_queue=NAIVE_QUEUE,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    return naive_app


configure(get_settings().redis_url)


def create_tables(engine: Engine) -> None:
    """Create the baseline's tables, empty."""
    NaiveBase.metadata.drop_all(engine)
    NaiveBase.metadata.create_all(engine)


def _engine() -> Engine:
    url = get_settings().database_url
    if not url:
        raise RuntimeError("BABELQ_DATABASE_URL is not set")
    # Created lazily, so each prefork child opens its own connections after the fork.
    return engine_for(url)


@naive_app.task(name=TASK_NAME, ignore_result=True)
def run_job(job_id: int) -> None:
    """Load the job, compute it, write status and result in one commit."""
    with Session(_engine()) as session:
        job = session.get(NaiveJob, job_id)
        if job is None:
            return
        result = core.run(job.kind, job.params)
        job.status = "succeeded"
        job.finished_at = datetime.now(UTC)
        session.add(NaiveResult(job_id=job.id, result=result))
        session.commit()


@naive_app.task(name=ENCODE_ONE, ignore_result=True)
def encode_one(key: str, text: str) -> None:
    """Compute one encode and commit its result row: the bare Celery task of a latency sample."""
    with Session(_engine()) as session:
        session.add(NaiveOutput(key=key, result=core.run("encode", {"text": text})))
        session.commit()


def submit(session: Session, kind: str, params: dict[str, Any]) -> int:
    """The naive enqueue: INSERT and commit the row, then one apply_async for it."""
    job = NaiveJob(kind=kind, params=params)
    session.add(job)
    session.commit()
    run_job.apply_async(args=[job.id], queue=NAIVE_QUEUE)
    return job.id


def ingest(engine: Engine, texts: list[str]) -> None:
    """Submit one encode job per text, one by one, as a naive producer does."""
    # expire_on_commit=False spares a SELECT per job: the kindest naive producer.
    make = sessionmaker(engine, expire_on_commit=False)
    with make() as session:
        for text in texts:
            submit(session, "encode", {"text": text})


def succeeded(engine: Engine, min_id: int = 0) -> int:
    """How many baseline jobs with id above min_id succeeded (status and result written)."""
    with Session(engine) as session:
        stmt = select(func.count()).select_from(NaiveJob).join(
            NaiveResult, NaiveResult.job_id == NaiveJob.id
        ).where(NaiveJob.status == "succeeded", NaiveJob.id > min_id)
        return int(session.scalar(stmt) or 0)


def max_id(engine: Engine) -> int:
    """The newest baseline job id (0 when there is none)."""
    with Session(engine) as session:
        return int(session.scalar(select(func.coalesce(func.max(NaiveJob.id), 0))) or 0)
