"""Retention: finished jobs past it go with everything of theirs; batches go whole."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app import jobs
from app.config import get_settings
from app.store.db import get_engine, session_scope
from tests.faults.stack import batch_job_ids, sql_count, wait_for
from tests.integration.conftest import auth
from tests.integration.test_batches import NDJSON, ndjson, wait_done
from tests.integration.test_jobs_api import submit_and_wait
from workers import relay

# Every test here needs the test worker and the relay running.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

ENCODE = {"kind": "encode", "params": {"text": "kept for a while"}}


EVALUATE = {"kind": "evaluate", "params": {"cycles": [{
    "left": {"text": "The bridge is safe to open.", "confidence": 0.9},
    "right": {"text": "The bridge is safe to open today.", "confidence": 0.8}}]}}


def single(api: TestClient, key: str, body: dict[str, Any] = ENCODE) -> int:
    done = submit_and_wait(api, key, body)
    assert done["status"] == "succeeded"
    return int(done["id"])


def batch(api: TestClient, key: str, n: int) -> tuple[int, list[int]]:
    made = api.post("/v1/batches", content=ndjson([ENCODE] * n),
                    headers={**auth(key), **NDJSON}).json()
    wait_done(api, key, made["id"])
    return made["id"], batch_job_ids(get_engine(), made["id"])


def age(days: int, job_ids: list[int], batch_id: int | None = None) -> None:
    """Make these jobs (and the batch) look finished `days` ago.

    Their whole lives move back, so what other tests read of them (the latency metrics
    sum finished_at - created_at) stays as it was.
    """
    with session_scope() as s:
        s.execute(text("UPDATE jobs SET created_at = created_at - make_interval(days => :d), "
                       "finished_at = finished_at - make_interval(days => :d) "
                       "WHERE id = ANY(:ids)"), {"d": days, "ids": job_ids})
        if batch_id is not None:
            s.execute(text("UPDATE batches SET finished_at = now() - make_interval(days => :d) "
                           "WHERE id = :b"), {"d": days, "b": batch_id})


def left(table: str, column: str, ids: list[int]) -> int:
    return sql_count(get_engine(), f"SELECT count(*) FROM {table} WHERE {column} = ANY(:ids)",
                     ids=ids)


def test_prune_takes_old_jobs_and_finished_batches_whole(api: TestClient, key_a: str) -> None:
    old_single, new_single = single(api, key_a), single(api, key_a)
    old_evaluate = single(api, key_a, EVALUATE)
    old_batch, old_batch_jobs = batch(api, key_a, 3)
    live_batch, live_batch_jobs = batch(api, key_a, 3)
    open_batch, open_batch_jobs = batch(api, key_a, 2)
    age(10, [old_single, old_evaluate])
    age(10, old_batch_jobs, old_batch)
    # A batch whose jobs are old but which itself did not finish before the cutoff
    # (as if one of its jobs were still running): none of its jobs may go.
    age(10, live_batch_jobs)
    # And one not finished at all (finished_at NULL, as while a job of it still runs).
    age(10, open_batch_jobs)
    with session_scope() as s:
        s.execute(text("UPDATE batches SET finished_at = NULL WHERE id = :b"), {"b": open_batch})
    assert left("decisions", "job_id", [old_evaluate]) == 1

    with session_scope() as s:
        pruned = jobs.prune(s, older_than_days=7)

    gone = [old_single, old_evaluate, *old_batch_jobs]
    kept = [new_single, *live_batch_jobs, *open_batch_jobs]
    assert pruned == len(gone)
    assert left("decisions", "job_id", [old_evaluate]) == 0
    for table, column in (("jobs", "id"), ("results", "job_id"), ("audit_events", "job_id")):
        assert left(table, column, gone) == 0, table
    assert left("jobs", "id", kept) == left("results", "job_id", kept) == len(kept)
    # submitted, started and succeeded of every kept job
    assert left("audit_events", "job_id", kept) == 3 * len(kept)
    assert api.get(f"/v1/jobs/{old_single}", headers=auth(key_a)).status_code == 404
    assert api.get(f"/v1/batches/{old_batch}", headers=auth(key_a)).status_code == 404
    live = api.get(f"/v1/batches/{live_batch}", headers=auth(key_a)).json()
    assert live["counts"]["succeeded"] == 3 == left("jobs", "id", live_batch_jobs)
    assert api.get(f"/v1/batches/{open_batch}", headers=auth(key_a)).status_code == 200
    # The chains of what is kept still verify.
    assert api.get(f"/v1/jobs/{new_single}/audit", headers=auth(key_a)).json()["verified"]


def test_relay_prunes_by_retention_days(
    api: TestClient, key_a: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retention_days setting (BABELQ_RETENTION_DAYS) reaches the relay's pass; 0
    keeps everything."""
    old = single(api, key_a)
    age(10, [old])
    monkeypatch.setattr(get_settings(), "retention_days", 0)
    assert relay.relay_pass("test-relay").pruned == 0
    assert left("jobs", "id", [old]) == 1
    monkeypatch.setattr(get_settings(), "retention_days", 7)
    # The suite's own relay thread may prune it first: either way, a relay pass did.
    relay.relay_pass("test-relay")
    assert left("jobs", "id", [old]) == left("results", "job_id", [old]) == 0


def blocked_on_a_lock(pid: int) -> bool:
    """Whether this backend waits for a lock another transaction holds."""
    return bool(sql_count(get_engine(), "SELECT count(*) FROM pg_locks WHERE pid = :p "
                                        "AND NOT granted", p=pid))


def test_a_retried_job_is_never_pruned(api: TestClient, key_a: str) -> None:
    # A manual retry of an old cancelled job, not yet committed, races the prune: the job
    # the retry answers "queued" for must still be there, with its whole audit trail.
    r = api.post("/v1/jobs", json=ENCODE, headers=auth(key_a))
    job_id = r.json()["id"]
    api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key_a))
    assert api.get(f"/v1/jobs/{job_id}", headers=auth(key_a)).json()["status"] in (
        "cancelled", "succeeded")
    with session_scope() as s:  # cancelled, whatever the worker managed first
        s.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = :j"), {"j": job_id})
    age(40, [job_id])
    retrying = session_scope()
    session = retrying.__enter__()
    assert jobs.retry(session, job_id, actor="race-test")
    pruned: list[int] = []
    pid: list[int] = []

    def prune() -> None:
        with session_scope() as s:
            pid.append(s.execute(text("SELECT pg_backend_pid()")).scalar_one())
            pruned.append(jobs.prune(s, older_than_days=30))

    thread = threading.Thread(target=prune)
    thread.start()
    wait_for("the prune to end or to wait on the retry's lock",
             lambda: pruned or (pid and blocked_on_a_lock(pid[0])), 30, 0.02)
    retrying.__exit__(None, None, None)  # the retry commits
    thread.join(30)
    assert left("jobs", "id", [job_id]) == 1
    trail = api.get(f"/v1/jobs/{job_id}/audit", headers=auth(key_a)).json()
    assert trail["verified"] and trail["events"][-1]["type"] == "retried", trail
