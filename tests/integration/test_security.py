"""Keys, per-tenant limits, size limits, hostile input and production refusals.

Limits are set per test on the process-wide settings (the api reads them per request);
each limits test gets a tenant of its own, so buckets and job counts start empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from app import jobs
from app.config import Settings, get_settings
from app.jobs.keys import create_key
from app.ops.supervisor import free_port, stop_process
from app.store.db import session_scope
from app.store.models import Batch, Job
from tests.integration.conftest import auth
from tests.plugins import testkinds

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "app.cli"]
NDJSON = {"Content-Type": "application/x-ndjson"}
ENCODE = {"kind": "encode", "params": {"text": "limits"}}
#: Body limits of the api subprocess, small enough to pass quickly.
SERVER_LIMITS = {"BABELQ_MAX_BODY_BYTES": "4096", "BABELQ_MAX_BATCH_BODY_BYTES": "65536"}


def ndjson(n: int, job: dict[str, Any] = ENCODE) -> bytes:
    return (json.dumps(job) + "\n").encode() * n


def stored(tenant_id: int) -> tuple[int, int]:
    """The tenant's (jobs, batches) in PostgreSQL."""
    with session_scope() as s:
        return (s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)),
                s.scalar(select(func.count()).select_from(Batch)
                         .where(Batch.tenant_id == tenant_id)))  # type: ignore[return-value]


def assert_refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


@pytest.fixture
def tenant(settings: Settings) -> tuple[int, str]:
    """A tenant of this test alone: its id and a key."""
    with session_scope() as s:
        row, secret = create_key(s, tenant=f"sec-{secrets.token_hex(4)}")
        return row.tenant_id, secret


@pytest.fixture
def limits(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """limits(name=value, ...): limit settings for this test only."""

    def apply(**values: Any) -> None:
        for name, value in values.items():
            monkeypatch.setattr(get_settings(), name, value)

    return apply


@pytest.fixture
def hold(limits: Callable[..., None]) -> Iterator[Callable[[int, int], None]]:
    """hold(tenant_id, n): n more unfinished jobs of the tenant, held running by this test.

    They are claimed in the transaction that submits them, so no worker can take them
    first; the lease outlasts the test, and they are cancelled at its end.
    """
    limits(lease_seconds=600)
    held: list[int] = []

    def make(tenant_id: int, n: int) -> None:
        with session_scope() as s:
            ids = [jobs.submit(s, tenant_id=tenant_id, kind="encode", params={"text": "held"},
                               actor="test")[0].id for _ in range(n)]
            _, locked = jobs.lock_queued(s, ids, worker="test-holder", inline_ok=False)
            jobs.move_counters(s, jobs.claim(s, locked, worker="test-holder"))
            assert len(locked) == n
        held.extend(ids)

    yield make
    with session_scope() as s:
        for job_id in held:
            jobs.cancel(s, job_id, actor="test")


# --- keys ---------------------------------------------------------------------


def test_revoked_key_fails_at_once(api: TestClient, admin_key: str) -> None:
    made = api.post("/v1/keys", json={"tenant": "sec-revoke"}, headers=auth(admin_key)).json()
    assert api.get("/v1/jobs", headers=auth(made["key"])).status_code == 200
    assert api.delete(f"/v1/keys/{made['id']}", headers=auth(admin_key)).status_code == 204
    for r in (api.get("/v1/jobs", headers=auth(made["key"])),
              api.post("/v1/jobs", json=ENCODE, headers=auth(made["key"]))):
        assert_refused(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    assert_refused(api.delete(f"/v1/keys/{made['id']}", headers=auth(admin_key)), 404,
                   "not_found")


def test_secret_is_returned_once_and_stored_as_a_hash(api: TestClient, admin_key: str) -> None:
    made = api.post("/v1/keys", json={"tenant": "sec-once", "name": "ci"}, headers=auth(admin_key))
    assert made.status_code == 201
    secret = made.json()["key"]
    listed = api.get("/v1/keys", params={"tenant": "sec-once"}, headers=auth(admin_key))
    assert [k["id"] for k in listed.json()] == [made.json()["id"]]
    assert secret not in listed.text and "key" not in listed.json()[0]
    assert secret.startswith(listed.json()[0]["prefix"]) and len(secret) >= 40
    with session_scope() as s:
        row = s.execute(text("SELECT * FROM api_keys WHERE id = :id"),
                        {"id": made.json()["id"]}).mappings().one()
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in str(value) for value in row.values())


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer   ", "Basic b3BzOnNlY3JldA==", "bq_no-scheme",
    "Bearer bq_not-a-key", "Bearer " + "x" * 8000,
])
def test_missing_or_bad_credentials_are_401_everywhere(api: TestClient, header: str | None
                                                       ) -> None:
    headers = {} if header is None else {"Authorization": header}
    paths = api.app.openapi()["paths"]  # type: ignore[attr-defined]
    routes = [(m, p) for p, ops in paths.items() if p.startswith("/v1") for m in ops]
    assert len(routes) >= 14
    for method, path in routes:
        r = api.request(method, path.replace("{job_id}", "1").replace("{batch_id}", "1")
                        .replace("{key_id}", "1"), headers=headers)
        assert_refused(r, 401, "unauthorized")


