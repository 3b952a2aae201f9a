"""One job of each kind over HTTP, through a real worker, into PostgreSQL and back."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.config import get_settings
from app.core.canonical import sha256_hex
from app.store.db import session_scope
from app.store.models import AuditEvent, Decision, Job, Result
from tests.integration.conftest import auth, make_key

# Every test here needs the test worker and the relay running.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

EVALUATE_RISK = {
    "cycles": [{
        "left": {"text": "AI should provide information with ethical caveats.", "confidence": 0.72},
        "right": {"text": "AI should refuse ethically ambiguous requests to avoid complicity.",
                  "confidence": 0.81},
    }],
}


def submit_and_wait(api: TestClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a job, then long-poll until it is terminal."""
    created = api.post("/v1/jobs", json=body, headers=auth(key))
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    for _ in range(30):
        job = api.get(f"/v1/jobs/{job_id}", params={"wait": 10}, headers=auth(key)).json()
        if job["status"] in ("succeeded", "dead", "cancelled"):
            return job
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_encode_babel_known_answer(api: TestClient, key_a: str) -> None:
    job = submit_and_wait(api, key_a, {"kind": "encode", "params": {"text": "hello world"}})
    assert job["status"] == "succeeded"
    result = job["result"]
    assert result["address"].startswith("107310278aacfa5c75fa01d37b96036c")
    assert len(result["address"]) == 3887
    assert result["length"] == 11
    assert job["attempt"] == 1


def test_encode_hd_known_answer(api: TestClient, key_a: str) -> None:
    job = submit_and_wait(
        api, key_a, {"kind": "encode", "params": {"text": "Hello   World\n", "codec": "hd"}}
    )
    assert job["result"]["trigrams"] == 11
    assert job["result"]["ones"] == 4989
    assert job["result"]["sigma_hash"] == "5b7ab4ced074ba96"


def test_enumerate_known_answer(api: TestClient, key_a: str) -> None:
    job = submit_and_wait(api, key_a, {
        "kind": "enumerate", "params": {"query": "hello world", "max_results": 5, "depth": 1},
    })
    cands = job["result"]["candidates"]
    assert [c["ngram"] for c in cands] == ["hello", "world", "llo w", "lo wo", "o wor"]
    assert cands[0]["address"] == (
        "49f2b5d7b9c6d17346f22546dec90cc44b0de21d1021a8f554314eb150e0bfe2"
    )
    assert [c["score"] for c in cands[:3]] == [
        0.5545454545454546, 0.5545454545454546, 0.45454545454545453,
    ]


def test_evaluate_persists_decision_and_cycle_audit(api: TestClient, key_a: str) -> None:
    job = submit_and_wait(api, key_a, {"kind": "evaluate", "params": EVALUATE_RISK})
    assert job["result"]["decision"] == "STOP"
    assert job["result"]["stop_reason"] == "RISK_THRESHOLD_EXCEEDED"
    decision = api.get(f"/v1/jobs/{job['id']}/decision", headers=auth(key_a)).json()
    assert decision["stop_reason"] == "RISK_THRESHOLD_EXCEEDED"
    assert decision["risk"] == 0.6262857142857143
    assert decision["remaining_budget"] == 0.85
    trail = api.get(f"/v1/jobs/{job['id']}/audit", headers=auth(key_a)).json()
    assert trail["verified"] is True
    types = [e["type"] for e in trail["events"]]
    assert types == ["submitted", "started", "governor_cycle", "succeeded"]
    with session_scope() as s:
        assert s.get(Decision, job["id"]) is not None
        cycles = s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.job_id == job["id"], AuditEvent.event_type == "governor_cycle"))
        assert cycles == 1


def test_plateau_two_cycles_two_cycle_events(api: TestClient, key_a: str) -> None:
    pair = {"left": {"text": "proceed with the plan after review today", "confidence": 0.95},
            "right": {"text": "proceed with the plan after careful review", "confidence": 0.9}}
    job = submit_and_wait(api, key_a, {"kind": "evaluate", "params": {"cycles": [pair, pair]}})
    assert job["result"]["stop_reason"] == "PLATEAU_DETECTED"
    trail = api.get(f"/v1/jobs/{job['id']}/audit", headers=auth(key_a)).json()
    assert [e["type"] for e in trail["events"]].count("governor_cycle") == 2


def test_result_row_written_once_with_sha(api: TestClient, key_a: str) -> None:
    job = submit_and_wait(api, key_a, {"kind": "encode", "params": {"text": "abc"}})
    with session_scope() as s:
        rows = s.scalars(select(Result).where(Result.job_id == job["id"])).all()
        assert len(rows) == 1
        assert rows[0].result_sha256 == job["result_sha256"]
        # The hash is of the result's canonical JSON (spec), not merely some 64 hex digits.
        assert rows[0].result_sha256 == sha256_hex(job["result"])


def test_idempotency_key_gives_one_job(api: TestClient, key_a: str) -> None:
    body = {"kind": "encode", "params": {"text": "once"}, "idempotency_key": "order-42"}
    first = api.post("/v1/jobs", json=body, headers=auth(key_a))
    second = api.post("/v1/jobs", json=body, headers=auth(key_a))
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    with session_scope() as s:
        n = s.scalar(select(func.count()).select_from(Job).where(Job.idempotency_key == "order-42"))
        assert n == 1


