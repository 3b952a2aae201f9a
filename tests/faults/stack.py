"""Real servers and processes the fault tests own, so they can kill and restart them.

The suite runs its own embedded PostgreSQL and Redis (not the session's shared ones):
restarting, flushing or crashing them must not disturb any other test. api, workers
and relay run as separate OS processes, each in its own process group, exactly as
`babelq api|worker|relay` runs them in production.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, text

from app.broker.queues import KINDS, queue_keys
from app.ops.embedded import EmbeddedRedis, start_postgres, start_redis, stop_postgres
from app.ops.supervisor import free_port
from tests.plugins import testkinds

ROOT = Path(__file__).resolve().parents[2]
BABELQ = str(Path(sys.executable).with_name("babelq"))

#: Short delivery timings, so a lost lease or message costs seconds, not minutes.
TIMINGS = {
    "lease_seconds": "5",
    "requeue_after": "2",
    "relay_interval": "0.2",
    "retry_backoff_base": "0.2",
    "retry_backoff_max": "1",
    "chunk_size": "200",
    "webhook_allow_private": "true",
    "webhook_backoff_base": "0.2",
    "webhook_backoff_max": "0.5",
    "webhook_endpoint_cache_seconds": "0",
    "webhook_lease_seconds": "5",
}
#: The queues every worker consumes.
QUEUES = "encode,enumerate,evaluate"
#: The workers of the stack, two prefork processes each.
WORKERS = ("w1", "w2")


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.1) -> None:
    """Poll check() until it is truthy; hang protection only, never a performance bound."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def babelq_env(**settings: str) -> dict[str, str]:
    """This process's environment with these BABELQ_* settings and no others."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BABELQ_")}
    env["BABELQ_ENV"] = "test"
    env.update({f"BABELQ_{k.upper()}": v for k, v in settings.items()})
    return env


class Servers:
    """An embedded PostgreSQL and Redis in base, which tests may stop, flush and crash."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pgdata = base / "pgdata"
        self.redis_dir = base / "redis"
        self.pg_url = start_postgres(self.pgdata)
        self.redis: EmbeddedRedis = start_redis(self.redis_dir)

    @property
    def redis_url(self) -> str:
        """URL of Redis database 0."""
        return self.redis.url

    def redis_client(self) -> redis.Redis:
        """A fresh client of the suite's Redis."""
        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    def stop_postgres(self) -> None:
        """Fast shutdown: every open connection of every process breaks."""
        stop_postgres(self.pgdata)

    def start_postgres(self) -> None:
        """Start the same server again, at the same address."""
        url = start_postgres(self.pgdata)
        assert url == self.pg_url, f"PostgreSQL came back elsewhere: {url}"

    def flushall(self) -> None:
        """Empty Redis: every queued message, unacked message and binding is gone."""
        with self.redis_client() as client:
            client.flushall()

    def crash_redis(self) -> None:
        """SIGKILL Redis and lose its data, as a server without persistence would."""
        os.kill(self.redis.pid, signal.SIGKILL)
        if self.redis.process is not None:
            self.redis.process.wait()
        for entry in self.redis_dir.iterdir():
            if entry.name != "redis.log":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def start_redis(self) -> None:
        """Start an empty Redis on the same port."""
        self.redis = start_redis(self.redis_dir, port=self.redis.port)

    def close(self) -> None:
        """Stop both servers."""
        self.redis.stop()
        self.stop_postgres()