# --- per-tenant limits ----------------------------------------------------------


def test_rate_limit_is_429_with_retry_after_and_stores_nothing(
    api: TestClient, tenant: tuple[int, str], limits: Callable[..., None]
) -> None:
    tenant_id, key = tenant
    limits(rate_limit_per_second=0.5, rate_limit_burst=2)
    for _ in range(2):
        assert api.post("/v1/jobs", json=ENCODE, headers=auth(key)).status_code == 201
    before = stored(tenant_id)
    single = api.post("/v1/jobs", json=ENCODE, headers=auth(key))
    batch = api.post("/v1/batches", content=ndjson(1), headers={**auth(key), **NDJSON})
    for r in (single, batch):
        assert_refused(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 2
        assert "0.5 jobs/s" in r.json()["error"]["message"]
    assert stored(tenant_id) == before


def test_bucket_refills_at_the_rate(
    api: TestClient, tenant: tuple[int, str], limits: Callable[..., None]
) -> None:
    limits(rate_limit_per_second=1, rate_limit_burst=1)
    key = tenant[1]
    assert api.post("/v1/jobs", json=ENCODE, headers=auth(key)).status_code == 201
    refused = api.post("/v1/jobs", json=ENCODE, headers=auth(key))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    time.sleep(1.05)
    assert api.post("/v1/jobs", json=ENCODE, headers=auth(key)).status_code == 201


def test_refused_params_and_replays_take_no_token(
    api: TestClient, tenant: tuple[int, str], limits: Callable[..., None]
) -> None:
    tenant_id, key = tenant
    limits(rate_limit_per_second=0.01, rate_limit_burst=1)
    bad = api.post("/v1/jobs", json={"kind": "encode", "params": {}}, headers=auth(key))
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "params.text"
    unknown = api.post("/v1/jobs", json={"kind": "decode", "params": {}}, headers=auth(key))
    assert unknown.status_code == 422
    # The one token is still there for the first real submission...
    first = api.post("/v1/jobs", json={**ENCODE, "idempotency_key": "once"}, headers=auth(key))
    assert first.status_code == 201, first.text
    # ...and a replay of it is answered from PostgreSQL with an empty bucket.
    replay = api.post("/v1/jobs", json={**ENCODE, "idempotency_key": "once"}, headers=auth(key))
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    assert_refused(api.post("/v1/jobs", json=ENCODE, headers=auth(key)), 429, "rate_limited")
    assert stored(tenant_id) == (1, 0)


def test_batch_bigger_than_the_burst_waits_for_a_full_bucket_then_leaves_debt(
    api: TestClient, tenant: tuple[int, str], limits: Callable[..., None]
) -> None:
    tenant_id, key = tenant
    limits(rate_limit_per_second=1, rate_limit_burst=3)
    assert api.post("/v1/jobs", json=ENCODE, headers=auth(key)).status_code == 201
    before = stored(tenant_id)
    early = api.post("/v1/batches", content=ndjson(5), headers={**auth(key), **NDJSON})
    assert_refused(early, 429, "rate_limited")
    assert early.headers["retry-after"] == "1"
    assert stored(tenant_id) == before
    time.sleep(1)
    full = api.post("/v1/batches", content=ndjson(5), headers={**auth(key), **NDJSON})
    assert full.status_code == 202 and full.json()["accepted"] == 5
    # 3 tokens, 5 taken: 2 owed, so the next job waits (1 + 2) / 1 = 3 s.
    after = api.post("/v1/jobs", json=ENCODE, headers=auth(key))
    assert after.status_code == 429 and after.headers["retry-after"] == "3"


def test_cap_refuses_a_batch_whole_and_a_single_job(
    api: TestClient, tenant: tuple[int, str], limits: Callable[..., None],
    hold: Callable[[int, int], None],
) -> None:
    tenant_id, key = tenant
    limits(max_queued_per_tenant=5)
    hold(tenant_id, 4)
    before = stored(tenant_id)
    over = api.post("/v1/batches", content=ndjson(2), headers={**auth(key), **NDJSON})
    assert_refused(over, 429, "rate_limited")
    assert "cap of 5" in over.json()["error"]["message"] and "retry-after" in over.headers
    never = api.post("/v1/batches", json={"jobs": [ENCODE] * 6}, headers=auth(key))
    assert_refused(never, 413, "too_large")
    assert "split" in never.json()["error"]["message"]
    hold(tenant_id, 1)
    single = api.post("/v1/jobs", json=ENCODE, headers=auth(key))
    assert_refused(single, 429, "rate_limited")
    assert "retry-after" in single.headers
    assert stored(tenant_id) == (before[0] + 1, before[1])  # only the held job


def test_a_batch_is_not_counted_twice_against_the_cap(
    api: TestClient, tenant: tuple[int, str], limits: Callable[..., None],
    hold: Callable[[int, int], None],
) -> None:
    tenant_id, key = tenant
    limits(max_queued_per_tenant=4)
    hold(tenant_id, 1)
    r = api.post("/v1/batches", content=ndjson(3), headers={**auth(key), **NDJSON})
    assert r.status_code == 202 and r.json()["accepted"] == 3


def test_retry_respects_the_cap(
    api: TestClient, tenant: tuple[int, str], limits: Callable[..., None],
    hold: Callable[[int, int], None],
) -> None:
    tenant_id, key = tenant
    with session_scope() as s:  # cancelled before any worker could see it
        job_id = jobs.submit(s, tenant_id=tenant_id, kind="encode", params={"text": "r"},
                             actor="test")[0].id
        assert jobs.cancel(s, job_id, actor="test")
    limits(max_queued_per_tenant=2)
    hold(tenant_id, 2)
    assert_refused(api.post(f"/v1/jobs/{job_id}/retry", headers=auth(key)), 429, "rate_limited")
    assert api.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["status"] == "cancelled"


# --- size limits and hostile input -------------------------------------------------

EVAL = {"left": {"text": "a b", "confidence": 0.5}, "right": {"text": "a c", "confidence": 0.5}}

TOO_LONG = [
    ({**ENCODE, "ref": "r" * 201}, "ref"),
    ({**ENCODE, "idempotency_key": "k" * 201}, "idempotency_key"),
    ({"kind": "e" * 65, "params": {}}, "kind"),
    ({"kind": "encode", "params": {"text": "x" * 65_537, "codec": "hd"}}, "params.text"),
    ({"kind": "evaluate", "params": {"cycles": [{**EVAL, "left": {
        "text": "a", "confidence": 0.5, "label": "l" * 101}}]}}, "params.cycles.0.left.label"),
    ({"kind": "evaluate", "params": {"cycles": [{**EVAL, "right": {
        "text": "a" * 20_001, "confidence": 0.5}}]}}, "params.cycles.0.right.text"),
]

UNSTORABLE = [
    ({**ENCODE, "ref": "a\x00b"}, "ref"),
    ({**ENCODE, "idempotency_key": "\ud800"}, "idempotency_key"),
    ({"kind": "encode", "params": {"text": "nul\x00", "codec": "hd"}}, "params.text"),
    ({"kind": "enumerate", "params": {"query": "q\x00"}}, "params.query"),
]


def fields(r: httpx.Response) -> list[str]:
    return [d["field"] for d in r.json()["error"]["details"]]


@pytest.mark.parametrize(("body", "field"), TOO_LONG + UNSTORABLE,
                         ids=[f"{i}-{f}" for i, (_, f) in enumerate(TOO_LONG + UNSTORABLE)])
def test_each_text_field_is_limited_and_named(
    api: TestClient, tenant: tuple[int, str], body: dict[str, Any], field: str
) -> None:
    # json.dumps escapes what httpx would refuse to encode (a lone surrogate).
    headers = {**auth(tenant[1]), "Content-Type": "application/json"}
    r = api.post("/v1/jobs", content=json.dumps(body), headers=headers)
    assert_refused(r, 422, "invalid")
    assert field in fields(r)
    upload = (json.dumps(body) + "\n").encode() + ndjson(1)
    batch = api.post("/v1/batches", content=upload, headers={**auth(tenant[1]), **NDJSON})
    assert batch.json()["accepted"] == 1 and batch.json()["rejected_lines"][0]["line"] == 1
    assert stored(tenant[0]) == (1, 1)


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), [
    ("post", "/v1/jobs", {"json": ENCODE, "headers": {"Idempotency-Key": "k" * 201}},
     "header.idempotency-key"),
    ("post", "/v1/keys", {"json": {"tenant": "t" * 101}}, "tenant"),
    ("post", "/v1/keys", {"json": {"tenant": "ok", "name": "n" * 201}}, "name"),
    ("post", "/v1/keys", {"json": {"tenant": "ok", "name": "\x00"}}, "name"),
    ("get", "/v1/keys", {"params": {"tenant": "a\x00"}}, "query.tenant"),
    ("get", f"/v1/jobs/{2**64}", {}, "path.job_id"),
    ("post", f"/v1/batches/{2**64}/cancel", {}, "path.batch_id"),
    ("delete", "/v1/keys/0", {}, "path.key_id"),
    ("get", "/v1/jobs", {"params": {"batch_id": 2**70}}, "query.batch_id"),
])
def test_hostile_parameters_are_422_not_500(
    api: TestClient, admin_key: str, method: str, path: str, kwargs: dict[str, Any], field: str
) -> None:
    headers = {**auth(admin_key), **kwargs.pop("headers", {})}
    r = api.request(method.upper(), path, headers=headers, **kwargs)
    assert_refused(r, 422, "invalid")
    assert field in fields(r)


