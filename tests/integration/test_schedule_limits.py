"""Schedules are held to the tenant's limits: how many it may have, and its cap and rate.

A schedule may fire every second; without these, a tenant's schedules would be a way
around the cap on unfinished jobs and the submission rate that its own requests obey.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.config import Settings, get_settings
from app.store.db import session_scope
from tests.faults.stack import wait_for
from tests.integration.conftest import auth, make_key

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("relay")]

ENCODE = {"kind": "encode", "params": {"text": "on schedule"}}
#: Once a year: it fires only when the test makes it due.
YEARLY = "0 3 1 1 *"


def tenant_key() -> str:
    return make_key(f"sched-limits-{uuid.uuid4().hex[:8]}")


def create(api: TestClient, key: str, name: str) -> dict[str, object]:
    made = api.post("/v1/schedules", headers=auth(key),
                    json={"name": name, "cron": YEARLY, "job": ENCODE})
    return {"status": made.status_code, **made.json()}


def make_due(schedule_id: object) -> None:
    with session_scope() as s:
        s.execute(text("UPDATE schedules SET next_fire_at = now() - interval '1 second' "
                       "WHERE id = :id"), {"id": schedule_id})


def handled(schedule_id: object) -> bool:
    """Whether a relay has taken the due schedule (fired it or held it back)."""
    with session_scope() as s:
        at = s.execute(text("SELECT next_fire_at FROM schedules WHERE id = :id"),
                       {"id": schedule_id}).scalar_one()
    return bool(at > datetime.now(UTC))


def fired_jobs(schedule_id: object) -> int:
    with session_scope() as s:
        return int(s.execute(text("SELECT count(*) FROM jobs WHERE idempotency_key LIKE :k"),
                             {"k": f"schedule:{schedule_id}:%"}).scalar_one())


def test_a_tenant_has_at_most_max_schedules(api: TestClient, settings: Settings,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "max_schedules_per_tenant", 2)
    key, other = tenant_key(), tenant_key()
    first = create(api, key, "one")
    assert first["status"] == 201 and create(api, key, "two")["status"] == 201
    refused = create(api, key, "three")
    assert refused["status"] == 409
    assert "BABELQ_MAX_SCHEDULES_PER_TENANT" in str(refused["error"])
    assert create(api, other, "one")["status"] == 201  # another tenant's room is its own
    assert api.delete(f"/v1/schedules/{first['id']}", headers=auth(key)).status_code == 204
    assert create(api, key, "three")["status"] == 201
    listed = api.get("/v1/schedules", headers=auth(key)).json()
    assert sorted(s["name"] for s in listed["data"]) == ["three", "two"]


def test_a_tenant_at_its_cap_gets_no_scheduled_job_until_room_comes(
    api: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "max_queued_per_tenant", 1)
    key = tenant_key()
    holder = api.post("/v1/jobs", headers=auth(key), json={**ENCODE, "delay": 3600})
    assert holder.status_code == 201, holder.text  # unfinished: the tenant is at its cap
    schedule = create(api, key, "capped")
    make_due(schedule["id"])
    wait_for("a relay to take the due schedule", lambda: handled(schedule["id"]), 30)
    assert fired_jobs(schedule["id"]) == 0
    cancelled = api.post(f"/v1/jobs/{holder.json()['id']}/cancel", headers=auth(key))
    assert cancelled.status_code == 200
    make_due(schedule["id"])
    wait_for("the scheduled job, once the tenant has room",
             lambda: fired_jobs(schedule["id"]) == 1, 30)


def test_scheduled_jobs_take_the_tenants_submission_rate(
    api: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "rate_limit_per_second", 0.001)  # a burst of 1
    key = tenant_key()
    schedule = create(api, key, "rated")
    make_due(schedule["id"])
    wait_for("the first fire, within the burst", lambda: fired_jobs(schedule["id"]) == 1, 30)
    make_due(schedule["id"])
    wait_for("a relay to take the due schedule again", lambda: handled(schedule["id"]), 30)
    assert fired_jobs(schedule["id"]) == 1
    # And the tenant's own request meets the same empty bucket.
    refused = api.post("/v1/jobs", headers=auth(key), json=ENCODE)
    assert refused.status_code == 429