@dataclass
class Proc:
    """One babelq process, in its own process group, logging to a file."""

    name: str
    argv: list[str]
    log: Path
    #: What its log says once it serves (None: nothing to wait for).
    ready_line: bytes | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: Where the log of the current run starts.
    log_start: int = 0

    def start(self, env: dict[str, str]) -> None:
        """Start it (again)."""
        with self.log.open("ab") as out:
            out.write(f"\n=== start {' '.join(self.argv)}\n".encode())
            out.flush()
            self.log_start = out.tell()
            self.popen = subprocess.Popen(
                self.argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    @property
    def alive(self) -> bool:
        """Whether the main process still runs."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def ready(self) -> bool:
        """Whether this run of it has logged that it serves."""
        if not self.alive:
            raise AssertionError(f"{self.name} exited:\n{self.tail()}")
        if self.ready_line is None:
            return True
        with self.log.open("rb") as log:
            log.seek(self.log_start)
            return self.ready_line in log.read()

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until this run of it serves."""
        wait_for(f"{self.name} to be ready", lambda: self.ready, timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (a Celery worker: main and prefork children)."""
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def signal_group(self, sig: int) -> None:
        """Send sig to the whole process group (SIGSTOP/SIGCONT freeze and thaw a worker)."""
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def terminate(self) -> None:
        """SIGTERM the main process only, as a supervisor or `docker stop` would."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop, then SIGKILL of the group if it does not end in time."""
        if self.popen is None:
            return
        if self.alive:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()  # whatever is left of the group (orphaned prefork children) goes too

    def tail(self, lines: int = 40) -> str:
        """The end of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Stack:
    """api, two workers and the relay against the suite's servers."""

    def __init__(self, servers: Servers, database_url: str, workdir: Path) -> None:
        self.servers = servers
        self.database_url = database_url
        self.workdir = workdir
        #: Set when a test failed: its process logs outlive the run.
        self.keep_logs = False
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        logs = workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.procs = {
            "api": Proc("api", [BABELQ, "api", "--port", str(self.api_port),
                                "--log-level", "warning"], logs / "api.log"),
            "relay": Proc("relay", [BABELQ, "relay"], logs / "relay.log"),
            **{name: Proc(name, [BABELQ, "worker", "-Q", QUEUES, "-c", "2", "-n", f"{name}@%h",
                                 "--loglevel", "info"], logs / f"{name}.log", b" ready.")
               for name in WORKERS},
        }  # fmt: skip

    def env(self) -> dict[str, str]:
        """The environment of every process: only our BABELQ_* settings."""
        return {**babelq_env(home=str(self.workdir / "home"), database_url=self.database_url,
                             redis_url=self.servers.redis_url, **TIMINGS), **testkinds.ENV}

    def __getitem__(self, name: str) -> Proc:
        return self.procs[name]

    def ensure(self) -> None:
        """Start whatever is not running (a test may have killed it); wait until all serve."""
        for proc in self.procs.values():
            if not proc.alive:
                proc.start(self.env())
        wait_for("the api to answer /health", self._api_up, 60)
        for name in WORKERS:
            self.procs[name].wait_ready()

    def restart_workers(self) -> None:
        """Stop both workers gracefully and start them afresh."""
        for name in WORKERS:
            self.procs[name].stop()
        self.ensure()

    def revive_workers(self) -> list[str]:
        """Start the workers that died, as a supervisor would; their names."""
        dead = [name for name in WORKERS if not self.procs[name].alive]
        for name in dead:
            self.procs[name].start(self.env())
        return dead

    def _api_up(self) -> bool:
        if not self.procs["api"].alive:
            raise AssertionError(f"api exited:\n{self.procs['api'].tail()}")
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, key: str) -> httpx.Client:
        """An HTTP client of the api with this key."""
        return httpx.Client(base_url=self.api_url, timeout=120,
                            headers={"Authorization": f"Bearer {key}"})

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a short-lived command (python or babelq) in the stack's environment."""
        return subprocess.run(list(args), env=self.env(), cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def publish(self, ids: list[int], priority: int = 1, chunk_size: int = 200) -> None:
        """Send chunk messages of these job ids, as the api or the relay would."""
        code = ("import json, sys; from app.broker.celery_app import publish; "
                "publish('encode', int(sys.argv[2]), json.loads(sys.argv[1]), int(sys.argv[3]))")
        done = self.run(sys.executable, "-c", code, json.dumps(ids), str(priority),
                        str(chunk_size))
        assert done.returncode == 0, done.stderr

    def queued_chunks(self) -> list[tuple[str, bytes, list[int]]]:
        """Every chunk message waiting in Redis: its list, the message, its job ids."""
        with self.servers.redis_client() as client:
            return [(key, m, _chunk_ids(m)) for kind in KINDS for key in queue_keys(kind)
                    for m in client.lrange(key, 0, -1)]

    def chunks_in_redis(self) -> list[list[int]]:
        """The job ids of every chunk message queued, or delivered but unacknowledged."""
        with self.servers.redis_client() as client:
            # kombu keeps an unacknowledged message as [message, exchange, routing key].
            unacked = [json.dumps(json.loads(v)[0]) for v in client.hvals("unacked")]
        return [ids for _, _, ids in self.queued_chunks()] + [_chunk_ids(m) for m in unacked]

    def withdraw(self, ids: list[int]) -> int:
        """Take back the queued messages carrying any of these job ids; how many there were."""
        mine = set(ids)
        with self.servers.redis_client() as client:
            return sum(int(client.lrem(key, 1, m)) for key, m, chunk in self.queued_chunks()
                       if mine & set(chunk))

    def tails(self) -> str:
        """The end of every process log, for a failing test's report."""
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.procs.values())

    def close(self) -> None:
        """Stop every process."""
        for proc in self.procs.values():
            proc.stop()


# Producing -----------------------------------------------------------------------


def ndjson(lines: list[dict[str, Any]]) -> bytes:
    """An NDJSON body."""
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def encode_lines(n: int, tag: str) -> list[dict[str, Any]]:
    """n distinct encode jobs."""
    return [{"kind": "encode", "params": {"text": f"{tag} page {i}"}} for i in range(n)]


def sql_count(engine: Engine, sql: str, **params: Any) -> int:
    """A count(*) query's answer."""
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def batch_job_ids(engine: Engine, batch_id: int) -> list[int]:
    """A batch's job ids in line order."""
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM jobs WHERE batch_id = :b ORDER BY line"),
                                 {"b": batch_id}).scalars())


def wait_progress(engine: Engine, since: int, done: int, timeout: float = 60) -> None:
    """Wait until at least `done` of the test's jobs are terminal: the batch is under way."""
    sql = ("SELECT count(*) FROM jobs WHERE id > :s "
           "AND status IN ('succeeded', 'dead', 'cancelled')")
    wait_for(f"{done} jobs done", lambda: sql_count(engine, sql, s=since) >= done, timeout, 0.02)


def occupy_workers(client: httpx.Client, engine: Engine, seconds: float) -> list[int]:
    """Keep all four worker processes busy with test_sleep jobs; their ids once all run.

    While they sleep, nothing else starts: messages wait in Redis, jobs stay queued.
    """
    ids = []
    for _ in range(4):
        r = client.post("/v1/jobs", json={"kind": "test_sleep", "params": {"seconds": seconds}})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    sql = "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status = 'running'"
    wait_for("4 sleepers to run", lambda: sql_count(engine, sql, ids=ids) == 4, 60, 0.02)
    return ids


def submit_batch(client: httpx.Client, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """POST /v1/batches as NDJSON; the 202 body."""
    r = client.post("/v1/batches", content=ndjson(lines),
                    headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    assert body["rejected"] == 0, body
    return body


def _chunk_ids(message: bytes | str) -> list[int]:
    """The job ids a chunk message carries (its body holds [[ids], kwargs, embed])."""
    ids: list[int] = json.loads(base64.b64decode(json.loads(message)["body"]))[0][0]
    return ids