def test_overlong_ndjson_line_is_rejected_with_its_number(
    api: TestClient, tenant: tuple[int, str], limits: Callable[..., None]
) -> None:
    limits(max_line_bytes=1024)
    long_line = {"kind": "encode", "params": {"text": "y" * 2000, "codec": "hd"}}
    body = ndjson(1) + ndjson(1, long_line) + ndjson(1)
    r = api.post("/v1/batches", content=body, headers={**auth(tenant[1]), **NDJSON})
    assert r.status_code == 202
    assert (r.json()["accepted"], r.json()["rejected"]) == (2, 1)
    assert r.json()["rejected_lines"] == [{"line": 2, "reason": "line exceeds 1024 bytes"}]


# --- the api as a real server: bodies are cut off, secrets stay out of the logs ---------


@dataclass
class Server:
    """`babelq api` in a subprocess, its output in a file."""

    url: str
    port: int
    log: Path


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`babelq api` on a free port with small body limits and debug logging."""
    port, log = free_port(), tmp_path_factory.mktemp("api") / "api.log"
    env = {**os.environ, **SERVER_LIMITS}
    with log.open("wb") as out:
        process = subprocess.Popen([*CLI, "api", "--port", str(port), "--log-level", "debug"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _serving(port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "api did not start"
            time.sleep(0.2)
        yield Server(f"http://127.0.0.1:{port}", port, log)
    finally:
        stop_process(process)


def _serving(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def raw_exchange(port: int, head: str, chunks: list[bytes]) -> tuple[bytes, bool]:
    """Send a request head and body chunks (never the end of the body); the answer, and
    whether the server then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the server stopped reading and closed: that is the point
                break
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                return answer, True
            answer += part
        try:
            return answer, sock.recv(1) == b""
        except ConnectionResetError:
            return answer, True
        except TimeoutError:
            return answer, False


