"""`babelq` as users run it: real api, worker and relay processes, and `babelq up` itself."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
import redis

from app.config import Settings
from app.ops.supervisor import free_port, stop_process
from tests.plugins import testkinds

pytestmark = pytest.mark.integration

HELLO_WORLD_ADDRESS = "107310278aacfa5c75fa01d37b96036c"
CLI = [sys.executable, "-m", "app.cli"]


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll check until it holds, or fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@dataclass
class Stack:
    """The api, worker and relay started as `babelq` subprocesses, and their environment."""

    url: str
    env: dict[str, str]
    logs: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `babelq ARGS` against this stack."""
        return subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def ok(self, *args: str) -> str:
        """Run `babelq ARGS`, which must succeed; its stdout."""
        done = self.run(*args)
        assert done.returncode == 0, f"babelq {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout


def _private_redis_db(url: str) -> str:
    # Another Redis database number: in-process workers of other test modules consume
    # the session's queues, and must not take (or starve) this module's jobs.
    base, _, db = url.rpartition("/")
    number = (int(db) + 1) % 16 if db.isdigit() else 1
    with redis.Redis.from_url(f"{base}/{number}") as client:
        client.flushdb()
    return f"{base}/{number}"


@pytest.fixture(scope="module")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`babelq api`, `babelq worker` and `babelq relay` on a free port, for this module."""
    from app.jobs.keys import create_key
    from app.store.db import session_scope

    port, logs = free_port(), tmp_path_factory.mktemp("cli-logs")
    env = {
        **os.environ,
        "BABELQ_REDIS_URL": _private_redis_db(str(settings.redis_url)),
        "BABELQ_API_URL": f"http://127.0.0.1:{port}",
        **testkinds.ENV,
    }
    commands = {
        "api": ["api", "--port", str(port), "--log-level", "warning"],
        "worker": ["worker", "-c", "2", "-n", "cli-test@%h", "--loglevel", "warning"],
        "relay": ["relay"],
    }
    procs = {}
    for name, args in commands.items():
        with (logs / f"{name}.log").open("wb") as log:
            procs[name] = subprocess.Popen([*CLI, *args], env=env, stdout=log, stderr=log)
    try:
        wait_for("the api to be ready", lambda: _ready(env["BABELQ_API_URL"], procs, logs), 60)
        with session_scope() as session:
            env["BABELQ_API_KEY"] = create_key(session, tenant="cli", admin=True)[1]
        yield Stack(env["BABELQ_API_URL"], env, logs)
    finally:
        for process in procs.values():
            stop_process(process)


def _ready(url: str, procs: dict[str, subprocess.Popen[bytes]], logs: Path) -> bool:
    for name, process in procs.items():
        if process.poll() is not None:
            raise AssertionError(f"{name} exited: {(logs / f'{name}.log').read_text()[-3000:]}")
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_keys_create_prints_only_a_key_that_authenticates(stack: Stack) -> None:
    out = stack.ok("keys", "create", "--tenant", "cli-scripts", "--name", "ci")
    key = out.strip()
    assert out == key + "\n" and key.startswith("bq_") and " " not in key
    answer = httpx.get(f"{stack.url}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200
    listed = json.loads(stack.ok("keys", "list", "--tenant", "cli-scripts", "--json"))
    assert [(k["name"], key.startswith(k["prefix"])) for k in listed] == [("ci", True)]


def test_tenants_set_then_list(stack: Stack) -> None:
    stack.ok("keys", "create", "--tenant", "cli-fair")
    out = stack.ok("tenants", "set", "cli-fair", "--weight", "3", "--max-running", "200")
    assert "weight 3, max running 200" in out
    listed = {t["name"]: t for t in json.loads(stack.ok("tenants", "list", "--json"))}
    assert (listed["cli-fair"]["weight"], listed["cli-fair"]["max_running"]) == (3.0, 200)
    stack.ok("tenants", "set", "cli-fair", "--unlimited")
    listed = {t["name"]: t for t in json.loads(stack.ok("tenants", "list", "--json"))}
    assert listed["cli-fair"]["max_running"] is None
    unknown = stack.run("tenants", "set", "no-such-tenant", "--weight", "2")
    assert unknown.returncode == 1 and "no tenant" in unknown.stderr + unknown.stdout


def test_submit_and_wait_gives_the_known_answer(stack: Stack) -> None:
    out = stack.ok("submit", "encode", "--param", "text=hello world", "--wait", "--json")
    job = json.loads(out)
    assert job["status"] == "succeeded"
    assert job["params"]["text"] == "hello world"
    assert job["result"]["address"].startswith(HELLO_WORLD_ADDRESS)
    assert len(job["result"]["address"]) == 3887


def test_status_and_audit_verify_of_a_finished_job(stack: Stack) -> None:
    job = json.loads(
        stack.ok(
            "submit",
            "enumerate",
            "--param",
            "query=hello world",
            "--param",
            "max_results=5",
            "--wait",
            "--json",
        )
    )
    assert job["result"]["total"] == 5  # "5" reached the api as a number
    shown = json.loads(stack.ok("status", str(job["id"]), "--json"))
    assert (shown["id"], shown["status"]) == (job["id"], "succeeded")
    assert "succeeded" in stack.ok("status", str(job["id"]))
    assert "all intact" in stack.ok("audit", "verify", str(job["id"]))
    assert "all intact" in stack.ok("audit", "verify", "--all")


def test_cancel_then_retry_and_a_refused_cancel(stack: Stack) -> None:
    # Long enough that the cancel (a new `babelq` process, seconds to start on a loaded
    # machine) meets it queued or running, not already succeeded.
    job = json.loads(stack.ok("submit", "test_sleep", "--param", "seconds=8", "--json"))
    cancelled = json.loads(stack.ok("cancel", str(job["id"]), "--json"))
    assert cancelled["status"] == "cancelled"
    again = stack.run("cancel", str(job["id"]))
    assert again.returncode == 1
    assert "409" in again.stderr and "Traceback" not in again.stderr
    retried = json.loads(stack.ok("retry", str(job["id"]), "--json"))
    assert retried["status"] in ("queued", "running")
    finished = json.loads(stack.ok("wait", str(job["id"]), "--timeout", "60", "--json"))
    assert finished["status"] == "succeeded" and finished["result"] == {"slept": 8.0}


def test_invalid_params_are_refused_with_the_field_named(stack: Stack) -> None:
    done = stack.run("submit", "encode", "--param", "text=", "--wait")
    assert done.returncode == 1
    assert "422" in done.stderr and "params.text" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_finishes_with_every_job_succeeded(stack: Stack) -> None:
    jobs = json.loads(stack.ok("demo", "--json"))
    assert [j["status"] for j in jobs] == ["succeeded"] * len(jobs)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_kind.setdefault(job["kind"], []).append(job["result"])
    assert by_kind["encode"][0]["address"].startswith(HELLO_WORLD_ADDRESS)
    assert by_kind["encode"][1]["sigma_hash"] == "5b7ab4ced074ba96"
    assert by_kind["enumerate"][0]["candidates"][0]["address"].startswith("49f2b5d7b9c6d173")
    assert [r["stop_reason"] for r in by_kind["evaluate"]] == [
        None,
        "PLATEAU_DETECTED",
        "RISK_THRESHOLD_EXCEEDED",
        "CONVERGENCE_ACHIEVED",
    ]


def test_ingest_watch_and_results(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "jobs.ndjson"
    lines = [json.dumps({"kind": "encode", "params": {"text": f"job {i}"}}) for i in range(40)]
    lines.insert(10, '{"kind": "encode", "params": {"text": ""}}')
    path.write_text("\n".join(lines) + "\n")
    batch = json.loads(stack.ok("ingest", str(path), "--json"))
    assert (batch["accepted"], batch["rejected"]) == (40, 1)
    assert batch["rejected_lines"][0]["line"] == 11
    human = stack.ok("batch", str(batch["id"]), "--watch")
    assert "succeeded" in human and "100.0%" in human
    results = [json.loads(line) for line in stack.ok("results", str(batch["id"])).splitlines()]
    assert [r["line"] for r in results] == [n for n in range(1, 42) if n != 11]
    assert {r["status"] for r in results} == {"succeeded"}


# `babelq up` -------------------------------------------------------------------------


class Output:
    """A process's stdout, collected line by line in a thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    @property
    def text(self) -> str:
        """Everything read so far."""
        return "".join(self.lines)


