"""Bad input gets the documented 4xx naming the field, and writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.store.db import session_scope
from app.store.models import AuditEvent, Job
from tests.integration.conftest import auth

pytestmark = pytest.mark.integration


def newest_job() -> int:
    with session_scope() as s:
        return s.scalar(select(func.max(Job.id))) or 0


@pytest.fixture
def nothing_written() -> Iterator[None]:
    """Fail the test if any job, or any audit event of a new job, appeared."""
    newest = newest_job()
    yield
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.id > newest)) == 0
        assert s.scalar(select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.job_id > newest)) == 0


def fields(response: Any) -> list[str]:
    return [d["field"] for d in response.json()["error"]["details"]]


CYCLE = {"left": {"text": "a b", "confidence": 0.5}, "right": {"text": "a c", "confidence": 0.5}}

INVALID = [
    ({"kind": "encode", "params": {"text": ""}}, "params.text"),
    ({"kind": "encode", "params": {"text": "x" * 3201}}, "params.text"),
    ({"kind": "encode", "params": {"text": 42}}, "params.text"),
    ({"kind": "encode", "params": {"text": "x", "codec": "rot13"}}, "params.codec"),
    ({"kind": "encode", "params": {"text": "x", "colour": "red"}}, "params.colour"),
    ({"kind": "encode", "params": {}}, "params.text"),
    ({"kind": "encode", "params": {"text": "   \n ", "codec": "hd"}}, "params.text"),
    ({"kind": "enumerate", "params": {"query": "   "}}, "params.query"),
    ({"kind": "enumerate", "params": {"query": "q" * 1001}}, "params.query"),
    ({"kind": "enumerate", "params": {"query": "q", "max_results": 0}}, "params.max_results"),
    ({"kind": "enumerate", "params": {"query": "q", "max_results": 101}}, "params.max_results"),
    ({"kind": "enumerate", "params": {"query": "q", "depth": 11}}, "params.depth"),
    ({"kind": "enumerate", "params": {"query": "q", "with_pages": "yes"}}, "params.with_pages"),
    ({"kind": "evaluate", "params": {"cycles": []}}, "params.cycles"),
    ({"kind": "evaluate", "params": {"cycles": [CYCLE] * 11}}, "params.cycles"),
    ({"kind": "evaluate", "params": {"cycles": [
        {**CYCLE, "left": {"text": "a", "confidence": 1.5}}]}}, "params.cycles.0.left.confidence"),
    ({"kind": "evaluate", "params": {"cycles": [CYCLE], "config": {"max_cycles": 0}}},
     "params.config.max_cycles"),
    ({"kind": "evaluate", "params": {"cycles": [CYCLE], "config": {"risk_threshold": 2}}},
     "params.config.risk_threshold"),
    ({"kind": "reverse", "params": {}}, "kind"),
    ({"kind": "encode", "params": {"text": "x"}, "priority": "urgent"}, "priority"),
    ({"kind": "encode", "params": {"text": "x"}, "max_attempts": 21}, "max_attempts"),
    ({"kind": "encode", "params": {"text": "x"}, "surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("body", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_job_is_422_naming_field(
    api: TestClient, key_a: str, nothing_written: None, body: dict[str, Any], field: str
) -> None:
    r = api.post("/v1/jobs", json=body, headers=auth(key_a))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid"
    assert field in fields(r)


def test_nan_confidence_rejected(api: TestClient, key_a: str, nothing_written: None) -> None:
    raw = ('{"kind": "evaluate", "params": {"cycles": [{"left": {"text": "a", "confidence": NaN},'
           ' "right": {"text": "b", "confidence": 0.5}}]}}')
    r = api.post("/v1/jobs", content=raw, headers={**auth(key_a),
                                                   "Content-Type": "application/json"})
    assert r.status_code in (400, 422)
    assert r.json()["error"]["code"] in ("malformed", "invalid")


def test_malformed_json_is_400(api: TestClient, key_a: str, nothing_written: None) -> None:
    r = api.post("/v1/jobs", content=b'{"kind": "encode", "params": ',
                 headers={**auth(key_a), "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "malformed"


def test_oversized_body_is_413(api: TestClient, key_a: str, nothing_written: None) -> None:
    body = {"kind": "encode", "params": {"text": "x" * 2_000_000}}
    r = api.post("/v1/jobs", json=body, headers=auth(key_a))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"


def test_unknown_job_is_404(api: TestClient, key_a: str) -> None:
    r = api.get("/v1/jobs/999999999", headers=auth(key_a))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_wait_over_60_is_422(api: TestClient, key_a: str) -> None:
    r = api.get("/v1/jobs/1", params={"wait": 61}, headers=auth(key_a))
    assert r.status_code == 422
    assert "query.wait" in fields(r)


@pytest.mark.parametrize("value", ["0.0", "1700000000", "-5"])
def test_created_after_must_be_iso(api: TestClient, key_a: str, value: str) -> None:
    r = api.get("/v1/jobs", params={"created_after": value}, headers=auth(key_a))
    assert r.status_code == 422
    assert "query.created_after" in fields(r)


def test_created_after_iso_filters(api: TestClient, key_a: str) -> None:
    r = api.get("/v1/jobs", params={"created_after": "2999-01-01T00:00:00Z"}, headers=auth(key_a))
    assert r.status_code == 200
    assert r.json()["data"] == []


def test_a_nul_in_a_key_is_a_rejected_line_not_a_failed_upload(api: TestClient, key_a: str
                                                                ) -> None:
    # The rejection reason names the key, and PostgreSQL cannot store a NUL in JSON: the
    # reason is stored with it escaped, and the upload's valid lines are kept.
    lines = [b'{"kind": "encode", "params": {"text": "kept one"}}',
             b'{"kind": "encode", "params": {"text": "x", "\\u0000evil": 1}}',
             b'{"kind": "encode", "params": {"text": "kept two"}, "\\u0000": 2}',
             b'{"kind": "encode", "params": {"text": "kept three"}}']
    r = api.post("/v1/batches", content=b"\n".join(lines),
                 headers={**auth(key_a), "Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    reasons = {row["line"]: row["reason"] for row in body["rejected_lines"]}
    assert set(reasons) == {2, 3} and "\\u0000evil" in reasons[2], reasons
    assert all("\x00" not in reason for reason in reasons.values())
    batch = api.get(f"/v1/batches/{body['id']}", headers=auth(key_a)).json()
    assert (batch["total"], batch["rejected"]) == (2, 2)
