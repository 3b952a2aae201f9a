"""Signed webhooks to a real HTTP receiver, verified as a receiver would (standardwebhooks)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pytest_httpserver import HTTPServer
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook
from werkzeug import Request, Response

from app.config import get_settings
from app.store.db import session_scope
from app.webhooks import endpoints
from tests.faults.stack import wait_for
from tests.integration.conftest import auth, make_key
from tests.integration.test_batches import NDJSON, ndjson, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

ENCODE = {"kind": "encode", "params": {"text": "tell me when done"}}
ALL_EVENTS = ["job.succeeded", "job.dead", "job.cancelled", "batch.completed"]


@dataclass
class Receiver:
    """Endpoints on one real HTTP server; every request's signature is verified."""

    server: HTTPServer
    secrets: dict[str, str] = field(default_factory=dict)
    got: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    headers: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.server.url_for(path)

    def listen(self, path: str, secret: str,
               answer: Callable[[int], int] = lambda _: 204) -> None:
        """Accept POSTs at path, signed with secret; answer(n) gives the n-th status code."""
        self.secrets[path] = secret
        self.got[path], self.headers[path] = [], []

        def handle(request: Request) -> Response:
            body = request.get_data()
            # As a receiver would: raises WebhookVerificationError on a bad signature.
            payload = Webhook(secret).verify(body, dict(request.headers))
            with self.lock:
                self.headers[path].append(dict(request.headers))
                n = len(self.headers[path])
                status = answer(n)
                if 200 <= status < 300:
                    self.got[path].append(payload)
            return Response("ok" if status < 300 else "x" * 5000, status=status)

        self.server.expect_request(path, method="POST").respond_with_handler(handle)

    def events(self, path: str) -> list[tuple[str, int]]:
        with self.lock:
            return sorted((p["type"], p["data"]["id"]) for p in self.got[path])


#: Endpoints registered by the running test, deleted after it: (key, id).
REGISTERED: list[tuple[str, int]] = []


@pytest.fixture
def receiver(httpserver: HTTPServer, api: TestClient) -> Iterator[Receiver]:
    yield Receiver(httpserver)
    while REGISTERED:  # so nothing is retried against the next test's receiver
        key, hook_id = REGISTERED.pop()
        api.delete(f"/v1/webhooks/{hook_id}", headers=auth(key))
    httpserver.clear()


def register(api: TestClient, key: str, url: str, events: list[str],
             include_batch_jobs: bool = False) -> dict[str, Any]:
    r = api.post("/v1/webhooks", headers=auth(key), json={
        "url": url, "events": events, "include_batch_jobs": include_batch_jobs})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert body["secret"].startswith("whsec_")
    REGISTERED.append((key, body["id"]))
    return body


def submit(api: TestClient, key: str, body: dict[str, Any] = ENCODE) -> dict[str, Any]:
    r = api.post("/v1/jobs", json=body, headers=auth(key))
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


def finished(api: TestClient, key: str, job_id: int) -> dict[str, Any]:
    job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}", params={"wait": 30},
                                  headers=auth(key)).json()
    assert job["status"] in ("succeeded", "dead", "cancelled"), job
    return job


def deliveries(api: TestClient, key: str, hook_id: int) -> list[dict[str, Any]]:
    r = api.get(f"/v1/webhooks/{hook_id}/deliveries", headers=auth(key))
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


def settled(api: TestClient, key: str, hook_id: int) -> bool:
    return all(d["status"] != "pending" for d in deliveries(api, key, hook_id))


