"""A single job's quick path: the fast lane, and the finished job handed to its waiter."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text

from app import jobs
from app.api.routes.jobs import _read
from app.broker.notify import CHANNEL
from app.config import Settings
from app.jobs import keys, pending_publish
from app.jobs.keys import ensure_tenant
from app.store.db import session_scope
from tests.integration.conftest import auth
from tests.integration.test_inline_lease import unpublished_job
from tests.integration.test_jobs_api import submit_and_wait
from workers import tasks

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

#: Seconds the sleeping jobs hold both of the test worker's pool slots.
HOLD = 6


def status(api: TestClient, key: str, job_id: int) -> str:
    """The job's status now."""
    return str(api.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["status"])


def test_the_job_row_is_committed_before_the_api_answers(api: TestClient, admin_key: str
                                                         ) -> None:
    created = api.post("/v1/jobs", json={"kind": "encode", "params": {"text": "committed"}},
                       headers=auth(admin_key))
    assert created.status_code == 201
    with session_scope() as s:  # another connection: sees only what was committed
        row = s.execute(text("SELECT kind FROM jobs WHERE id = :id"),
                        {"id": created.json()["id"]}).one()
    assert row.kind == "encode"


def test_a_single_job_runs_while_every_pool_slot_is_busy(api: TestClient, admin_key: str
                                                         ) -> None:
    """The fast lane does not queue a cheap single job behind the pool's long chunks."""
    sleepers = [api.post("/v1/jobs", json={"kind": "test_sleep", "params": {"seconds": HOLD}},
                         headers=auth(admin_key)).json()["id"] for _ in range(2)]
    deadline = time.monotonic() + 30
    while any(status(api, admin_key, s) != "running" for s in sleepers):
        assert time.monotonic() < deadline, "the sleeping jobs never started"
        time.sleep(0.05)
    job = submit_and_wait(api, admin_key, {"kind": "encode", "params": {"text": "no wait"}})
    assert job["status"] == "succeeded"
    assert [status(api, admin_key, s) for s in sleepers] == ["running", "running"]


def test_a_waiter_gets_the_finished_job_as_a_read_shows_it(api: TestClient, admin_key: str
                                                           ) -> None:
    job_id = unpublished_job("waited for")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.get, f"/v1/jobs/{job_id}", params={"wait": 30},
                              headers=auth(admin_key))
        time.sleep(0.5)  # let the long-poll start waiting (it passes either way)
        assert tasks.execute_chunk([job_id], worker="test-waiter") == 1
        waited: dict[str, Any] = waiting.result().json()
    assert waited["status"] == "succeeded" and waited["result"]["codec"] == "babel"
    assert waited == from_database(admin_key, job_id)


def test_a_just_finished_job_reads_as_stored_and_only_for_its_tenant(
    api: TestClient, key_a: str, key_b: str
) -> None:
    job = submit_and_wait(api, key_a, {"kind": "encode", "params": {"text": "just done"}})
    wait = {"wait": 10}
    again = api.get(f"/v1/jobs/{job['id']}", params=wait, headers=auth(key_a))
    other = api.get(f"/v1/jobs/{job['id']}", params=wait, headers=auth(key_b))
    assert job["status"] == "succeeded"
    assert job == again.json() == from_database(key_a, job["id"])
    assert other.status_code == 404


def from_database(key: str, job_id: int) -> dict[str, Any]:
    """The job as a read of PostgreSQL shows it (not an announcement kept by the api)."""
    with session_scope() as s:
        principal = keys.authenticate(s, key)
    assert principal is not None
    return _read(principal, job_id)[0].model_dump(mode="json")


