"""A fast-lane job run from its message: computed, then finished by one statement, once.

The message carries the job as the api stored it (app.broker.fastlane.Fresh). The lane
computes it before reading anything, and one statement writes the outcome only if the
row is still that job (tasks.run_fresh); otherwise nothing is written and the lane runs
the job the usual way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import redis
from sqlalchemy import text

from app import jobs
from app.broker import fastlane, window
from app.broker.fastlane import Fresh
from app.broker.window import Sent
from app.config import Settings, get_settings
from app.jobs import audit, manage, pending_publish
from app.jobs.keys import ensure_tenant
from app.store.db import get_engine, session_scope
from app.webhooks import secrets
from workers import tasks

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("celery_app")]

#: The encode result of "fresh" (spec: codec babel), as the usual path stores it.
TEXT = "fresh"


@pytest.fixture(autouse=True)
def no_relay_resend(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay must not send these unsent jobs while a test holds them."""
    monkeypatch.setattr(get_settings(), "requeue_after", 600)


def unsent(text_: str, tenant: str = "fresh-lane") -> tuple[int, int, Fresh]:
    """A job stored as the api stores it, its fast message kept back: (id, dispatch, fresh)."""
    with session_scope() as s:
        tenant_id = ensure_tenant(s, tenant).id
        job, _ = jobs.submit(s, tenant_id=tenant_id, kind="encode", params={"text": text_},
                             actor="test")
        (sent,) = s.info.pop(pending_publish.FAST)
        s.info.pop(pending_publish.PENDING, None)
    assert sent.fresh is not None and sent.ids == [job.id]
    return job.id, sent.dispatch, sent.fresh


def stored(job_id: int) -> dict[str, object]:
    """Status, result count, events, the message's dispatch row, and the chain's verdict."""
    with session_scope() as s:
        row = s.execute(text(
            "SELECT j.status, j.attempt, (SELECT count(*) FROM results r WHERE r.job_id = j.id) "
            "AS results, (SELECT array_agg(event_type ORDER BY seq) FROM audit_events e "
            "WHERE e.job_id = j.id) AS events FROM jobs j WHERE j.id = :id"), {"id": job_id}).one()
        dispatches = s.execute(text("SELECT count(*) FROM dispatches WHERE :id = ANY(ids)"),
                               {"id": job_id}).scalar_one()
        verified = audit.verify_job(s, job_id).ok
    return {"status": row.status, "attempt": row.attempt, "results": row.results,
            "events": row.events, "dispatches": dispatches, "verified": verified}


def test_a_fresh_job_is_finished_once_from_its_message(settings: Settings) -> None:
    job_id, dispatch, fresh = unsent(TEXT)
    assert tasks.run_fresh(job_id, dispatch, fresh, worker="fresh-test") is True
    assert stored(job_id) == {"status": "succeeded", "attempt": 1, "results": 1,
                              "events": ["submitted", "started", "succeeded"],
                              "dispatches": 0, "verified": True}
    # The same message again (a duplicate): nothing more is written.
    assert tasks.run_fresh(job_id, dispatch, fresh, worker="fresh-test") is False
    assert stored(job_id)["results"] == 1 and len(stored(job_id)["events"]) == 3  # type: ignore[arg-type]


def test_the_result_is_the_one_the_usual_path_stores(settings: Settings) -> None:
    fresh_id, dispatch, fresh = unsent(TEXT)
    usual_id, usual_dispatch, _ = unsent(TEXT)
    assert tasks.run_fresh(fresh_id, dispatch, fresh, worker="fresh-test")
    assert tasks.execute_chunk([usual_id], worker="usual-test", dispatch=usual_dispatch) == 1
    with session_scope() as s:
        results = dict(s.execute(text(
            "SELECT job_id, result_sha256 FROM results WHERE job_id IN (:a, :b)"),
            {"a": fresh_id, "b": usual_id}).all())
    assert results[fresh_id] == results[usual_id]


def test_a_job_changed_since_its_message_is_left_to_the_usual_path(settings: Settings) -> None:
    cancelled, dispatch, fresh = unsent("cancelled first")
    with session_scope() as s:
        assert manage.cancel(s, cancelled, actor="test")
    assert tasks.run_fresh(cancelled, dispatch, fresh, worker="fresh-test") is False
    assert stored(cancelled)["status"] == "cancelled" and stored(cancelled)["results"] == 0
    # A message whose params are not the stored ones writes nothing either.
    other, other_dispatch, other_fresh = unsent("the stored text")
    forged = replace(other_fresh, params={"text": "another text"})
    assert tasks.run_fresh(other, other_dispatch, forged, worker="fresh-test") is False
    assert stored(other)["status"] == "queued" and stored(other)["dispatches"] == 1