def test_each_event_delivered_once_and_only_those_asked(
        api: TestClient, receiver: Receiver) -> None:
    key, other = make_key("hooks-events"), make_key("hooks-other")
    everything = register(api, key, receiver.url("/all"), ALL_EVENTS)
    batch_jobs = register(api, key, receiver.url("/succeeded"), ["job.succeeded"],
                          include_batch_jobs=True)
    receiver.listen("/all", everything["secret"])
    receiver.listen("/succeeded", batch_jobs["secret"])

    single = finished(api, key, submit(api, key)["id"])
    later = submit(api, key, {**ENCODE, "delay": 3600})
    assert api.post(f"/v1/jobs/{later['id']}/cancel", headers=auth(key)).status_code == 200
    made = api.post("/v1/batches", content=ndjson([ENCODE] * 3),
                    headers={**auth(key), **NDJSON}).json()
    wait_done(api, key, made["id"])
    finished(api, other, submit(api, other)["id"])  # another tenant's: never sent here
    batch_ids = [j["id"] for j in api.get("/v1/jobs", params={"batch_id": made["id"]},
                                          headers=auth(key)).json()["data"]]

    wait_for("deliveries", lambda: settled(api, key, everything["id"])
             and settled(api, key, batch_jobs["id"]), 30)
    assert receiver.events("/all") == sorted([
        ("job.succeeded", single["id"]), ("job.cancelled", later["id"]),
        ("batch.completed", made["id"])])
    assert receiver.events("/succeeded") == sorted(
        [("job.succeeded", single["id"])] + [("job.succeeded", i) for i in batch_ids])
    # The body is the job as GET returns it, and the batch as GET returns it.
    sent = {p["type"]: p["data"] for p in receiver.got["/all"]}
    assert sent["job.succeeded"] == api.get(f"/v1/jobs/{single['id']}", headers=auth(key)).json()
    assert sent["batch.completed"]["counts"]["succeeded"] == 3
    assert sent["batch.completed"]["done"] is True
    assert all(d["status"] == "delivered" and d["attempts"] == 1
               for d in deliveries(api, key, everything["id"]))


