"""`babelq up`: the whole stack on one machine, started in order and supervised.

Embedded PostgreSQL and Redis (when no URLs are configured), a migration, the first
admin key and Flower credentials, then api, worker, relay and Flower as child
processes. Each child runs in its own session so a Ctrl-C reaches `up` alone, which
then stops the children (SIGTERM, SIGKILL after a grace period) and the servers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from app.config import Settings, read_credentials
from app.ops.supervisor import (
    Child,
    LaunchError,
    interruptible,
    spawn,
    stop_children,
    supervise,
    wait_until,
)

if TYPE_CHECKING:
    from app.ops.embedded import EmbeddedRedis

#: Fields of credentials.json, in the order written.
CREDENTIAL_FIELDS = (
    "api_url",
    "api_key",
    "flower_url",
    "flower_user",
    "flower_password",
    "database_url",
    "redis_url",
)


@dataclass
class Servers:
    """PostgreSQL and Redis for the stack; the embedded ones are stopped with it."""

    database_url: str
    redis_url: str
    pg_dir: Path | None = None
    redis: EmbeddedRedis | None = None

    def stop(self) -> None:
        """Stop the embedded servers (configured ones are not ours to stop)."""
        from app.ops.embedded import stop_postgres

        if self.redis is not None:
            self.redis.stop()
        if self.pg_dir is not None:
            stop_postgres(self.pg_dir)


@dataclass
class Stack:
    """Everything `up` started, in start order."""

    servers: Servers | None = None
    children: list[Child] = field(default_factory=list)

    def stop(self, console: Console) -> None:
        """Stop the children, then the servers; safe to call on a half-started stack."""
        stop_children(self.children)
        if self.children:
            console.print(f"stopped {', '.join(c.name for c in self.children)}")
        if self.servers is not None:
            self.servers.stop()


# Credentials -------------------------------------------------------------------------


def write_credentials(path: Path, values: dict[str, Any]) -> None:
    """Write credentials.json readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        json.dump({k: values[k] for k in CREDENTIAL_FIELDS}, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def admin_key(database_url: str, candidates: list[str | None]) -> str:
    """The first candidate that is a live admin key, or a new one for tenant "default"."""
    from app.jobs import keys
    from app.store.db import engine_for, session_scope

    with session_scope(engine_for(database_url)) as session:
        for key in candidates:
            principal = keys.authenticate(session, key) if key else None
            if principal is not None and principal.is_admin:
                return str(key)
        _, secret = keys.create_key(session, tenant="default", admin=True, name="babelq up")
        return secret


def flower_login(settings: Settings, saved: dict[str, Any]) -> tuple[str, str]:
    """Flower user and password: the environment's, the saved ones, or new ones."""
    user = settings.flower_user or saved.get("flower_user") or "flower"
    password = settings.flower_password or saved.get("flower_password")
    return str(user), str(password or secrets.token_urlsafe(18))


# Servers -----------------------------------------------------------------------------


def start_servers(
    settings: Settings, home: Path, saved: dict[str, Any], console: Console
) -> Servers:
    """The configured servers, or embedded ones under home for whichever is not configured."""
    from app.ops.embedded import start_postgres

    servers = Servers(settings.database_url or "", settings.redis_url or "")
    if not servers.redis_url:
        with console.status("starting Redis"):
            servers.redis = _start_redis(home / "redis", saved.get("redis_url"))
        servers.redis_url = servers.redis.url
    if not servers.database_url:
        servers.pg_dir = home / "pg"
        with console.status("starting PostgreSQL (the first start initialises it)"):
            servers.database_url = start_postgres(servers.pg_dir)
    return servers


def _start_redis(data_dir: Path, saved_url: str | None) -> EmbeddedRedis:
    """Embedded Redis on the port of the last run when it is free, else any free port."""
    from app.ops.embedded import start_redis

    port = _port_of(saved_url)
    if port is not None:
        with suppress(RuntimeError):
            return start_redis(data_dir, port)
    return start_redis(data_dir)


def _port_of(url: str | None) -> int | None:
    # urlsplit, not httpx.URL: a hand-edited URL must not end in httpx.InvalidURL's traceback.
    with suppress(ValueError):
        port = urlsplit(url or "").port
        return port if port and _port_free("127.0.0.1", port) else None
    return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free(host: str, port: int, what: str, hint: str) -> None:
    """Fail early, and say how to fix it, when a port is taken."""
    if not _port_free(host, port):
        raise LaunchError(f"{what} port {host}:{port} is already in use ({hint})")


def shielded_stop(stack: Stack, console: Console) -> None:
    """Stop the stack with Ctrl-C and SIGTERM ignored until it is down."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stack.stop(console)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def banner(creds: dict[str, Any], home: Path) -> Panel:
    """The URLs, logins and key a newcomer needs, framed."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("API", creds["api_url"])
    grid.add_row("Docs", f"{creds['api_url']}/docs")
    grid.add_row("Console", f"{creds['api_url']}/console (log in with the API key below)")
    if creds.get("flower_url"):
        grid.add_row("Flower", creds["flower_url"])
        grid.add_row("Flower login", f"{creds['flower_user']} / {creds['flower_password']}")
    grid.add_row("API key", creds["api_key"])
    grid.add_row("Saved in", str(home / "credentials.json"))
    grid.add_row("Logs", str(home / "logs"))
    grid.add_row("", "Try `babelq demo` in another terminal. Ctrl-C stops everything.")
    return Panel(grid, title="Babel Queue is up", border_style="green", expand=False)


def _child_env(
    settings: Settings, creds: dict[str, Any], home: Path, ports: tuple[int, int]
) -> dict[str, str]:
    values = {
        "HOME": str(home),
        "DATABASE_URL": creds["database_url"],
        "REDIS_URL": creds["redis_url"],
        "API_HOST": settings.api_host,
        "API_PORT": str(ports[0]),
        "API_URL": creds["api_url"],
        "API_KEY": creds["api_key"],
        "FLOWER_HOST": settings.flower_host,
        "FLOWER_PORT": str(ports[1]),
        "FLOWER_USER": creds["flower_user"],
        "FLOWER_PASSWORD": creds["flower_password"],
    }
    return {**os.environ, **{f"BABELQ_{k}": v for k, v in values.items()}}


def up(
    console: Console,
    *,
    api_port: int | None = None,
    flower_port: int | None = None,
    with_flower: bool = True,
) -> int:
    """Run the whole stack until Ctrl-C or SIGTERM (exit 0) or a child dies (exit 1)."""
    settings = Settings()  # the environment only: saved URLs are reused below, deliberately
    home = settings.home.expanduser().resolve()
    ports = (api_port or settings.api_port, flower_port or settings.flower_port)
    require_free(settings.api_host, ports[0], "api", "pass --port or set BABELQ_API_PORT")
    if with_flower:
        hint = "pass --flower-port or set BABELQ_FLOWER_PORT"
        require_free(settings.flower_host, ports[1], "Flower", hint)
    stack = Stack()
    with interruptible():
        try:
            return _run(console, settings, home, ports, with_flower, stack)
        except KeyboardInterrupt:
            console.print("stopping…")
            return 0
        except LaunchError as exc:
            Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
            return 1
        finally:
            shielded_stop(stack, console)


def _run(
    console: Console,
    settings: Settings,
    home: Path,
    ports: tuple[int, int],
    with_flower: bool,
    stack: Stack,
) -> int:
    from app.store.db import migrate

    saved = read_credentials(home / "credentials.json")  # home: settings.home, resolved
    stack.servers = servers = start_servers(settings, home, saved, console)
    with console.status("migrating the database"):
        migrate(servers.database_url)
    user, password = flower_login(settings, saved)
    creds = {
        "api_url": f"http://{settings.api_host}:{ports[0]}",
        "api_key": admin_key(servers.database_url, [settings.api_key, saved.get("api_key")]),
        "flower_url": f"http://{settings.flower_host}:{ports[1]}" if with_flower else None,
        "flower_user": user,
        "flower_password": password,
        "database_url": servers.database_url,
        "redis_url": servers.redis_url,
    }
    write_credentials(home / "credentials.json", creds)
    env = _child_env(settings, creds, home, ports)
    specs = [("api", ["api"]), ("worker", ["worker", "-c", "2"]), ("relay", ["relay"])]
    if with_flower:
        specs.append(("flower", ["flower"]))
    for name, args in specs:
        stack.children.append(spawn(name, ["-m", "app.cli", *args], env, home / "logs"))
    with console.status("waiting for the api and Flower to answer"):
        wait_until(f"{creds['api_url']}/ready", stack.children)
        if with_flower:
            wait_until(f"{creds['flower_url']}/", stack.children, auth=(user, password))
    console.print(banner(creds, home))
    return supervise(stack.children, console)