def test_a_job_another_worker_holds_is_skipped_not_waited_for(settings: Settings) -> None:
    job_id, dispatch, fresh = unsent("held")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
            held.set()
            release.wait(30)
            conn.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        assert tasks.run_fresh(job_id, dispatch, fresh, worker="fresh-test") is False
    finally:
        release.set()
        holder.join()
    assert stored(job_id)["status"] == "queued"


def test_webhook_deliveries_are_recorded_with_the_success(settings: Settings) -> None:
    with session_scope() as s:
        tenant_id = ensure_tenant(s, "fresh-hooks").id
        s.execute(text(
            "INSERT INTO webhook_endpoints (tenant_id, url, secret, events) VALUES "
            "(:t, 'http://127.0.0.1:9/hook', :secret, ARRAY['job.succeeded'])"),
            {"t": tenant_id, "secret": secrets.seal(secrets.new_secret(),
                                                    get_settings().webhook_secret_key)})
    try:
        job_id, dispatch, fresh = unsent("hooked", tenant="fresh-hooks")
        assert tasks.run_fresh(job_id, dispatch, fresh, worker="fresh-test")
        with session_scope() as s:
            events = s.execute(text("SELECT event FROM webhook_deliveries WHERE job_id = :id"),
                               {"id": job_id}).scalars().all()
        assert events == ["job.succeeded"]
    finally:  # nothing listens there: later tests must not count its failing attempts
        with session_scope() as s:
            s.execute(text("DELETE FROM webhook_endpoints WHERE tenant_id = :t"),
                      {"t": tenant_id})


@pytest.mark.usefixtures("worker")
def test_the_lane_takes_both_message_forms_and_survives_a_bad_one(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    new_id, new_dispatch, fresh = unsent("new form")
    old_id, old_dispatch, _ = unsent("old form")
    client.lpush(fastlane.FRESH_KEYS[1], b"{not a message")
    fastlane.send([Sent(new_dispatch, "encode", 1, [new_id], fresh=fresh)])
    fastlane.send([Sent(old_dispatch, "encode", 1, [old_id])])  # an older api's form
    deadline = time.monotonic() + 20
    while {stored(i)["status"] for i in (new_id, old_id)} != {"succeeded"}:
        assert time.monotonic() < deadline, "the lane did not run both jobs"
        time.sleep(0.05)
    assert [stored(i)["results"] for i in (new_id, old_id)] == [1, 1]


def test_a_push_notes_its_lanes_length_for_the_next_submission(settings: Settings) -> None:
    job_id, dispatch, fresh = unsent("noted")
    key = window.lane_key("encode", fresh.priority)
    window._lengths.pop(key, None)
    fastlane.send([Sent(dispatch, "encode", fresh.priority, [job_id], fresh=fresh)])
    length, _ = window._lengths[key]
    assert length == redis.Redis.from_url(settings.redis_url or "").llen(key)


@pytest.mark.usefixtures("worker")
def test_a_submission_from_the_event_loop_is_stored_as_any(settings: Settings) -> None:
    """jobs.submit_now: the api's single submission without a thread, once its lane's
    length is known; before that it declines and stores nothing."""
    import asyncio

    import redis.asyncio as aioredis

    from app.store.db import AsyncPool

    with session_scope() as s:
        tenant_id = ensure_tenant(s, "fresh-now").id

    async def submit() -> jobs.JobRow | None:
        pool = AsyncPool(settings.database_url or "", 2, 5)
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            return await jobs.submit_now(pool, client, tenant_id=tenant_id, kind="encode",
                                         params={"text": TEXT}, actor="test")
        finally:
            await client.aclose()
            await pool.close()

    key = window.lane_key("encode", 1)
    window._lengths.pop(key, None)
    window.saw_processes({})
    assert asyncio.run(submit()) is None  # no length seen: the caller's usual way
    window.saw_length(key, 0)
    job = asyncio.run(submit())
    assert job is not None and job.status == "queued"
    deadline = time.monotonic() + 20  # its message went to the fast lane: a lane runs it
    while stored(job.id)["status"] != "succeeded":
        assert time.monotonic() < deadline, "the job never ran"
        time.sleep(0.05)
    assert stored(job.id) == {"status": "succeeded", "attempt": 1, "results": 1,
                              "events": ["submitted", "started", "succeeded"],
                              "dispatches": 0, "verified": True}
    # A lane seen full: stored all the same, its message sent its tenant's way (Celery).
    window.saw_length(key, 10**6)
    later = asyncio.run(submit())
    assert later is not None
    deadline = time.monotonic() + 20
    while stored(later.id)["status"] != "succeeded":
        assert time.monotonic() < deadline, "the job sent through Celery never ran"
        time.sleep(0.05)