def _head(path: str, key: str, framing: str) -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/x-ndjson\r\n{framing}\r\n\r\n")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_declared_oversize_body_is_refused_unread(server: Server, key_a: str, path: str) -> None:
    started = time.monotonic()
    answer, closed = raw_exchange(server.port, _head(path, key_a, "Content-Length: 1000000000"),
                                  [])
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert closed and time.monotonic() - started < 5


@pytest.mark.parametrize(("path", "limit"), [("/v1/jobs", 4096), ("/v1/batches", 65536)])
def test_chunked_body_over_the_limit_is_cut_off(
    server: Server, tenant: tuple[int, str], path: str, limit: int
) -> None:
    line = ndjson(1)
    chunk = line * (1024 // len(line))
    frames = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * (2 * limit // len(chunk))
    answer, closed = raw_exchange(server.port, _head(path, tenant[1], "Transfer-Encoding: chunked"),
                                  frames)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert f"exceeds {limit} bytes".encode() in answer and closed
    assert stored(tenant[0]) == (0, 0)


def test_secrets_never_reach_the_logs(server: Server, admin_key: str) -> None:
    made = httpx.post(f"{server.url}/v1/keys", json={"tenant": "sec-logs"},
                      headers=auth(admin_key)).json()
    assert httpx.get(f"{server.url}/v1/jobs", headers=auth(made["key"])).status_code == 200
    httpx.get(f"{server.url}/v1/keys", headers=auth(admin_key))
    assert httpx.get(f"{server.url}/v1/jobs", headers=auth("bq_guess")).status_code == 401
    httpx.delete(f"{server.url}/v1/keys/{made['id']}", headers=auth(admin_key))
    assert httpx.get(f"{server.url}/v1/jobs", headers=auth(made["key"])).status_code == 401
    time.sleep(0.5)
    log = server.log.read_text()
    assert '"GET /v1/jobs HTTP/1.1" 401' in log  # access lines are there to look at
    for secret in (admin_key, made["key"], made["key"][10:], "bq_guess"):
        assert secret not in log
    assert "authorization" not in log.lower() and "bearer" not in log.lower()


# --- production refusals ---------------------------------------------------------------


#: Settings of a production api that may start.
SAFE_API: dict[str, Any] = {"env": "production", "database_url": "postgresql://babelq:Xq3-long-secret@db/babelq",
            "redis_url": "redis://:Rk7-long-secret@redis:6379/0", "plugins": ""}


@pytest.mark.parametrize(("unsafe", "named"), [
    ({"database_url": None, "redis_url": None}, ["BABELQ_DATABASE_URL", "BABELQ_REDIS_URL"]),
    ({"database_url": "postgresql://babelq:changeme@db/babelq"}, ["BABELQ_DATABASE_URL"]),
    ({"redis_url": "redis://:@redis:6379/0"}, ["BABELQ_REDIS_URL"]),
    # No password at all: anyone who reaches the server may read and write every job.
    ({"database_url": "postgresql://babelq@db/babelq"}, ["BABELQ_DATABASE_URL"]),
    ({"redis_url": "redis://redis:6379/0"}, ["BABELQ_REDIS_URL"]),
    ({"plugins": "tests.plugins.testkinds"}, ["BABELQ_PLUGINS"]),
])
def test_api_refuses_unsafe_production_settings(unsafe: dict[str, Any], named: list[str]
                                                ) -> None:
    # Explicit Settings, not the process-wide ones: the worker and relay threads of this
    # session read those concurrently.
    from app.api.main import refuse_unsafe

    refuse_unsafe(Settings(**SAFE_API))
    with pytest.raises(SystemExit) as refused:
        refuse_unsafe(Settings(**{**SAFE_API, **unsafe}))
    assert all(name in str(refused.value) for name in named), refused.value
    refuse_unsafe(Settings(**{**SAFE_API, **unsafe, "env": "development"}))


def test_api_command_exits_in_production_with_plugins(settings: Settings) -> None:
    port = free_port()
    env = {**os.environ, "BABELQ_ENV": "production", **testkinds.ENV}
    done = subprocess.run([*CLI, "api", "--port", str(port)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "BABELQ_PLUGINS" in done.stderr + done.stdout
    # Refused before uvicorn started (a check after exit that the port is closed would be
    # true either way).
    assert "Uvicorn running" not in done.stderr + done.stdout


@pytest.mark.parametrize(("user", "password", "problem"), [
    (None, None, "BABELQ_FLOWER_USER"),
    ("ops", "", "BABELQ_FLOWER_PASSWORD"),
    ("ops", "changeme", "placeholder"),
    ("ops", "Short-pw1", "shorter than 12"),
    ("admin", "a-long-enough-password", "BABELQ_FLOWER_USER"),
])
def test_flower_credentials_are_checked_in_production(
    user: str | None, password: str | None, problem: str
) -> None:
    production = Settings(env="production", flower_user=user, flower_password=password)
    assert any(problem in p for p in production.production_problems("flower"))
    development = Settings(env="development", flower_user=user, flower_password=password)
    assert development.production_problems("flower") == []


@pytest.mark.parametrize(("env", "said"), [
    ({"BABELQ_ENV": "production", "BABELQ_FLOWER_PASSWORD": "changeme"}, "placeholder"),
    ({"BABELQ_FLOWER_USER": "", "BABELQ_FLOWER_PASSWORD": ""}, "BABELQ_FLOWER_USER"),
])
def test_flower_command_refuses_to_start(settings: Settings, env: dict[str, str], said: str
                                         ) -> None:
    done = subprocess.run([*CLI, "flower", "--port", str(free_port())],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert said in done.stderr + done.stdout


def test_metrics_need_an_admin_key(api: TestClient, admin_key: str, key_a: str) -> None:
    """Metrics span every tenant, so a tenant key may not read them."""
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers=auth(key_a)).status_code == 403
    r = api.get("/metrics", headers=auth(admin_key))
    assert r.status_code == 200 and "babelq_queue_backlog" in r.text
