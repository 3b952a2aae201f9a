"""One real stack for the console tests: api, one worker and the relay as OS processes.

They run against the session's PostgreSQL database and Redis, with the test-only job
kinds on (a poison job goes dead at once). One stack per module, stopped at its end: its
worker must not take the jobs of later tests, which bring their own worker (pytest's
"package" scope lasts the whole session in a directory without __init__.py).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from app import jobs
from app.config import Settings
from app.ops.supervisor import free_port
from app.store.db import normalize_url
from tests.faults.stack import BABELQ, QUEUES, TIMINGS, Proc, babelq_env, wait_for
from tests.plugins import testkinds

pytestmark = pytest.mark.integration


@dataclass
class ConsoleStack:
    """The processes, their URL, keys of two tenants and an admin, and a database engine."""

    api_url: str
    procs: dict[str, Proc]
    env: dict[str, str]
    engine: Engine
    keys: dict[str, str]

    def client(self, key: str | None = None) -> httpx.Client:
        """An HTTP client of the api (with a bearer key, for the JSON api)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.api_url, timeout=60, headers=headers)

    def submit(self, key: str, **job: Any) -> int:
        """Submit one job through the api; its id."""
        with self.client(key) as c:
            r = c.post("/v1/jobs", json=job)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    @contextmanager
    def paused_worker(self) -> Iterator[None]:
        """Freeze the worker (SIGSTOP): what is submitted meanwhile stays queued."""
        worker = self.procs["worker"]
        worker.signal_group(signal.SIGSTOP)
        try:
            yield
        finally:
            worker.signal_group(signal.SIGCONT)
            if not worker.alive:  # a Celery worker may exit when its broker link drops
                worker.start(self.env)
                worker.wait_ready()

    def status(self, job_id: int) -> str:
        """A job's status, read from PostgreSQL."""
        with self.engine.connect() as conn:
            return str(conn.execute(text("SELECT status FROM jobs WHERE id = :i"),
                                    {"i": job_id}).scalar_one())

    def wait_status(self, job_id: int, status: str, timeout: float = 60) -> None:
        """Wait until the job has this status."""
        wait_for(f"job {job_id} to be {status}", lambda: self.status(job_id) == status, timeout)

    def audit_actors(self, job_id: int) -> list[tuple[str, str]]:
        """(event type, actor) of the job's audit trail, in order."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT event_type, actor FROM audit_events "
                                     "WHERE job_id = :i ORDER BY seq"), {"i": job_id})
            return [(r.event_type, r.actor) for r in rows]

    def drain(self) -> None:
        """Wait until the console tenants' jobs have all ended, then cancel what remains:
        later tests share this database, and a job left queued is in their backlog."""
        unfinished = ("SELECT count(*) FROM jobs j JOIN tenants t ON t.id = j.tenant_id "
                      "WHERE t.name LIKE 'console-%' AND j.status IN ('queued', 'running')")

        def count() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(text(unfinished)).scalar_one())

        with contextlib.suppress(AssertionError):
            wait_for("the console tests' jobs to end", lambda: count() == 0, 60)
        with Session(self.engine) as session:
            for job_id in session.execute(text(unfinished.replace("count(*)", "j.id"))).scalars():
                jobs.cancel(session, job_id, actor="console-tests")
            session.commit()

    def key_id(self, name: str) -> int:
        """The id of one of the stack's keys."""
        from app.jobs.keys import hash_key

        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT id FROM api_keys WHERE key_hash = :h"),
                                    {"h": hash_key(self.keys[name])}).scalar_one())


def _make_keys(engine: Engine) -> dict[str, str]:
    from sqlalchemy.orm import Session

    from app.jobs.keys import create_key

    keys = {}
    with Session(engine) as session:
        for name, tenant, admin in (("admin", "console-ops", True), ("a", "console-a", False),
                                    ("b", "console-b", False)):
            keys[name] = create_key(session, tenant=tenant, admin=admin)[1]
        session.commit()
    return keys


@pytest.fixture(scope="module")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """api, worker and relay processes, started once per test module."""
    work = tmp_path_factory.mktemp("console-stack")
    port = free_port()
    env = {**babelq_env(home=str(work / "home"), database_url=str(settings.database_url),
                        redis_url=str(settings.redis_url), **TIMINGS), **testkinds.ENV}
    procs = {
        "api": Proc("api", [BABELQ, "api", "--port", str(port), "--log-level", "warning"],
                    work / "api.log"),
        "relay": Proc("relay", [BABELQ, "relay"], work / "relay.log"),
        "worker": Proc("worker", [BABELQ, "worker", "-Q", QUEUES, "-c", "1", "-n", "console@%h",
                                  "--loglevel", "info"], work / "worker.log", b" ready."),
    }
    engine = create_engine(normalize_url(str(settings.database_url)))
    for proc in procs.values():
        proc.start(env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the api", _answers(url, procs["api"]), 60)
        procs["worker"].wait_ready()
        stack = ConsoleStack(url, procs, env, engine, _make_keys(engine))
        yield stack
        stack.drain()
    finally:
        for proc in procs.values():
            proc.stop()
        engine.dispose()
        shutil.rmtree(work / "home", ignore_errors=True)


def _answers(url: str, api: Proc) -> Callable[[], bool]:
    def check() -> bool:
        if not api.alive:
            raise AssertionError(f"api exited:\n{api.tail()}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    return check


def login(stack: ConsoleStack, key_name: str) -> httpx.Client:
    """A client logged in to the console with one of the stack's keys (cookie held)."""
    client = stack.client()
    form = client.get("/console/login")
    csrf = _hidden(form.text, "csrf")
    r = client.post("/console/login", data={"key": stack.keys[key_name], "csrf": csrf})
    assert r.status_code == 303, r.text
    return client


def _hidden(html: str, name: str) -> str:
    marker = f'name="{name}" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


def csrf_of(client: httpx.Client) -> str:
    """The session's CSRF token, as the console's pages carry it."""
    return _hidden(client.get("/console").text, "csrf")