def test_failing_receiver_gets_it_on_the_fourth_attempt(
        api: TestClient, receiver: Receiver) -> None:
    key = make_key("hooks-retry")
    hook = register(api, key, receiver.url("/flaky"), ["job.succeeded"])
    receiver.listen("/flaky", hook["secret"], answer=lambda n: 500 if n <= 3 else 200)
    job = finished(api, key, submit(api, key)["id"])

    wait_for("the delivery", lambda: settled(api, key, hook["id"]), 30)
    [delivery] = deliveries(api, key, hook["id"])
    assert delivery["status"] == "delivered"
    assert delivery["job_id"] == job["id"]
    assert delivery["attempts"] == 4
    assert [a["status_code"] for a in delivery["history"]] == [500, 500, 500, 200]
    assert delivery["response"] == "ok"
    # Every attempt carried the same message id (receivers deduplicate on it).
    assert len({h["Webhook-Id"] for h in receiver.headers["/flaky"]}) == 1
    assert receiver.events("/flaky") == [("job.succeeded", job["id"])]

    # Redelivered by hand: once more, same id.
    again = api.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver",
                     headers=auth(key))
    assert again.status_code == 200 and again.json()["status"] == "pending"
    wait_for("the redelivery", lambda: len(receiver.got["/flaky"]) == 2, 30)
    assert len({h["Webhook-Id"] for h in receiver.headers["/flaky"]}) == 1


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://localhost/hook", "http://169.254.169.254/latest",
    "http://10.1.2.3/hook", "http://[::1]/hook", "http://user:pw@example.com/hook",
    "ftp://example.com/hook",
])
def test_private_and_malformed_urls_refused(api: TestClient, url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "webhook_allow_private", False)
    r = api.post("/v1/webhooks", headers=auth(make_key("hooks-private")),
                 json={"url": url, "events": ["job.succeeded"]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "url"


def test_private_address_refused_at_send_time_too(
        api: TestClient, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that was public at registration and private later (DNS rebinding)."""
    key = make_key("hooks-rebind")
    hook = register(api, key, receiver.url("/rebound"), ["job.succeeded"])
    receiver.listen("/rebound", hook["secret"])
    monkeypatch.setattr(get_settings(), "webhook_allow_private", False)
    finished(api, key, submit(api, key)["id"])
    wait_for("a refused attempt", lambda: any(
        d["attempts"] >= 1 for d in deliveries(api, key, hook["id"])), 30)
    [delivery] = deliveries(api, key, hook["id"])
    assert "non-public" in delivery["history"][0]["error"]
    assert delivery["history"][0]["status_code"] is None
    assert receiver.got["/rebound"] == []
    with session_scope() as session:  # what a metric of the backlog reads
        assert endpoints.backlog(session)[0] >= 1


def test_other_tenants_webhooks_are_not_found(api: TestClient, receiver: Receiver) -> None:
    owner, stranger = make_key("hooks-owner"), make_key("hooks-stranger")
    hook = register(api, owner, receiver.url("/mine"), ["job.succeeded"])
    for method, path in [("GET", f"/v1/webhooks/{hook['id']}/deliveries"),
                         ("DELETE", f"/v1/webhooks/{hook['id']}"),
                         ("POST", f"/v1/webhooks/{hook['id']}/deliveries/1/redeliver")]:
        assert api.request(method, path, headers=auth(stranger)).status_code == 404
    assert api.get("/v1/webhooks", headers=auth(stranger)).json()["count"] == 0
    listed = api.get("/v1/webhooks", headers=auth(owner)).json()["data"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    assert api.delete(f"/v1/webhooks/{hook['id']}", headers=auth(owner)).status_code == 204
    assert api.get("/v1/webhooks", headers=auth(owner)).json()["count"] == 0


def test_delayed_job_waits_for_its_time(api: TestClient) -> None:
    key = make_key("delayed")
    job = submit(api, key, {**ENCODE, "delay": 2})
    assert job["status"] == "queued" and job["run_after"] is not None
    listed = api.get("/v1/jobs", params={"scheduled": "true"}, headers=auth(key)).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    time.sleep(1)
    assert api.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()["started_at"] is None
    done = finished(api, key, job["id"])
    assert done["status"] == "succeeded"
    assert done["started_at"] >= done["run_after"]
    assert api.get("/v1/jobs", params={"scheduled": "true"},
                   headers=auth(key)).json()["count"] == 0


def test_delayed_batch_line_and_bad_delays(api: TestClient) -> None:
    key = make_key("delayed-batch")
    at = "2020-01-01T00:00:00Z"  # in the past: runs at once
    made = api.post("/v1/batches", headers={**auth(key), **NDJSON}, content=ndjson([
        {**ENCODE, "delay": 1}, {**ENCODE, "run_at": at}, {**ENCODE, "delay": -1},
        {**ENCODE, "delay": 1, "run_at": at},
        {**ENCODE, "delay": 1, "idempotency_key": "late-1", "ref": "mine"}])).json()
    assert made["accepted"] == 3 and made["rejected"] == 2
    wait_done(api, key, made["id"])
    jobs = api.get("/v1/jobs", params={"batch_id": made["id"]}, headers=auth(key)).json()["data"]
    late = [j for j in jobs if j["line"] in (1, 5)]
    assert all(j["started_at"] >= j["run_after"] for j in late)
    assert next(j for j in jobs if j["line"] == 2)["run_after"] is None
    assert next(j for j in jobs if j["line"] == 5)["ref"] == "mine"
    for body in ({**ENCODE, "run_at": "2030-01-01T00:00:00"},  # no time zone
                 {**ENCODE, "delay": 10**9}):
        assert api.post("/v1/jobs", json=body, headers=auth(key)).status_code == 422


def fire_keys(schedule_id: int) -> list[str]:
    with session_scope() as s:
        return list(s.execute(text("SELECT idempotency_key FROM jobs WHERE idempotency_key "
                                   "LIKE :k ORDER BY id"), {"k": f"schedule:{schedule_id}:%"})
                    .scalars())


def test_schedule_fires_once_per_tick_with_two_relays(api: TestClient) -> None:
    from workers import relay as relay_mod

    key = make_key("schedules")
    stop = threading.Event()
    second = threading.Thread(target=relay_mod.run, args=(stop,), daemon=True)
    second.start()
    try:
        made = api.post("/v1/schedules", headers=auth(key), json={
            "name": "every-second", "cron": "* * * * * *", "timezone": "Europe/Paris",
            "job": ENCODE})
        assert made.status_code == 201, made.text
        sid = made.json()["id"]
        wait_for("four fires", lambda: len(fire_keys(sid)) >= 4, 30)
        paused = api.post(f"/v1/schedules/{sid}/pause", headers=auth(key)).json()
        assert paused["paused"] is True and paused["next_fire_at"] is None
    finally:
        stop.set()
        second.join(timeout=10)
    keys = fire_keys(sid)
    fires = [k.rsplit(":", 3)[-3:] for k in keys]
    assert len(set(keys)) == len(keys)  # one job per fire time
    assert fires == sorted(fires)
    time.sleep(1.5)
    assert fire_keys(sid) == keys  # paused: no more
    listed = api.get("/v1/schedules", headers=auth(key)).json()["data"]
    assert listed[0]["last_job_id"] is not None
    assert api.get(f"/v1/schedules/{sid}", headers=auth(make_key("sched-other"))
                   ).status_code == 404
    bad = api.post("/v1/schedules", headers=auth(key), json={
        "name": "bad", "cron": "every day", "job": ENCODE})
    assert bad.status_code == 422
    assert json.loads(bad.text)["error"]["code"] == "invalid"
