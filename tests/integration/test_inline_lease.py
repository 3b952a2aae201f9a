"""An inline chunk's row locks are its lease: a worker that hangs loses them, not an attempt."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.errors import IdleInTransactionSessionTimeout
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from app import jobs
from app.config import Settings, get_settings
from app.jobs import manage, pending_publish
from app.jobs.keys import ensure_tenant
from app.store.db import get_engine, session_scope
from app.store.models import Job
from tests.integration.conftest import auth
from tests.integration.test_jobs_api import submit_and_wait
from workers import tasks

pytestmark = pytest.mark.integration


def unpublished_job(text_: str) -> int:
    """A queued encode job that no worker is told about, so none can race this test."""
    with session_scope() as s:
        tenant = ensure_tenant(s, "inline-lease").id
        job, _ = jobs.submit(s, tenant_id=tenant, kind="encode", params={"text": text_},
                             actor="test")
        s.info.pop(pending_publish.PENDING, None)  # no publish after commit
        s.info.pop(pending_publish.FAST, None)
        return job.id


def test_hung_inline_chunk_is_cut_off_at_the_lease(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "lease_seconds", 1.0)
    # Unpublished, the job would still be republished by the relay after requeue_after.
    monkeypatch.setattr(get_settings(), "requeue_after", 600)
    job_id = unpublished_job("hung")
    with pytest.raises(DBAPIError, match="idle-in-transaction timeout"), session_scope() as s:
        inline, claimed = jobs.lock_queued(s, [job_id], worker="hung-worker")
        assert [j.id for j in inline] == [job_id] and claimed == []
        # The lock query set the lease as this transaction's idle timeout.
        assert s.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "1s"
        time.sleep(2.5)  # the worker "hangs" past its lease, holding the row lock
        s.execute(text("SELECT 1"))  # PostgreSQL has ended the session by now
    # One connection throughout, so the last SHOW asks the connection the lock ran on.
    with get_engine().connect() as conn, Session(bind=conn) as s:
        job = s.get(Job, job_id)
        assert job is not None
        # Nothing was written: the job is queued again, with no attempt spent.
        assert (job.status, job.attempt, job.worker) == ("queued", 0, None)
        # And it can be taken at once: the lock went with the session.
        inline, _ = jobs.lock_queued(s, [job_id], worker="next-worker")
        assert [j.id for j in inline] == [job_id]
        backend = s.execute(text("SELECT pg_backend_pid()")).scalar()
        # The timeout belonged to that transaction only: gone after it commits (a
        # rollback would undo even a session-wide setting made inside it).
        s.commit()
        assert s.execute(text("SELECT pg_backend_pid()")).scalar() == backend
        assert s.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "0"


def test_cancel_waits_for_a_busy_worker_then_says_409(
    api: TestClient, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manage, "CANCEL_LOCK_WAIT", "300ms")
    job_id = unpublished_job("busy")
    with session_scope() as worker:
        inline, _ = jobs.lock_queued(worker, [job_id], worker="busy-worker")
        assert [j.id for j in inline] == [job_id]
        busy = api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(admin_key))
        assert busy.status_code == 409, busy.text
        assert busy.headers["Retry-After"] == "1"
        assert "a worker is finishing" in busy.json()["error"]["message"]
        worker.rollback()  # the worker lets go without finishing
    cancelled = api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(admin_key))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"


def test_chunk_cut_off_at_the_lease_runs_again_claimed_first(
    api: TestClient, admin_key: str, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker task whose inline chunk the lease cut off retries it, claiming first."""
    monkeypatch.setattr(get_settings(), "lease_seconds", 1.0)
    # The relay must not rescue the job: only the task's own retry may.
    monkeypatch.setattr(get_settings(), "requeue_after", 600)
    hung: list[int] = []
    real_compute = tasks.compute

    def compute_hanging_once(job: jobs.LockedJob) -> jobs.Outcome:
        if not hung:
            hung.append(job.id)
            time.sleep(2.5)  # inside the inline chunk's transaction, past its lease
        return real_compute(job)

    monkeypatch.setattr(tasks, "compute", compute_hanging_once)
    claim_first = record_claim_first(monkeypatch)
    done = submit_and_wait(api, admin_key, {"kind": "encode", "params": {"text": "hung once"}})
    assert done["status"] == "succeeded" and hung == [done["id"]]
    assert claim_first == [False, True]  # inline first; the retry claims before computing
    # The cut-off run wrote nothing and spent no attempt; the rerun claimed it first.
    assert done["attempt"] == 1
    trail = api.get(f"/v1/jobs/{done['id']}/audit", headers=auth(admin_key)).json()
    assert [e["type"] for e in trail["events"]] == ["submitted", "started", "succeeded"]


def test_a_session_the_server_ended_is_retried_as_a_lost_connection(
    api: TestClient, admin_key: str, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way the lease's cut-off can arrive: PostgreSQL's FATAL read first, an
    InternalError (IdleInTransactionSessionTimeout) on a closed connection."""
    monkeypatch.setattr(get_settings(), "requeue_after", 600)  # no rescue by the relay
    ended = DBAPIError.instance(
        "SELECT 1", None, IdleInTransactionSessionTimeout("terminating connection due to "
                                                          "idle-in-transaction timeout"),
        psycopg.Error, connection_invalidated=True)
    assert not isinstance(ended, OperationalError)  # not what autoretry_for names
    claim_first = record_claim_first(monkeypatch, first_raises=ended)
    job = api.post("/v1/jobs", json={"kind": "encode", "params": {"text": "ended"}},
                   headers=auth(admin_key)).json()
    for _ in range(3):  # the retry's backoff is under a second; a failed task never comes
        job = api.get(f"/v1/jobs/{job['id']}", params={"wait": 10},
                      headers=auth(admin_key)).json()
        if job["status"] == "succeeded":
            break
    assert job["status"] == "succeeded" and claim_first == [False, True]


def record_claim_first(monkeypatch: pytest.MonkeyPatch, first_raises: Exception | None = None
                       ) -> list[bool]:
    """The claim_first flag of every chunk of jobs made from now on that the test worker
    runs; if first_raises, the first run raises it instead of running. (Earlier tests'
    jobs, e.g. an unpublished one the relay sends late, are run but not recorded.)"""
    claim_first: list[bool] = []
    real_execute = tasks.execute_chunk
    # Chunks are what is recorded: the fast lane must run its jobs as chunks, not from
    # their messages (which compute before locking anything: test_fresh_lane.py).
    monkeypatch.setattr(tasks, "run_fresh", lambda *args, **kwargs: False)
    with session_scope() as s:
        floor = s.execute(text("SELECT coalesce(max(id), 0) FROM jobs")).scalar_one()

    def execute_recorded(ids: Sequence[int], **kw: Any) -> int:
        if min(ids) <= floor:
            return real_execute(ids, **kw)
        claim_first.append(kw["claim_first"])
        if first_raises is not None and len(claim_first) == 1:
            raise first_raises
        return real_execute(ids, **kw)

    monkeypatch.setattr(tasks, "execute_chunk", execute_recorded)
    return claim_first
