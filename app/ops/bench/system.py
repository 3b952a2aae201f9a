"""What the system benchmark runs against: servers, real processes, and their memory.

Every measured process is a real one (`babelq api`, `babelq worker`, `babelq relay`, the
naive baseline's `celery worker`), started as a child in its own session with its
output in a log file, and stopped (with its pool processes) when the bench ends.
"""

from __future__ import annotations

import gc
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from psycopg.errors import InsufficientPrivilege
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.ops.supervisor import Child, check_alive, spawn, stop_children, wait_until

#: Seconds between memory samples.
RSS_INTERVAL = 0.1
MB = 1024 * 1024


@dataclass
class Servers:
    """PostgreSQL (a fresh database on it) and Redis for one bench run."""

    database_url: str
    redis_url: str
    tmp: Path


@contextmanager
def servers(database_url: str | None, redis_url: str | None) -> Iterator[Servers]:
    """Embedded servers in a temp dir unless URLs are given; a fresh migrated database."""
    from app.ops.embedded import (
        create_database,
        drop_database,
        normalize_db_url,
        start_postgres,
        start_redis,
        stop_postgres,
    )
    from app.store.db import migrate

    # Under /tmp: PostgreSQL's unix socket path must stay below 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="babelq-bench-"))
    pg_dir = tmp / "pgdata"
    embedded_redis = None
    name = f"babelq_bench_{secrets.token_hex(4)}"
    admin = ""
    try:
        admin = normalize_db_url(database_url) if database_url else start_postgres(pg_dir)
        if not redis_url:
            embedded_redis = start_redis(tmp / "redis")
        url = create_database(admin, name)
        migrate(url)
        yield Servers(url, redis_url or embedded_redis.url, tmp)  # type: ignore[union-attr]
    finally:
        if admin:
            with suppress(Exception):
                drop_database(admin, name)
        if embedded_redis is not None:
            embedded_redis.stop()
        if not database_url:
            stop_postgres(pg_dir)
        shutil.rmtree(tmp, ignore_errors=True)


def admin_key(database_url: str) -> str:
    """A new admin key for the bench's tenant."""
    from app.jobs.keys import create_key
    from app.store.db import engine_for, session_scope

    with session_scope(engine_for(database_url)) as session:
        _, secret = create_key(session, tenant="bench", admin=True, name="babelq bench")
    return secret


def child_env(srv: Servers) -> dict[str, str]:
    """The environment of every child: our servers, a private home, the rest inherited."""
    values = {"DATABASE_URL": srv.database_url, "REDIS_URL": srv.redis_url,
              "HOME": str(srv.tmp / "home")}
    return {**os.environ, **{f"BABELQ_{k.upper()}": v for k, v in values.items()}}


def api_args(port: int) -> list[str]:
    """`babelq api` on a port of 127.0.0.1."""
    return ["-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]


def worker_args(concurrency: int) -> list[str]:
    """`babelq worker` (all three queues, its default): one Celery worker, a prefork pool of N."""
    return ["-m", "app.cli", "worker", "-c", str(concurrency), "--loglevel", "WARNING",
            "-n", "bench@%h"]


def naive_worker_args(concurrency: int) -> list[str]:
    """The naive baseline's Celery worker, same pool and concurrency as ours."""
    from app.ops.bench.naive import NAIVE_QUEUE

    return ["-m", "celery", "-A", "app.ops.bench.naive", "worker", "-Q", NAIVE_QUEUE, "-c",
            str(concurrency), "--loglevel", "WARNING", "-n", "naive@%h"]


@dataclass
class Procs:
    """The children of a run, started and stopped together."""

    env: dict[str, str]
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> Child:
        """Spawn a child and keep it for stop()."""
        child = spawn(name, args, self.env, self.log_dir)
        self.children.append(child)
        return child

    def wait_ready(self, url: str) -> None:
        """Until url answers 200; fail at once, with its log, if a child died."""
        wait_until(url, self.children)

    def check(self) -> None:
        """Raise LaunchError naming a child that died."""
        check_alive(self.children)

    def stop(self, *names: str) -> None:
        """Stop the named children (all when none is named), pool processes included."""
        chosen = [c for c in self.children if not names or c.name in names]
        stop_children(chosen)
        self.children = [c for c in self.children if c not in chosen]


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty once it is gone)."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def rss_of(procs: list[psutil.Process]) -> int:
    """Resident bytes of these processes together (those still alive)."""
    total = 0
    for p in procs:
        with suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class RssSampler:
    """Samples the resident memory of process trees in a thread; keeps peaks per name.

    Listing a tree's descendants walks all of /proc, so trees are re-listed only every
    REFRESH samples (prefork pool processes come and go rarely); the memory of the
    listed processes is read every sample.
    """

    REFRESH = 10

    def __init__(self, interval: float = RSS_INTERVAL) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.trees: dict[str, list[psutil.Process]] = {}
        self.peak: dict[str, int] = {}
        self.window: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, name: str, pid: int) -> None:
        """Sample this process tree under name from now on."""
        with self._lock:
            self.pids[name] = pid
            self.trees[name] = tree(pid)

    def now(self, name: str) -> int:
        """Resident bytes of that tree now; also restarts its window peak there."""
        rss = rss_of(tree(self.pids[name]))
        with self._lock:
            self.window[name] = rss
        return rss

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.interval):
            count += 1
            with self._lock:
                if count % self.REFRESH == 0:
                    self.trees = {name: tree(pid) for name, pid in self.pids.items()}
                trees = dict(self.trees)
            for name, procs in trees.items():
                rss = rss_of(procs)
                with self._lock:
                    self.peak[name] = max(self.peak.get(name, 0), rss)
                    self.window[name] = max(self.window.get(name, 0), rss)


def settle(database_url: str) -> bool:
    """Let a measured phase start on quiet disks and a quiet client; whether CHECKPOINT ran.

    Otherwise a phase pays for the write-back of the one before: here, our upload right
    after the naive phase ran at 18,094 jobs/s, and at 35,555 after a CHECKPOINT and a
    sync (0.16 s). CHECKPOINT needs a superuser (or pg_checkpoint); without one, only sync.

    The bench's own heap (160,000 objects once its imports are done) is then left out of
    its garbage collections until run_bench ends: a full one took 57-107 ms here and
    landed in whatever was being timed, every run the same single-job sample (the 317th)
    at 65-70 ms.
    """
    from app.store.db import engine_for

    checkpointed = True
    try:
        with engine_for(database_url).connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("CHECKPOINT"))
    except DBAPIError as exc:
        if not isinstance(exc.orig, InsufficientPrivilege):
            raise
        checkpointed = False
    os.sync()
    gc.collect()
    gc.freeze()
    return checkpointed


#: Seconds between completion checks. Each check is a request the system under test
#: serves (about 4 ms of api CPU on a 2-core VM): every 50 ms they took 5% of end to end
#: from it. A finish is seen at most this late: under 1% of any run measured here.
POLL = 0.25


def wait_for(
    predicate: Callable[[], bool], procs: Procs, timeout: float, poll: float = POLL
) -> float:
    """Poll predicate() until true; the monotonic time it first was. Children must live."""
    deadline = time.monotonic() + timeout
    while not predicate():
        procs.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout:.0f}s")
        time.sleep(poll)
    return time.monotonic()


class RedisPeak(threading.Thread):
    """Samples Redis' used_memory in the background; peak in MB."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            self.peak = max(self.peak, int(self.client.info("memory")["used_memory"]))

    def now_mb(self) -> float:
        return int(self.client.info("memory")["used_memory"]) / 2**20
