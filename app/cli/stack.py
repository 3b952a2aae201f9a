"""Commands that run the stack: `up`, `api`, `worker`, `relay`, `flower`, `migrate`, `bench`."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Annotated

import typer

from app.cli.common import CliError, out
from app.config import get_settings

KINDS = ("encode", "enumerate", "evaluate")


def require(value: str | None, name: str) -> str:
    """A setting a server needs, or a usage error naming its variable."""
    if not value:
        raise CliError(f"BABELQ_{name.upper()} is not set (or run `babelq up`)", 2)
    return value


def up(
    port: Annotated[int | None, typer.Option(help="api port (default 8000).")] = None,
    flower_port: Annotated[int | None, typer.Option(help="Flower port (default 5555).")] = None,
    no_flower: Annotated[bool, typer.Option("--no-flower", help="Do not start Flower.")] = False,
) -> None:
    """The whole stack on this machine: PostgreSQL, Redis, api, worker, relay, Flower."""
    from app.ops.launcher import up as run_stack

    code = run_stack(out, api_port=port, flower_port=flower_port, with_flower=not no_flower)
    raise typer.Exit(code)


def api(
    host: Annotated[str | None, typer.Option(help="Default BABELQ_API_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default BABELQ_API_PORT.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes.")] = 1,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the HTTP api (uvicorn)."""
    import uvicorn

    from app.observe import logs

    settings = get_settings()
    require(settings.database_url, "database_url")
    # A short graceful shutdown: open long-polls are cut, their clients poll again.
    uvicorn.run(
        "app.api.main:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level=log_level,
        log_config=logs.dict_config(settings.log_format, log_level),
        timeout_graceful_shutdown=5,
        access_log=False,  # the api writes its own, after each answer (app.api.observe)
    )


def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q")] = ",".join(KINDS),
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1)] = None,
    pool: Annotated[str, typer.Option(help="prefork, threads, solo…")] = "prefork",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
    hostname: Annotated[str | None, typer.Option("--hostname", "-n")] = None,
) -> None:
    """Run a Celery worker on the kinds' queues, with events on for Flower."""
    unknown = set(queues.split(",")) - set(KINDS)
    if unknown:
        raise CliError(f"unknown queue(s) {', '.join(sorted(unknown))}; use {','.join(KINDS)}", 2)
    settings = get_settings()
    require(settings.redis_url, "redis_url")
    require(settings.database_url, "database_url")
    import workers.tasks  # noqa: F401  (registers run_chunk; workers.observe formats its logs)
    from app.broker.celery_app import celery_app, configure

    configure(settings)
    argv = ["worker", "-Q", queues, "--pool", pool, "--loglevel", loglevel, "-E"]
    argv += ["-c", str(concurrency)] if concurrency else []
    argv += ["-n", hostname] if hostname else []
    celery_app.worker_main(argv)


def relay() -> None:
    """Republish lost messages, expire leases, release retries; until SIGTERM or Ctrl-C."""
    settings = get_settings()
    require(settings.redis_url, "redis_url")
    require(settings.database_url, "database_url")
    from app.observe import logs
    from workers import relay as relay_loop

    logs.configure(settings.log_format)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logging.getLogger("babelq.relay").info("relay started")
    relay_loop.run(stop)


def flower_login() -> tuple[str, str]:
    """Flower's basic-auth user and password, refusing missing (and, in production, weak) ones."""
    settings = get_settings()
    user, password = settings.flower_user or "", settings.flower_password or ""
    if not user or not password:
        raise CliError(
            "Flower needs BABELQ_FLOWER_USER and BABELQ_FLOWER_PASSWORD "
            "(`babelq up` generates them)",
            2,
        )
    problems = settings.production_problems("flower")
    if problems:
        raise CliError("refusing to start Flower in production: " + "; ".join(problems), 2)
    if ":" in user or "," in user + password:
        raise CliError("Flower user may not contain ':' and neither may contain ','", 2)
    return user, password


def flower(
    host: Annotated[str | None, typer.Option(help="Default BABELQ_FLOWER_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default BABELQ_FLOWER_PORT.")] = None,
) -> None:
    """Run Flower on the same broker, behind basic auth."""
    import os

    user, password = flower_login()
    settings = get_settings()
    require(settings.redis_url, "redis_url")
    from app.broker.celery_app import celery_app, configure
    from app.observe import logs

    configure(settings, fast_transport=False)  # its Broker page needs a plain redis:// URL
    # Through Flower's environment option, so the password is not in `ps` output.
    os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    address, listen = host or settings.flower_host, port or settings.flower_port
    # Our handler, in BABELQ_LOG_FORMAT, as every other process; --logging=none keeps
    # tornado from adding its own (colored lines, not JSON) to the root logger.
    logs.configure(settings.log_format)
    celery_app.start(["flower", f"--address={address}", f"--port={listen}", "--logging=none"])


def migrate_cmd(
    wait: Annotated[float | None, typer.Option(
        min=0, help="Do not migrate: wait up to this many seconds for the database to reach "
                    "this code's newest migration (a pod's init container, while the migrate "
                    "Job runs).")] = None,
) -> None:
    """Bring the database schema to the newest migration."""
    from app.store.db import current_revision, engine_for, migrate

    url = require(get_settings().database_url, "database_url")
    if wait is not None:
        wait_for_head(url, wait)
    else:
        migrate(url)
    out.print(f"database at revision {current_revision(engine_for(url))}")


def wait_for_head(url: str, timeout: float, every: float = 2.0) -> None:
    """Return once the database is at the code's head revision; CliError after timeout.

    An unreachable database counts as not there yet: pods start while it fails over.
    """
    from sqlalchemy.exc import OperationalError

    from app.store.db import current_revision, engine_for, head_revision

    engine, head = engine_for(url), head_revision()
    deadline = time.monotonic() + timeout
    while True:
        try:
            current = current_revision(engine)
        except OperationalError:
            current = "unreachable"
        if current == head:
            return
        if time.monotonic() >= deadline:
            raise CliError(f"database at {current}, not at {head} after {timeout:g}s", 1)
        time.sleep(every)


def bench(ctx: typer.Context) -> None:
    """Benchmark ingestion, end to end and latency against plain Celery (see its --help)."""
    import click

    from app.ops.bench.cli import main as bench_main  # packaged with app (pyproject: app*)

    try:
        code = bench_main(list(ctx.args))
    except click.ClickException as exc:  # its own usage errors, e.g. a bad option
        exc.show()
        code = exc.exit_code
    raise typer.Exit(code)
