"""POST /v1/jobs and GET /v1/jobs/{id}, answered by app.api.hot, say what FastAPI's routes say.

Each request is sent twice: plain (the hot path takes it) and with an extra query
parameter the routes ignore (so the hot path hands it to FastAPI). Both must give the
same status, error code and message, and the same kind of job.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api import hot
from tests.integration.conftest import auth

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

#: Ignored by the routes (FastAPI drops unknown query parameters), not plain for HotJobs.
FASTAPI = {"via": "fastapi"}

SAME_FIELDS = ("kind", "params", "priority", "max_attempts", "ref", "idempotency_key")


def _both(api: TestClient, method: str, path: str, **kwargs: Any) -> tuple[Any, Any]:
    params = kwargs.pop("params", {})
    hot_reply = api.request(method, path, params=params or None, **kwargs)
    slow_reply = api.request(method, path, params={**params, **FASTAPI}, **kwargs)
    return hot_reply, slow_reply


def _same_error(hot_reply: Any, slow_reply: Any) -> None:
    assert hot_reply.status_code == slow_reply.status_code, (hot_reply.text, slow_reply.text)
    assert hot_reply.json()["error"]["code"] == slow_reply.json()["error"]["code"]
    assert hot_reply.json()["error"]["message"] == slow_reply.json()["error"]["message"]


def test_a_submission_and_its_long_poll_answer_alike(api: TestClient, key_a: str) -> None:
    body = {"kind": "encode", "params": {"text": "hot or not"}, "ref": "r-1"}
    made = _both(api, "POST", "/v1/jobs", json=body, headers=auth(key_a))
    assert [r.status_code for r in made] == [201, 201]
    first, second = (r.json() for r in made)
    assert first["id"] != second["id"]
    assert {k: first[k] for k in SAME_FIELDS} == {k: second[k] for k in SAME_FIELDS}
    polled = _both(api, "GET", f"/v1/jobs/{first['id']}", params={"wait": 10},
                   headers=auth(key_a))
    assert [r.status_code for r in polled] == [200, 200]
    assert polled[0].json()["status"] == "succeeded"
    assert polled[0].json() == polled[1].json()
    # POST ?wait: answered once done, in one request, either way
    waited = _both(api, "POST", "/v1/jobs", json=body, params={"wait": 10},
                   headers=auth(key_a))
    assert [r.json()["status"] for r in waited] == ["succeeded", "succeeded"]
    assert waited[0].json()["result"] == waited[1].json()["result"] == polled[0].json()["result"]


def test_an_idempotent_replay_answers_200_with_the_first_job(api: TestClient,
                                                               key_a: str) -> None:
    body = {"kind": "encode", "params": {"text": "once"}}
    headers = {**auth(key_a), "Idempotency-Key": "hot-path-once"}
    first = api.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 201
    replays = _both(api, "POST", "/v1/jobs", json=body, headers=headers)
    assert [r.status_code for r in replays] == [200, 200]
    assert {r.json()["id"] for r in replays} == {first.json()["id"]}


@pytest.mark.parametrize(("body", "headers", "status"), [
    ({"kind": "encode", "params": {"text": ""}}, {}, 422),           # params the kind refuses
    ({"kind": "nope", "params": {}}, {}, 422),                        # no such kind
    ({"kind": "encode"}, {}, 422),                                    # params missing
    ({"kind": "encode", "params": {"text": "x"}, "priority": "urgent"}, {}, 422),
    ({"kind": "encode", "params": {"text": "x"}}, {"Idempotency-Key": "has space"}, 422),
])
def test_refusals_are_worded_as_fastapi_words_them(api: TestClient, key_a: str,
                                                   body: dict[str, Any],
                                                   headers: dict[str, str], status: int) -> None:
    replies = _both(api, "POST", "/v1/jobs", json=body, headers={**auth(key_a), **headers})
    assert replies[0].status_code == status
    _same_error(*replies)


def test_malformed_json_and_other_bodies_are_fastapis(api: TestClient, key_a: str) -> None:
    for content, ctype in ((b"{not json", "application/json"), (b"[]", "application/json"),
                           (b"kind=encode", "application/x-www-form-urlencoded")):
        _same_error(*_both(api, "POST", "/v1/jobs", content=content,
                           headers={**auth(key_a), "Content-Type": ctype}))


def test_keys_and_tenants_are_checked_alike(api: TestClient, key_a: str, key_b: str) -> None:
    body = {"kind": "encode", "params": {"text": "mine"}}
    _same_error(*_both(api, "POST", "/v1/jobs", json=body))  # no key
    _same_error(*_both(api, "POST", "/v1/jobs", json=body, headers=auth("bq_wrong")))
    job = api.post("/v1/jobs", json=body, headers=auth(key_a)).json()
    # another tenant's job, and a job that does not exist, are both simply not found
    _same_error(*_both(api, "GET", f"/v1/jobs/{job['id']}", headers=auth(key_b)))
    _same_error(*_both(api, "GET", "/v1/jobs/999999999999", params={"wait": 1},
                       headers=auth(key_a)))
    _same_error(*_both(api, "GET", f"/v1/jobs/{job['id']}", headers=auth("bq_wrong")))


def test_only_plain_queries_take_the_hot_path() -> None:
    def scope(query: bytes) -> dict[str, Any]:
        return {"query_string": query}

    assert hot._wait(scope(b"")) == 0.0
    assert hot._wait(scope(b"wait=2.5")) == 2.5
    # anything the routes would validate differently is FastAPI's to answer
    for query in (b"wait=61", b"wait=-1", b"wait=1e1", b"wait=nan", b"wait=1&x=1", b"x=1"):
        assert hot._wait(scope(query)) is None