def test_a_long_poll_after_submission_sees_a_cancel_made_meanwhile(
    api: TestClient, key_a: str, key_b: str
) -> None:
    """The api remembers a job it just stored, so the long-poll that follows needs no read
    first; a cancel made meanwhile is still seen (announced, or at the poll fallback)."""
    created = api.post("/v1/jobs", json={"kind": "encode", "params": {"text": "remembered"},
                                         "delay": 600}, headers=auth(key_a))
    assert created.status_code == 201
    job_id = created.json()["id"]
    assert api.app.state.waiters.submitted.get(job_id) is not None  # type: ignore[attr-defined]
    cancelled = api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key_a))
    assert cancelled.json()["status"] == "cancelled"
    started = time.monotonic()
    reply = api.get(f"/v1/jobs/{job_id}", params={"wait": 20}, headers=auth(key_a))
    assert reply.json()["status"] == "cancelled"
    assert time.monotonic() - started < 10  # seen at the fallback read, not at the deadline
    # another tenant's key is refused as ever, remembered or not
    assert api.get(f"/v1/jobs/{job_id}", params={"wait": 1},
                   headers=auth(key_b)).status_code == 404


def test_a_cancel_answers_the_waiting_long_polls_at_once(
    api: TestClient, key_a: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel is announced like a finish: a long-poll waiting on the job answers with
    it then, not at its next fallback read (made longer than the wait here)."""
    from app.api.routes import jobs as job_routes

    monkeypatch.setattr(job_routes, "POLL_FALLBACK", 60.0)
    created = api.post("/v1/jobs", json={"kind": "encode", "params": {"text": "to cancel"},
                                         "delay": 600}, headers=auth(key_a))
    job_id = created.json()["id"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.get, f"/v1/jobs/{job_id}", params={"wait": 15},
                              headers=auth(key_a))
        time.sleep(0.5)  # let the long-poll start waiting (it passes either way)
        cancelled = api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key_a))
        assert cancelled.json()["status"] == "cancelled"
        at = time.monotonic()
        assert waiting.result().json()["status"] == "cancelled"
    # Unannounced, it would be read at the long-poll's deadline, 15 s in.
    assert time.monotonic() - at < 10


def unpublished(params: dict[str, Any]) -> int:
    """A queued encode job with these params, that no worker is told about."""
    with session_scope() as s:
        tenant = ensure_tenant(s, "inline-lease").id
        job, _ = jobs.submit(s, tenant_id=tenant, kind="encode", params=params, actor="test")
        s.info.pop(pending_publish.PENDING, None)
        s.info.pop(pending_publish.FAST, None)
        return job.id


def test_only_small_jobs_are_announced_whole(api: TestClient, admin_key: str,
                                             settings: Settings) -> None:
    """Every api process keeps the jobs announced whole for a few seconds: a job of 16 KB
    or more (an hd encode of 20,000 characters here) is announced by id, and its
    long-poll reads it from PostgreSQL instead."""
    small = unpublished_job("small enough")
    large = unpublished({"text": "word " * 4000, "codec": "hd"})
    with redis.Redis.from_url(settings.redis_url or "") as client, client.pubsub() as sub:
        sub.subscribe(CHANNEL)
        assert sub.get_message(timeout=5) is not None  # subscribed
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(api.get, f"/v1/jobs/{large}", params={"wait": 30},
                                  headers=auth(admin_key))
            time.sleep(0.5)  # let the long-poll start waiting (it passes either way)
            assert tasks.execute_chunk([small], worker="test-announce") == 1
            assert tasks.execute_chunk([large], worker="test-announce") == 1
            waited: dict[str, Any] = waiting.result().json()
        announced: dict[int, list[int]] = {}
        while len(announced) < 2:
            message = sub.get_message(timeout=5)
            assert message is not None, f"announcements seen: {announced}"
            body = orjson.loads(message["data"])
            if isinstance(body, dict) and set(body["ids"]) & {small, large}:
                announced[body["ids"][0]] = [job["id"] for job in body["jobs"]]
            elif isinstance(body, list) and set(body) & {small, large}:
                announced[body[0]] = []
    assert announced == {small: [small], large: []}
    assert waited["status"] == "succeeded" and waited["result"]["codec"] == "hd"
    assert waited == from_database(admin_key, large)
