"""Thin Celery tasks: take job ids, call app.jobs and app.core."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from celery import shared_task
from celery.signals import celeryd_after_setup, worker_process_init
from sqlalchemy.exc import DBAPIError, OperationalError

import workers.observe  # noqa: F401  (heartbeats, log format, metrics flushes)
from app import core, jobs
from app.broker import notify
from app.broker.fastlane import Fresh
from app.broker.queues import TASK_NAME
from app.broker.window import observe
from app.jobs import kinds
from app.jobs.dispatch import refill
from app.observe import tracing
from app.ops.memory import tune_gc
from app.store.db import session_scope
from workers import alive, consumers, fastlane  # noqa: F401  (worker steps: see each)
from workers.heartbeat import HEARTBEAT

log = logging.getLogger(__name__)

#: Seconds a worker keeps trying to persist finished work through a database outage.
FINISH_PATIENCE = 60.0


@celeryd_after_setup.connect
def _name_connections(sender: str, **_: Any) -> None:
    """Name this worker's database sessions (pg_stat_activity) after the worker node.

    Set before the pool forks, so every pool process's connections carry it; it shows
    which worker holds an open transaction, e.g. the row locks of an inline chunk.
    """
    os.environ["PGAPPNAME"] = f"babelq-worker {sender}"[:63]


@worker_process_init.connect
def _tune_gc(**_: Any) -> None:
    """Each pool process handles chunks of hundreds of jobs: see app.ops.memory.tune_gc."""
    tune_gc()


def compute(job: jobs.LockedJob) -> jobs.Outcome:
    """Run one locked job; an exception becomes the job's error, never the chunk's."""
    start = time.perf_counter()
    with tracing.job_span(job) as span:
        try:
            extra = kinds.extra_kind(job.kind)
            if extra is not None:
                outcome = jobs.Outcome(job, result=extra.run(job.params))
            else:
                outcome = jobs.Outcome(job, result=core.run(job.kind, job.params))
        except Exception as exc:
            outcome = jobs.Outcome(job, error=jobs.error_info(exc))
        tracing.outcome(span, outcome.error)
    outcome.seconds = time.perf_counter() - start
    return outcome


def execute_chunk(ids: Sequence[int], *, worker: str, claim_first: bool = False,
                  dispatch: int | None = None) -> int:
    """Claim, compute and persist a chunk of jobs; returns how many this worker ran.

    Cheap jobs are computed and finished inside the transaction that locks them (see
    jobs.lock_queued); the rest are claimed, computed after that commit, then finished.
    With claim_first every job is claimed first, so an attempt that kills the worker is
    counted. The message's dispatch row goes in the same transaction (app.jobs.dispatch).
    """
    computing = 0.0
    with session_scope() as session:
        inline, claimed = jobs.lock_queued(session, ids, worker=worker,
                                           inline_ok=not claim_first, dispatch=dispatch)
        started = time.perf_counter()
        with tracing.chunk_span(inline):
            done = [compute(job) for job in inline]
        computing += time.perf_counter() - started
        held = jobs.claim(session, claimed, worker=worker)
        jobs.finish(session, done, worker=worker, held=held)
    if inline:
        notify.finished([job.id for job in inline], jobs.finished_jobs(done))
    if claimed:
        with HEARTBEAT.hold(claimed), tracing.chunk_span(claimed):
            started = time.perf_counter()
            outcomes = [compute(job) for job in claimed]
            computing += time.perf_counter() - started
            _persist(outcomes, worker=worker)
        notify.finished([o.job.id for o in outcomes], jobs.finished_jobs(outcomes))
    ran = [*inline, *claimed]
    # A message carries one kind: its compute time sizes the kind's next chunks. Only the
    # computing: a chunk's fixed cost (claim, commit) would make one-job chunks look slow
    # and shrink every chunk to one job, which then keeps looking slow.
    if ran:
        observe(ran[0].kind, computing, len(ran))
    return len(ran)


def run_fresh(job_id: int, dispatch: int, fresh: Fresh, *, worker: str) -> bool:
    """Run a fast-lane job from its message: compute, then one statement (jobs.finish_fresh).

    False when that was not done and nothing was written: the job failed (its error and
    attempts are the usual path's to record), it is no longer the job its message carries,
    or tracing is on (a job's span needs its traceparent, read with the job). The caller
    then runs it with execute_chunk.
    """
    if tracing.enabled():
        return False
    job = jobs.fresh_job(job_id, fresh, worker)
    outcome = compute(job)
    if outcome.error is not None or not jobs.finish_fresh(outcome, worker=worker,
                                                          dispatch=dispatch):
        return False
    notify.finished([job_id], jobs.finished_jobs([outcome]))
    observe(job.kind, outcome.seconds, 1)
    return True


def _persist(outcomes: list[jobs.Outcome], *, worker: str) -> None:
    """Write outcomes, riding out a short database outage instead of redoing the work.

    If the database stays away longer than the lease, the relay hands the jobs out
    again and fencing discards these outcomes, so giving up here loses nothing.
    """
    delay = 0.2
    deadline = time.monotonic() + FINISH_PATIENCE
    while True:
        try:
            with session_scope() as session:
                jobs.finish(session, outcomes, worker=worker)
            return
        except OperationalError:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable while finishing %d job(s); retrying", len(outcomes))
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@shared_task(
    name=TASK_NAME,
    bind=True,
    ignore_result=True,
    acks_late=True,
    # A database outage is worth a few quick retries; anything else is the relay's job.
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=8,
)
def run_chunk(  # type: ignore[no-untyped-def]
    self, ids: list[int], claim_first: bool = False, dispatch: int | None = None
) -> int:
    """Celery entry point of a chunk message; then refills the lane's window.

    A message the broker redelivers (its worker died or was lost) or that the relay
    republished may carry a job that kills workers: its jobs are all claimed first.
    """
    worker = self.request.hostname or socket.gethostname()
    info = self.request.delivery_info or {}
    claim_first = claim_first or bool(info.get("redelivered")) or bool(self.request.retries)
    try:
        ran = execute_chunk(ids, worker=worker, claim_first=claim_first, dispatch=dispatch)
    except DBAPIError as exc:
        if isinstance(exc, OperationalError) or not exc.connection_invalidated:
            raise
        # The server ended the session (e.g. IdleInTransactionSessionTimeout, an
        # InternalError, when the lease cut off an inline chunk that hung): a lost
        # connection like any other, so retried as one (autoretry_for), claiming first.
        raise OperationalError(exc.statement, exc.params, exc.orig or exc,
                               connection_invalidated=True) from exc
    _refill(info.get("routing_key") or "encode", int(info.get("priority") or 0))
    return ran


def _refill(queue: str, priority: int) -> None:
    """Top up the windows as chunks finish, so throughput never waits for the relay."""
    try:
        refill(queue, priority)
    except Exception as exc:  # the relay fills on its next pass
        log.warning("refill after chunk failed, the relay will fill: %s", exc)
