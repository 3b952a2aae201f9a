"""Tenant isolation on every read and write path: another tenant's things do not exist.

Tenant alpha owns a finished evaluate job (with result, decision and audit trail) and a
finished batch. Tenant beta, naming them on every endpoint, gets exactly the 404 a
never-used id gets, and changes nothing; the owner and an admin key find them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.jobs.keys import hash_key
from app.store.db import session_scope
from app.store.models import ApiKey
from tests.integration.conftest import auth

pytestmark = pytest.mark.integration

#: An id no job or batch will have in a test run.
NEVER = 987_654_321

#: Every endpoint that names one job or one batch, with the owner's answer for a finished one.
ENDPOINTS = [
    ("GET", "/v1/jobs/{job_id}", 200),
    ("GET", "/v1/jobs/{job_id}/audit", 200),
    ("GET", "/v1/jobs/{job_id}/decision", 200),
    ("POST", "/v1/jobs/{job_id}/cancel", 409),
    ("POST", "/v1/jobs/{job_id}/retry", 409),
    ("GET", "/v1/batches/{batch_id}", 200),
    ("GET", "/v1/batches/{batch_id}/results", 200),
    ("POST", "/v1/batches/{batch_id}/cancel", 200),
]

CYCLE = {"left": {"text": "ship the release on friday", "confidence": 0.7},
         "right": {"text": "hold the release for more review", "confidence": 0.8}}


@dataclass
class Owned:
    """What tenant alpha owns."""

    job_id: int
    batch_id: int

    def url(self, template: str, other: bool = False) -> str:
        """The endpoint for alpha's job or batch, or for an id nobody has."""
        job, batch = (NEVER, NEVER) if other else (self.job_id, self.batch_id)
        return template.format(job_id=job, batch_id=batch)


@pytest.fixture(scope="module")
def owned(api: TestClient, key_a: str, worker: Any, relay: Any) -> Owned:
    """A finished evaluate job and a finished batch of tenant alpha."""
    job = api.post("/v1/jobs", json={"kind": "evaluate", "params": {"cycles": [CYCLE]}},
                   headers=auth(key_a)).json()
    body = b"".join(json.dumps({"kind": "encode", "params": {"text": f"iso {i}"}}).encode()
                    + b"\n" for i in range(3))
    batch = api.post("/v1/batches", content=body, headers={
        **auth(key_a), "Content-Type": "application/x-ndjson"}).json()
    done = api.get(f"/v1/jobs/{job['id']}", params={"wait": 30}, headers=auth(key_a)).json()
    assert done["status"] == "succeeded"
    deadline = time.monotonic() + 60
    while not api.get(f"/v1/batches/{batch['id']}", headers=auth(key_a)).json()["done"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return Owned(job["id"], batch["id"])


def snapshot(api: TestClient, key: str, owned: Owned) -> tuple[Any, ...]:
    """Everything alpha can see of its job and batch."""
    get = [api.get(owned.url(p), headers=auth(key)).text for p in (
        "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/audit", "/v1/batches/{batch_id}/results")]
    batch = api.get(owned.url("/v1/batches/{batch_id}"), headers=auth(key)).json()
    return (*get, batch["counts"])


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(re.sub(r"\b\d+\b", "N", json.dumps(body)))


def test_every_endpoint_naming_a_job_or_batch_is_covered(api: TestClient) -> None:
    paths = api.app.openapi()["paths"]  # type: ignore[attr-defined]
    named = {(m.upper(), p) for p, ops in paths.items() if "{job_id}" in p or "{batch_id}" in p
             for m in ops}
    assert named == {(m, p) for m, p, _ in ENDPOINTS}


def test_other_tenant_gets_the_404_of_a_missing_id_and_changes_nothing(
    api: TestClient, key_a: str, key_b: str, owned: Owned
) -> None:
    before = snapshot(api, key_a, owned)
    for method, template, _ in ENDPOINTS:
        theirs = api.request(method, owned.url(template), headers=auth(key_b))
        missing = api.request(method, owned.url(template, other=True), headers=auth(key_b))
        assert (theirs.status_code, missing.status_code) == (404, 404), (method, template)
        assert without_ids(theirs.json()) == without_ids(missing.json())
    assert snapshot(api, key_a, owned) == before


def test_owner_and_admin_find_them(
    api: TestClient, key_a: str, admin_key: str, owned: Owned
) -> None:
    for key in (key_a, admin_key):
        for method, template, status in ENDPOINTS:
            r = api.request(method, owned.url(template), headers=auth(key))
            assert r.status_code == status, (method, template, r.text)


def test_long_poll_on_another_tenants_job_is_404_at_once(
    api: TestClient, key_b: str, owned: Owned
) -> None:
    started = time.monotonic()
    r = api.get(f"/v1/jobs/{owned.job_id}", params={"wait": 30}, headers=auth(key_b))
    assert r.status_code == 404 and time.monotonic() - started < 5


@pytest.mark.parametrize("query", [
    {}, {"batch_id": "{batch_id}"}, {"status": "succeeded"}, {"kind": "evaluate"},
    {"created_after": "2000-01-01T00:00:00Z"},
])
def test_lists_hold_only_the_callers_jobs(
    api: TestClient, key_a: str, key_b: str, admin_key: str, owned: Owned, query: dict[str, str]
) -> None:
    params = {k: v.format(batch_id=owned.batch_id) for k, v in query.items()}
    params["limit"] = "1000"
    listed = api.get("/v1/jobs", params=params, headers=auth(key_b)).json()["data"]
    alpha = {owned.job_id} | {j["id"] for j in api.get(
        "/v1/jobs", params={"batch_id": owned.batch_id}, headers=auth(key_a)).json()["data"]}
    assert len(alpha) == 4
    assert not alpha & {j["id"] for j in listed}
    if "batch_id" in query:
        assert listed == []
        everyone = api.get("/v1/jobs", params=params, headers=auth(admin_key)).json()["data"]
        assert len(everyone) == 3


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/keys", None),
    ("POST", "/v1/keys", {"tenant": "alpha", "admin": True}),
    ("POST", "/v1/keys", {"tenant": "beta"}),
    ("DELETE", "/v1/keys/{alpha_key}", None),
])
def test_tenant_keys_cannot_manage_keys(
    api: TestClient, key_a: str, key_b: str, method: str, path: str, body: Any
) -> None:
    with session_scope() as s:
        alpha_key = s.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key_a))).one()
        keys_before = s.scalar(select(func.count()).select_from(ApiKey))
    for key in (key_a, key_b):
        r = api.request(method, path.format(alpha_key=alpha_key), json=body, headers=auth(key))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ApiKey)) == keys_before
    assert api.get("/v1/jobs", headers=auth(key_a)).status_code == 200