def test_same_key_other_tenant_is_another_job(api: TestClient, key_a: str, key_b: str) -> None:
    body = {"kind": "encode", "params": {"text": "x"}, "idempotency_key": "shared-key"}
    a = api.post("/v1/jobs", json=body, headers=auth(key_a)).json()
    b = api.post("/v1/jobs", json=body, headers=auth(key_b)).json()
    assert a["id"] != b["id"]


def test_other_tenant_sees_404(api: TestClient, key_a: str, key_b: str) -> None:
    job = api.post("/v1/jobs", json={"kind": "encode", "params": {"text": "private"}},
                   headers=auth(key_a)).json()
    for path in ("", "/audit", "/decision"):
        assert api.get(f"/v1/jobs/{job['id']}{path}", headers=auth(key_b)).status_code == 404
    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key_b)).status_code == 404
    listed = api.get("/v1/jobs", headers=auth(key_b)).json()["data"]
    assert job["id"] not in [j["id"] for j in listed]


def test_list_filters_and_cursor(api: TestClient) -> None:
    key_a = make_key("paging")  # a tenant of its own, so other tests' jobs don't pad the pages
    ids = [api.post("/v1/jobs", json={"kind": "encode", "params": {"text": f"p{i}"},
                                      "ref": "paging"}, headers=auth(key_a)).json()["id"]
           for i in range(5)]
    api.post("/v1/jobs", json={"kind": "enumerate", "params": {"query": "other kind"}},
             headers=auth(key_a))
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"kind": "encode", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/jobs", params=params, headers=auth(key_a)).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert set(ids) == set(seen)
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen))


def test_missing_or_bad_key_is_401(api: TestClient) -> None:
    assert api.get("/v1/jobs").status_code == 401
    r = api.get("/v1/jobs", headers=auth("bq_not-a-key"))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert api.get("/health").status_code == 200


def test_submit_with_wait_answers_with_the_finished_job(api: TestClient, key_a: str) -> None:
    """POST ?wait: one request, answered once the job is done (the known answer)."""
    reply = api.post("/v1/jobs", params={"wait": 30}, headers=auth(key_a),
                     json={"kind": "encode", "params": {"text": "hello world"}})
    assert reply.status_code == 201, reply.text
    job = reply.json()
    assert job["status"] == "succeeded"
    assert job["result"]["address"].startswith("107310278aacfa5c75fa01d37b96036c")
    # What a read shows afterwards, result and all.
    again = api.get(f"/v1/jobs/{job['id']}", headers=auth(key_a)).json()
    assert again == job


def test_submit_with_wait_ends_at_its_deadline(api: TestClient, key_a: str) -> None:
    """A job that cannot finish within wait comes back as it is, still queued."""
    reply = api.post("/v1/jobs", params={"wait": 0.3}, headers=auth(key_a),
                     json={"kind": "encode", "params": {"text": "later"}, "delay": 3600})
    assert reply.status_code == 201, reply.text
    assert reply.json()["status"] == "queued"
    api.post(f"/v1/jobs/{reply.json()['id']}/cancel", headers=auth(key_a))


def test_submit_with_wait_is_bounded(api: TestClient, key_a: str) -> None:
    reply = api.post("/v1/jobs", params={"wait": 61}, headers=auth(key_a),
                     json={"kind": "encode", "params": {"text": "x"}})
    assert reply.status_code == 422 and "wait" in reply.text


def test_a_tenant_over_its_long_poll_limit_is_answered_at_once(
    api: TestClient, key_a: str, key_b: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open long-polls per tenant are bounded by a setting: one more is answered as a plain
    read, and another tenant's long-polls are neither refused nor counted against it."""
    monkeypatch.setattr(get_settings(), "max_long_polls_per_tenant", 1)
    later = {"kind": "encode", "params": {"text": "later"}, "delay": 3600}
    held = {key: api.post("/v1/jobs", headers=auth(key), json=later).json()["id"]
            for key in (key_a, key_b)}
    with session_scope() as s:
        tenant = {key: s.get(Job, job_id).tenant_id for key, job_id in held.items()}
    polls = [threading.Thread(target=api.get, args=(f"/v1/jobs/{job_id}",),
                              kwargs={"params": {"wait": 3}, "headers": auth(key)})
             for key, job_id in held.items()]
    for poll in polls:
        poll.start()
    waiters = api.app.state.waiters
    deadline = time.monotonic() + 10
    while not all(waiters.open_long_polls(t) == 1 for t in tenant.values()):
        assert time.monotonic() < deadline, "the long-polls never opened"
        time.sleep(0.01)
    over = api.post("/v1/jobs", params={"wait": 3}, headers=auth(key_a), json=later)
    assert over.status_code == 201 and over.json()["status"] == "queued"
    assert all(poll.is_alive() for poll in polls)  # answered while they wait: it did not
    for poll in polls:
        poll.join()
    for key, job_id in [*held.items(), (key_a, over.json()["id"])]:
        api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
