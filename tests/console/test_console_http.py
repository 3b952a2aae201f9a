"""The console over plain HTTP: login, the session cookie, CSRF on every action, tenancy."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.console.conftest import ConsoleStack, csrf_of, login

pytestmark = pytest.mark.integration

ENCODE = {"kind": "encode", "params": {"text": "console http test"}}


def test_login_sets_a_strict_http_only_cookie_scoped_to_the_console(stack: ConsoleStack) -> None:
    client = stack.client()
    form = client.get("/console/login")
    assert form.status_code == 200
    assert "script-src 'self'" in form.headers["content-security-policy"]
    csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
    r = client.post("/console/login", data={"key": stack.keys["a"], "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/console"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("bq_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert stack.keys["a"] not in cookie  # an opaque session id, not the key
    assert client.get("/console").status_code == 200


def test_login_refuses_a_wrong_key_and_a_missing_login_token(stack: ConsoleStack) -> None:
    client = stack.client()
    csrf = client.get("/console/login").text.split('name="csrf" value="')[1].split('"')[0]
    wrong = client.post("/console/login", data={"key": "bq_nope", "csrf": csrf})
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.text
    forged = stack.client().post("/console/login", data={"key": stack.keys["a"], "csrf": "x"})
    assert forged.status_code == 403
    assert "bq_console=" not in "".join(forged.headers.get_list("set-cookie"))


@pytest.mark.parametrize("path", ["/console", "/console/jobs", "/console/jobs/1",
                                  "/console/batches/1", "/console/overview/live",
                                  "/console/batches/1/results.ndjson", "/console/retry-dead"])
def test_pages_need_a_login(stack: ConsoleStack, path: str) -> None:
    r = stack.client().get(path)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"


def test_an_oversized_form_is_refused_unread(stack: ConsoleStack) -> None:
    client = login(stack, "a")
    r = client.post("/console/jobs/1/cancel", data={"csrf": csrf_of(client), "pad": "x" * 20_000})
    assert r.status_code == 413


def test_a_bearer_key_alone_does_not_open_the_console(stack: ConsoleStack) -> None:
    r = stack.client(stack.keys["admin"]).get("/console")
    assert r.status_code == 303


def test_cancel_needs_the_session_and_its_csrf_token(stack: ConsoleStack) -> None:
    with stack.paused_worker():
        job = stack.submit(stack.keys["a"], **ENCODE)
        _cancel_checked(stack, job)


def _cancel_checked(stack: ConsoleStack, job: int) -> None:
    anonymous = stack.client().post(f"/console/jobs/{job}/cancel", data={"csrf": "x"})
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/console/login"
    client = login(stack, "a")
    for data in ({}, {"csrf": "forged"}, {"csrf": "é"}, {"csrf": csrf_of(login(stack, "b"))}):
        assert client.post(f"/console/jobs/{job}/cancel", data=data).status_code == 403
    assert stack.status(job) == "queued"
    r = client.post(f"/console/jobs/{job}/cancel", data={"csrf": csrf_of(client)})
    assert r.status_code == 303 and r.headers["location"].endswith("notice=cancelled")
    assert stack.status(job) == "cancelled"
    assert stack.audit_actors(job)[-1] == ("cancelled", f"key:{stack.key_id('a')}")


def test_retry_needs_the_csrf_token_and_is_audited_with_the_key(stack: ConsoleStack) -> None:
    job = stack.submit(stack.keys["a"], kind="test_fail", params={}, max_attempts=1)
    stack.wait_status(job, "dead")
    client = login(stack, "a")
    assert client.post(f"/console/jobs/{job}/retry", data={"csrf": "nope"}).status_code == 403
    assert stack.status(job) == "dead"
    r = client.post(f"/console/jobs/{job}/retry", data={"csrf": csrf_of(client)})
    assert r.headers["location"].endswith("notice=retried")
    assert ("retried", f"key:{stack.key_id('a')}") in stack.audit_actors(job)
    stack.wait_status(job, "dead")  # a poison job dies again: the retry really ran it


def test_batch_cancel_needs_the_csrf_token(stack: ConsoleStack) -> None:
    lines = "\n".join(json.dumps({**ENCODE, "params": {"text": f"line {i}"}}) for i in range(3))
    client = login(stack, "a")
    with stack.paused_worker():
        with stack.client(stack.keys["a"]) as c:
            r = c.post("/v1/batches", content=lines,
                       headers={"Content-Type": "application/x-ndjson"})
        batch = r.json()["id"]
        assert client.post(f"/console/batches/{batch}/cancel", data={}).status_code == 403
        r = client.post(f"/console/batches/{batch}/cancel", data={"csrf": csrf_of(client)})
        assert r.headers["location"].endswith("notice=batch-cancelled")
    with stack.engine.connect() as conn:
        cancelled = conn.execute(text("SELECT cancelled FROM batches WHERE id = :b"),
                                 {"b": batch}).scalar_one()
    assert cancelled == 3


def test_batch_results_download_as_ndjson_in_line_order(stack: ConsoleStack) -> None:
    lines = [{**ENCODE, "params": {"text": f"download {i}"}} for i in range(3)]
    with stack.client(stack.keys["a"]) as c:
        batch = c.post("/v1/batches", json={"jobs": lines}).json()["id"]
    with stack.engine.connect() as conn:
        ids = conn.execute(text("SELECT id FROM jobs WHERE batch_id = :b"), {"b": batch})
        for job in ids.scalars():
            stack.wait_status(job, "succeeded")
    r = login(stack, "a").get(f"/console/batches/{batch}/results.ndjson")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert "attachment" in r.headers["content-disposition"]
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert [row["line"] for row in rows] == [1, 2, 3]
    assert all(row["status"] == "succeeded" and row["result"] for row in rows)


def test_bulk_retry_needs_the_csrf_token_and_stays_in_the_tenant(stack: ConsoleStack) -> None:
    ref = "bulk-http"
    mine = [stack.submit(stack.keys["a"], kind="test_fail", params={}, max_attempts=1, ref=ref)
            for _ in range(2)]
    theirs = stack.submit(stack.keys["b"], kind="test_fail", params={}, max_attempts=1, ref=ref)
    for job in [*mine, theirs]:
        stack.wait_status(job, "dead")
    client = login(stack, "a")
    confirm = client.get("/console/retry-dead", params={"field": "ref", "q": ref})
    assert "<strong>2</strong> dead jobs match" in confirm.text
    form = {"field": "ref", "q": ref}
    assert client.post("/console/retry-dead", data=form).status_code == 403
    assert {stack.status(j) for j in mine} == {"dead"}
    done = client.post("/console/retry-dead", data={**form, "csrf": csrf_of(client)})
    assert done.status_code == 200 and "<strong>2</strong> jobs queued again" in done.text
    assert all(("retried", f"key:{stack.key_id('a')}") in stack.audit_actors(j) for j in mine)
    assert "retried" not in [t for t, _ in stack.audit_actors(theirs)]


def test_logout_needs_the_csrf_token_and_ends_the_session_on_the_server(
        stack: ConsoleStack) -> None:
    client = login(stack, "a")
    cookie = client.cookies["bq_console"]
    assert client.post("/console/logout", data={}).status_code == 403
    assert client.post("/console/logout", data={"csrf": csrf_of(client)}).status_code == 303
    replay = stack.client()
    replay.cookies.set("bq_console", cookie, domain="127.0.0.1", path="/console")
    assert replay.get("/console").status_code == 303  # the old cookie is worthless


def test_revoking_the_key_ends_its_console_sessions(stack: ConsoleStack) -> None:
    with stack.client(stack.keys["admin"]) as admin:
        created = admin.post("/v1/keys", json={"tenant": "console-a"}).json()
        client = stack.client()
        csrf = client.get("/console/login").text.split('name="csrf" value="')[1].split('"')[0]
        client.post("/console/login", data={"key": created["key"], "csrf": csrf})
        assert client.get("/console").status_code == 200
        assert admin.delete(f"/v1/keys/{created['id']}").status_code == 204
    assert client.get("/console").status_code == 303


def test_a_tenant_cannot_see_or_touch_another_tenants_jobs(stack: ConsoleStack) -> None:
    with stack.paused_worker():
        job = stack.submit(stack.keys["a"], **ENCODE)
        with stack.client(stack.keys["a"]) as c:
            batch = c.post("/v1/batches", json={"jobs": [ENCODE]}).json()["id"]
        _out_of_reach(stack, job, batch)


def _out_of_reach(stack: ConsoleStack, job: int, batch: int) -> None:
    other = login(stack, "b")
    for path in (f"/console/batches/{batch}", f"/console/batches/{batch}/live",
                 f"/console/batches/{batch}/results.ndjson"):
        assert other.get(path).status_code == 404, path
    r = other.post(f"/console/batches/{batch}/cancel", data={"csrf": csrf_of(other)})
    assert r.status_code == 404
    assert other.get(f"/console/jobs/{job}").status_code == 404
    r = other.post(f"/console/jobs/{job}/cancel", data={"csrf": csrf_of(other)})
    assert r.status_code == 404 and stack.status(job) != "cancelled"
    listing = other.get("/console/jobs", params={"field": "id", "q": str(job)})
    assert f'href="/console/jobs/{job}"' not in listing.text
    # a tenant key's query string cannot widen its view
    assert f'/console/jobs/{job}"' not in other.get("/console/jobs?tenant=console-a").text
    admin = login(stack, "admin")
    assert admin.get(f"/console/jobs/{job}").status_code == 200


def test_an_admin_filters_by_tenant(stack: ConsoleStack) -> None:
    a_job = stack.submit(stack.keys["a"], **ENCODE, ref="admin-filter-a")
    b_job = stack.submit(stack.keys["b"], **ENCODE, ref="admin-filter-b")
    admin = login(stack, "admin")
    only_a = admin.get("/console/jobs", params={"tenant": "console-a"}).text
    assert f'/console/jobs/{a_job}"' in only_a and f'/console/jobs/{b_job}"' not in only_a
    live = admin.get("/console/overview/live", params={"tenant": "console-b"})
    assert live.status_code == 200 and 'id="lanes"' in live.text


def test_the_production_cookie_is_secure(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import Settings
    from app.console import auth

    monkeypatch.setattr(auth, "get_settings", lambda: Settings(env="production"))
    assert auth._cookie_args()["secure"] is True
    monkeypatch.setattr(auth, "get_settings", lambda: Settings(env="development"))
    assert auth._cookie_args()["secure"] is False