def _tamper(database_url: str, job_id: int) -> None:
    """Rewrite one audit event the way only a superuser could: triggers off."""
    from app.ops.embedded import libpq_url

    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE audit_events SET details = '{\"forged\": true}' WHERE job_id = %s AND seq = 2",
            (job_id,),
        )


def _descendants_and_servers(pid: int, home: Path) -> list[psutil.Process]:
    procs = psutil.Process(pid).children(recursive=True)
    redis_pid = json.loads((home / "redis" / "redis-server.json").read_text())["pid"]
    pg_pid = int((home / "pg" / "postmaster.pid").read_text().splitlines()[0])
    return [*procs, psutil.Process(redis_pid), psutil.Process(pg_pid)]


def test_up_runs_the_whole_stack_and_ctrl_c_stops_it() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bq-up-"))  # short: PostgreSQL's socket lives here
    home, api_port, flower_port = workdir / ".babelq", free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BABELQ_")}
    env["BABELQ_HOME"] = str(home)
    up = subprocess.Popen(
        [*CLI, "up", "--port", str(api_port), "--flower-port", str(flower_port)],
        env=env,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Output(up.stdout)
    try:
        wait_for(
            "`babelq up` to print its URLs",
            lambda: "Ctrl-C" in out.text or up.poll() is not None,
            240,
        )
        assert up.poll() is None, out.text
        _check_up(workdir, home, env, api_port, flower_port, out.text)
        watched = _descendants_and_servers(up.pid, home)
        up.send_signal(signal.SIGINT)
        assert up.wait(90) == 0, out.text
        _, alive = psutil.wait_procs(watched, timeout=15)
        assert not alive, f"still running after Ctrl-C: {[p.cmdline() for p in alive]}"
    finally:
        stop_process(up, 60)
        shutil.rmtree(workdir, ignore_errors=True)


def _check_up(
    workdir: Path, home: Path, env: dict[str, str], api_port: int, flower_port: int, text: str
) -> None:
    creds_path = home / "credentials.json"
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
    creds = json.loads(creds_path.read_text())
    assert set(creds) == {
        "api_url",
        "api_key",
        "flower_url",
        "flower_user",
        "flower_password",
        "database_url",
        "redis_url",
    }
    assert creds["api_url"] == f"http://127.0.0.1:{api_port}" and creds["api_url"] in text
    assert creds["flower_url"] == f"http://127.0.0.1:{flower_port}" and creds["api_key"] in text
    assert f"{creds['api_url']}/docs" in text
    assert httpx.get(f"{creds['api_url']}/ready", timeout=5).status_code == 200
    workers = f"{creds['flower_url']}/api/workers"
    assert httpx.get(workers, timeout=10).status_code == 401
    login = (creds["flower_user"], creds["flower_password"])
    assert httpx.get(workers, auth=login, timeout=10).status_code == 200
    # Other commands started in that directory find the stack through credentials.json.
    demo = subprocess.run(
        [*CLI, "demo", "--json"], env=env, cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert demo.returncode == 0, demo.stderr
    first = json.loads(demo.stdout)[0]["id"]
    _flower_saw_the_work(creds["flower_url"], login, {j["id"] for j in json.loads(demo.stdout)})
    _tamper(creds["database_url"], first)
    audit = subprocess.run(
        [*CLI, "audit", "verify", str(first)],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audit.returncode == 1
    assert f"job {first} at seq 2" in audit.stdout


def _flower_saw_the_work(flower: str, login: tuple[str, str], job_ids: set[int]) -> None:
    """Flower's own API lists the worker and the chunk tasks that ran the demo's jobs."""
    assert httpx.get(f"{flower}/api/tasks", timeout=10).status_code == 401
    deadline = time.monotonic() + 30
    ran: set[int] = set()
    while time.monotonic() < deadline and not job_ids <= ran:
        tasks = httpx.get(f"{flower}/api/tasks", auth=login, timeout=10).json()
        ran = {job for t in tasks.values()
               if t.get("name") == "babelq.run_chunk" and t.get("state") == "SUCCESS"
               for job in ast.literal_eval(t.get("args") or "([],)")[0]}
        time.sleep(0.5)
    assert job_ids <= ran, f"Flower saw chunks {ran}, not all of {job_ids}"
    broker = httpx.get(f"{flower}/broker", auth=login, timeout=20)  # `up`'s Flower too
    assert broker.status_code == 200, broker.text[:300]
    assert all(f"<td>{queue}</td>" in broker.text for queue in ("encode", "enumerate", "evaluate"))
    workers = httpx.get(f"{flower}/api/workers", params={"refresh": "1"}, auth=login,
                        timeout=20).json()
    assert any(set((info.get("active_queues") and [q["name"] for q in info["active_queues"]])
                   or []) >= {"encode", "enumerate", "evaluate"} for info in workers.values())


def test_up_keeps_a_live_admin_key_and_replaces_a_revoked_or_plain_one(settings: Settings) -> None:
    from app.jobs.keys import authenticate, create_key, revoke_key
    from app.ops.launcher import admin_key
    from app.store.db import session_scope

    url = str(settings.database_url)
    first = admin_key(url, [None, None])
    assert admin_key(url, [None, first]) == first
    with session_scope() as session:
        plain = create_key(session, tenant="default")[1]
        revoke_key(session, authenticate(session, first).key_id)  # type: ignore[union-attr]
    replacement = admin_key(url, [plain, first])
    assert replacement not in (plain, first)
    with session_scope() as session:
        principal = authenticate(session, replacement)
    assert principal is not None and principal.is_admin and principal.tenant == "default"


def test_webhooks_delays_and_schedules_from_the_command_line(stack: Stack) -> None:
    hook = json.loads(stack.ok("webhooks", "create", "http://127.0.0.1:9/hook",
                               "-e", "job.succeeded", "-e", "batch.completed", "--json"))
    assert hook["secret"].startswith("whsec_")
    listed = json.loads(stack.ok("webhooks", "list", "--json"))
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    stack.ok("webhooks", "delete", str(hook["id"]))

    later = json.loads(stack.ok("submit", "encode", "--param", "text=later", "--delay", "3600",
                                "--json"))
    assert later["status"] == "queued" and later["run_after"] is not None
    scheduled = json.loads(stack.ok("jobs", "--scheduled", "--json"))
    assert later["id"] in [j["id"] for j in scheduled]
    assert json.loads(stack.ok("cancel", str(later["id"]), "--json"))["status"] == "cancelled"

    made = json.loads(stack.ok("schedules", "create", "nightly", "0 3 * * *", "encode",
                               "--param", "text=nightly", "--tz", "Europe/Paris", "--json"))
    assert made["next_fire_at"] is not None and made["timezone"] == "Europe/Paris"
    stack.ok("schedules", "pause", str(made["id"]))
    [shown] = json.loads(stack.ok("schedules", "list", "--json"))
    assert shown["paused"] is True
    stack.ok("schedules", "delete", str(made["id"]))
    assert json.loads(stack.ok("schedules", "list", "--json")) == []


def _probe_command(component: str) -> list[str]:
    """The liveness probe's command of a workload in deploy/kubernetes/base."""
    import yaml

    path = Path(__file__).parents[2] / "deploy" / "kubernetes" / "base" / f"{component}.yaml"
    deployment = next(d for d in yaml.safe_load_all(path.read_text())
                      if d and d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return list(container["livenessProbe"]["exec"]["command"])


def test_worker_and_relay_keep_their_liveness_files_fresh(stack: Stack, tmp_path: Path
                                                          ) -> None:
    """The worker's event loop and the relay's loop touch BABELQ_ALIVE_FILE while they
    turn; the manifests' probe passes on such a file and fails on a stale or missing one;
    a clean stop takes the file away."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    files = {name: tmp_path / f"{name}.alive" for name in ("worker", "relay")}
    commands = {"worker": ["worker", "-c", "1", "-n", "alive-test@%h", "--loglevel", "warning"],
                "relay": ["relay"]}
    try:
        for name, args in commands.items():
            with (tmp_path / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(
                    [*CLI, *args], env={**stack.env, "BABELQ_ALIVE_FILE": str(files[name])},
                    stdout=log, stderr=log)
        for name, path in files.items():
            wait_for(f"the {name}'s liveness file", path.exists, 60)
            first = path.stat().st_mtime
            wait_for(f"the {name} to touch it again", lambda p=path, t=first: (
                p.exists() and p.stat().st_mtime > t), 30)
            probe = _probe_command("worker-encode" if name == "worker" else "relay")
            env = {**os.environ, "BABELQ_ALIVE_FILE": str(path)}
            assert subprocess.run(probe, env=env).returncode == 0, name
            stale = tmp_path / f"{name}.stale"
            stale.touch()
            os.utime(stale, (time.time() - 120, time.time() - 120))
            env["BABELQ_ALIVE_FILE"] = str(stale)
            assert subprocess.run(probe, env=env, stderr=subprocess.DEVNULL).returncode != 0
            env["BABELQ_ALIVE_FILE"] = str(tmp_path / "missing")
            assert subprocess.run(probe, env=env, stderr=subprocess.DEVNULL).returncode != 0
    finally:
        for process in procs.values():
            stop_process(process)
    assert [name for name, path in files.items() if path.exists()] == []
