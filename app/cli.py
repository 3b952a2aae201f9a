"""The `babelq` command line: run the servers, submit and watch jobs, manage keys.

Commands that talk to the api use app.client with the URL and key of the settings
(environment first, then .babelq/credentials.json written by `babelq up`); `keys`
and `audit` work directly on the database. User errors end with a one-line message
on stderr and exit code 2 (bad input) or 1 (the api or a server said no), never a
traceback.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from app.client import TERMINAL, BabelqError, Client
from app.config import get_settings, load_settings

app = typer.Typer(
    name="babelq",
    help="Babel Queue: durable encode, enumerate and evaluate jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Manage API keys (directly in the database).", no_args_is_help=True)
audit_app = typer.Typer(
    help="Verify audit hash chains (directly in the database).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys", rich_help_panel="Admin")
app.add_typer(audit_app, name="audit", rich_help_panel="Admin")

out = Console()
err = Console(stderr=True)

KINDS = ("encode", "enumerate", "evaluate")
STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "dead": "red",
    "cancelled": "magenta",
}

#: Tenant names the api accepts (app/api/routes/keys.py), so both ways agree.
TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine output: JSON on stdout.")]
JobArg = Annotated[int, typer.Argument(help="Job id.", min=1)]
BatchArg = Annotated[int, typer.Argument(help="Batch id.", min=1)]


class CliError(Exception):
    """A user-facing failure: printed as one line, exits with code (2: bad input)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# Parameters ----------------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON: keep them as strings


def parse_value(raw: str) -> Any:
    """`--param` values: JSON when they parse as JSON (numbers, bools, objects), else text."""
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except ValueError:
        return raw


def parse_object(text: str, what: str = "params") -> dict[str, Any]:
    """A JSON object given on the command line, or a usage error naming the problem."""
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}", 2) from exc
    if not isinstance(value, dict):
        raise CliError(f"{what} must be a JSON object, not {type(value).__name__}", 2)
    return value


def parse_params(pairs: list[str], base: str | None = None) -> dict[str, Any]:
    """Params from a JSON object and `key=value` pairs; dotted keys nest (config.max_cycles=3)."""
    params = parse_object(base) if base else {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise CliError(f"--param {pair!r}: expected key=value", 2)
        target = params
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise CliError(f"--param {pair!r}: {part!r} is already a value, not an object", 2)
        target[path[-1]] = parse_value(raw)
    return params


# Output --------------------------------------------------------------------------------


def emit_json(data: Any) -> None:
    """JSON on stdout, unstyled, for scripts."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def styled(status: str) -> str:
    """A status in its colour."""
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def summary(job: dict[str, Any]) -> str:
    """One line saying what a job produced, or why it failed."""
    if job.get("error") and job["status"] != "succeeded":
        return f"{job['error'].get('type')}: {job['error'].get('message')}"
    result = job.get("result")
    if not isinstance(result, dict):
        return ""
    if job["kind"] == "encode" and "address" in result:
        return f"address {str(result['address'])[:16]}… ({len(str(result['address']))} hex digits)"
    if job["kind"] == "encode":
        return f"hd vector, ones {result.get('ones')}, sigma_hash {result.get('sigma_hash')}"
    if job["kind"] == "enumerate":
        best = (result.get("candidates") or [{}])[0]
        return f"{result.get('total')} candidates, best {best.get('ngram')!r} {best.get('score')}"
    decision = " ".join(str(result[k]) for k in ("decision", "stop_reason") if result.get(k))
    return f"{decision} after {result.get('cycles_evaluated')} cycle(s)"


def elapsed(job: dict[str, Any]) -> str:
    """Seconds from submission to finish, when finished."""
    from datetime import datetime

    if not job.get("finished_at"):
        return ""
    start, end = (datetime.fromisoformat(job[k]) for k in ("created_at", "finished_at"))
    return f"{(end - start).total_seconds():.2f}s"


def job_panel(job: dict[str, Any]) -> Table:
    """A job's fields, one per row."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    rows = [
        ("job", str(job["id"])),
        ("kind", job["kind"]),
        ("status", styled(job["status"])),
        ("attempt", f"{job['attempt']} of {job['max_attempts']}"),
        ("priority", job["priority"]),
        ("worker", job.get("worker") or ""),
        ("created", job["created_at"]),
        ("started", job.get("started_at") or ""),
        ("finished", job.get("finished_at") or ""),
        ("took", elapsed(job)),
        ("batch", f"{job['batch_id']} line {job['line']}" if job.get("batch_id") else ""),
        ("result", escape(summary(job))),
        ("sha256", job.get("result_sha256") or ""),
    ]
    for name, value in rows:
        if value:
            grid.add_row(name, value)
    return grid


def show_job(job: dict[str, Any], as_json: bool) -> None:
    """A job, as JSON or as a panel (with the traceback of a failed one)."""
    if as_json:
        emit_json(job)
        return
    out.print(job_panel(job))
    error = job.get("error")
    if error and error.get("traceback") and job["status"] != "succeeded":
        out.print(escape(error["traceback"].rstrip()), style="dim", highlight=False)


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    """Jobs as table rows."""
    table = Table("id", "kind", "status", "attempt", "took", "result")
    for job in jobs:
        table.add_row(
            str(job["id"]),
            job["kind"],
            styled(job["status"]),
            str(job["attempt"]),
            elapsed(job),
            escape(summary(job)),
        )
    return table


def finish_job(job: dict[str, Any], as_json: bool) -> None:
    """Show a job we waited for; exit 1 unless it succeeded."""
    show_job(job, as_json)
    if job["status"] != "succeeded":
        state = "still " + job["status"] if job["status"] not in TERMINAL else job["status"]
        raise CliError(f"job {job['id']} is {state}")


# Api commands ----------------------------------------------------------------------------


def client() -> Client:
    """A client for the configured api, or a usage error saying how to configure one."""
    settings = load_settings()
    if not settings.api_key:
        raise CliError(
            "no API key: set BABELQ_API_KEY, or run `babelq up` in this directory "
            "(it saves one in .babelq/credentials.json)",
            2,
        )
    url = settings.api_url or f"http://{settings.api_host}:{settings.api_port}"
    return Client(url, settings.api_key)


@app.command(rich_help_panel="Jobs")
def submit(
    kind: Annotated[str, typer.Argument(help="encode, enumerate or evaluate.")],
    params_json: Annotated[
        str | None, typer.Argument(metavar="[PARAMS]", help="Params as a JSON object.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="key=value (the value is parsed as JSON if it is JSON)."
        ),
    ] = None,
    priority: Annotated[str | None, typer.Option(help="high, normal or low.")] = None,
    max_attempts: Annotated[int | None, typer.Option(min=1, max=20)] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key again: same job.")] = None,
    ref: Annotated[str | None, typer.Option(help="Your reference, kept with the job.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it finishes.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds --wait waits at most.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit one job: `babelq submit encode --param text="hello world" --wait`."""
    params = parse_params(param or [], params_json)
    with client() as bq:
        job = bq.submit(
            kind,
            params,
            priority=priority,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            ref=ref,
        )
        if wait:
            finish_job(bq.wait(job["id"], timeout), as_json)
        elif as_json:
            emit_json(job)
        else:
            out.print(
                f"job {job['id']} {styled(job['status'])} (`babelq wait {job['id']}` waits for it)"
            )


@app.command(rich_help_panel="Jobs")
def status(job_id: JobArg, as_json: JsonFlag = False) -> None:
    """Show a job: status, attempts, timings, result or error."""
    with client() as bq:
        show_job(bq.get(job_id), as_json)


@app.command("wait", rich_help_panel="Jobs")
def wait_cmd(
    job_id: JobArg,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Wait until a job finishes; exit 1 unless it succeeded."""
    with client() as bq:
        finish_job(bq.wait(job_id, timeout), as_json)


@app.command(rich_help_panel="Jobs")
def cancel(job_id: JobArg, as_json: JsonFlag = False) -> None:
    """Cancel a queued or running job."""
    with client() as bq:
        show_job(bq.cancel(job_id), as_json)


@app.command(rich_help_panel="Jobs")
def retry(job_id: JobArg, as_json: JsonFlag = False) -> None:
    """Queue a dead or cancelled job again."""
    with client() as bq:
        show_job(bq.retry(job_id), as_json)


@app.command("jobs", rich_help_panel="Jobs")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, dead…")] = None,
    kind: Annotated[str | None, typer.Option()] = None,
    batch: Annotated[int | None, typer.Option(help="Only this batch's jobs.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    with client() as bq:
        found = bq.list_jobs(status=status, kind=kind, batch_id=batch, page_size=min(limit, 1000))
        jobs = [job for _, job in zip(range(limit), found, strict=False)]
    if as_json:
        emit_json(jobs)
    else:
        out.print(jobs_table(jobs))


# Batches -------------------------------------------------------------------------------


def batch_table(batch: dict[str, Any]) -> Table:
    """A batch's counts, progress, rate and ETA."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    counts = batch.get("counts") or {}
    grid.add_row("batch", str(batch["id"]))
    grid.add_row("jobs", f"{batch.get('total')} ({batch.get('rejected', 0)} rejected at upload)")
    for name in ("queued", "running", "succeeded", "dead", "cancelled"):
        grid.add_row(styled(name), str(counts.get(name, 0)))
    grid.add_row("progress", f"{100 * float(batch.get('progress') or 0):.1f}%")
    grid.add_row("rate", f"{float(batch.get('jobs_per_second') or 0):,.0f} jobs/s")
    if batch.get("eta_seconds") is not None and not batch.get("done"):
        grid.add_row("eta", f"{float(batch['eta_seconds']):.0f}s")
    grid.add_row("done", "yes" if batch.get("done") else "no")
    return grid


def watch_batch(bq: Client, batch_id: int, interval: float = 0.5) -> dict[str, Any]:
    """A live progress bar (on stderr) until the batch is done; returns its final state."""
    columns = (
        TextColumn(f"batch {batch_id}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} jobs/s"),
        TextColumn("ETA {task.fields[eta]}"),
    )
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("batch", total=None, rate="0", eta="?")
        while True:
            batch = bq.batch(batch_id)
            counts = batch.get("counts") or {}
            eta = batch.get("eta_seconds")
            progress.update(
                task,
                total=sum(counts.values()) or None,
                completed=sum(counts.get(s, 0) for s in TERMINAL),
                rate=f"{float(batch.get('jobs_per_second') or 0):,.0f}",
                eta="?" if eta is None else f"{float(eta):.0f}s",
            )
            if batch.get("done"):
                return batch
            time.sleep(interval)


@app.command(rich_help_panel="Batches")
def ingest(
    file: Annotated[Path, typer.Argument(help="NDJSON file, one job per line; - for stdin.")],
    priority: Annotated[str | None, typer.Option(help="For lines that name none.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Then follow the batch.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Upload a file of jobs as one batch, streamed, then list the rejected lines."""
    source: Any = sys.stdin.buffer if str(file) == "-" else file
    if source is file and not file.is_file():
        raise CliError(f"no such file: {file}", 2)
    total = None if source is not file else file.stat().st_size
    columns = (TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with client() as bq:
        with Progress(*columns, console=err) as progress:
            task = progress.add_task("upload", total=total)
            batch = bq.submit_batch(
                source, priority=priority, on_progress=lambda n: progress.advance(task, n)
            )
        if watch:
            batch = {**batch, **watch_batch(bq, batch["id"])}
    if as_json:
        emit_json(batch)
        return
    out.print(
        f"batch {batch['id']}: {batch.get('accepted')} accepted, {batch.get('rejected')} rejected"
    )
    for row in batch.get("rejected_lines") or []:
        reason = escape(str(row.get("reason")))
        out.print(f"  line {row.get('line')}: {reason}", highlight=False, soft_wrap=True)
    shown = len(batch.get("rejected_lines") or [])
    if int(batch.get("rejected") or 0) > shown:
        out.print(f"  … and {int(batch['rejected']) - shown} more rejected lines")


@app.command("batch", rich_help_panel="Batches")
def batch_cmd(
    batch_id: BatchArg,
    watch: Annotated[bool, typer.Option("--watch", help="Live progress until done.")] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel what has not started.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show a batch: counts per status, progress, rate, ETA."""
    with client() as bq:
        if cancel:
            bq.cancel_batch(batch_id)
        batch = watch_batch(bq, batch_id) if watch else bq.batch(batch_id)
    if as_json:
        emit_json(batch)
    else:
        out.print(batch_table(batch))


@app.command(rich_help_panel="Batches")
def results(
    batch_id: BatchArg,
    as_json: Annotated[bool, typer.Option("--json", hidden=True)] = False,
) -> None:
    """A batch's results in line order, as NDJSON on stdout (always machine output)."""
    del as_json  # accepted like every command's --json; this output is JSON either way
    with client() as bq:
        for row in bq.iter_results(batch_id):
            sys.stdout.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


# Demo ----------------------------------------------------------------------------------


def _cycle(left: str, left_confidence: float, right: str, right_confidence: float) -> Any:
    return {
        "left": {"text": left, "confidence": left_confidence},
        "right": {"text": right, "confidence": right_confidence},
    }


_PROCEED = _cycle(
    "proceed with the plan after review today", 0.95,
    "proceed with the plan after careful review", 0.9,
)  # fmt: skip
_ETHICS = _cycle(
    "AI should provide information with ethical caveats.", 0.72,
    "AI should refuse ethically ambiguous requests to avoid complicity.", 0.81,
)  # fmt: skip
_CAT = _cycle("the cat sat on the mat", 0.9, "The cat sat on the mat", 0.8)
#: One of each kind and codec, and each governor outcome: the examples of computations.md.
DEMO_JOBS: list[tuple[str, dict[str, Any]]] = [
    ("encode", {"text": "hello world"}),
    ("encode", {"text": "hello world", "codec": "hd"}),
    ("enumerate", {"query": "hello world", "max_results": 5, "depth": 1}),
    ("evaluate", {"cycles": [_PROCEED], "config": {"max_cycles": 3}}),
    ("evaluate", {"cycles": [_PROCEED, _PROCEED]}),
    ("evaluate", {"cycles": [_ETHICS]}),
    ("evaluate", {"cycles": [_CAT]}),
]


def poll_until_done(
    bq: Client, jobs: list[dict[str, Any]], live: Live | None, timeout: float
) -> None:
    """Refresh jobs in place until all are terminal or timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [i for i, job in enumerate(jobs) if job["status"] not in TERMINAL]
        if not pending:
            return
        for n, i in enumerate(pending):
            jobs[i] = bq.get(jobs[i]["id"], wait=0.5 if n == 0 else 0)
        if live is not None:
            live.update(jobs_table(jobs))


@app.command(rich_help_panel="Jobs")
def demo(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the jobs.")] = 120,
    as_json: JsonFlag = False,
) -> None:
    """Submit one job of each kind (the spec's examples) and watch them finish."""
    with client() as bq:
        jobs = [bq.submit(kind, params, ref="demo") for kind, params in DEMO_JOBS]
        if as_json or not out.is_terminal:
            poll_until_done(bq, jobs, None, timeout)
        else:
            with Live(jobs_table(jobs), console=out, refresh_per_second=8) as live:
                poll_until_done(bq, jobs, live, timeout)
    if as_json:
        emit_json(jobs)
    elif not out.is_terminal:
        out.print(jobs_table(jobs))
    failed = [job for job in jobs if job["status"] != "succeeded"]
    if failed:
        raise CliError(f"{len(failed)} of {len(jobs)} demo jobs did not succeed")
    if not as_json:
        out.print(f"all {len(jobs)} jobs succeeded. `babelq status {jobs[0]['id']}` shows one.")


# Keys and audit (database) -------------------------------------------------------------


@contextmanager
def database() -> Iterator[Any]:
    """A transaction on the configured database, or a usage error saying how to configure it."""
    if not get_settings().database_url:
        raise CliError("no database: set BABELQ_DATABASE_URL, or run `babelq up` here", 2)
    from app.db import session_scope

    with session_scope() as session:
        yield session


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to (created if new).")],
    admin: Annotated[bool, typer.Option("--admin", help="May manage keys, sees all.")] = False,
    name: Annotated[str, typer.Option(help="What the key is for.")] = "",
) -> None:
    """Create a key and print it alone on stdout: KEY=$(babelq keys create --tenant t)."""
    from app import keys

    if not TENANT_NAME.fullmatch(tenant):
        raise CliError(f"tenant {tenant!r}: use 1..100 of A-Z a-z 0-9 _ . -", 2)
    with database() as session:
        _, secret = keys.create_key(session, tenant=tenant, admin=admin, name=name)
    typer.echo(secret)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List keys (never their secrets)."""
    from app import keys

    with database() as session:
        rows: list[dict[str, Any]] = [
            {
                "id": k.id,
                "tenant": t,
                "name": k.name,
                "prefix": k.prefix,
                "admin": k.is_admin,
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k, t in keys.list_keys(session, tenant)
        ]
    if as_json:
        emit_json(rows)
        return
    table = Table("id", "tenant", "name", "prefix", "admin", "created", "revoked")
    for r in rows:
        revoked = (r["revoked_at"] or "")[:19]
        table.add_row(
            str(r["id"]),
            r["tenant"],
            r["name"],
            r["prefix"] + "…",
            "yes" if r["admin"] else "",
            r["created_at"][:19],
            revoked,
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="Key id (see `keys list`).")]) -> None:
    """Revoke a key at once."""
    from app import keys

    with database() as session:
        if not keys.revoke_key(session, key_id):
            raise CliError(f"no live key {key_id}")
    out.print(f"key {key_id} revoked")


@audit_app.command("verify")
def audit_verify(
    job_id: Annotated[int | None, typer.Argument(help="One job's chain.")] = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="Every job's chain.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Recompute audit hash chains; exit 1 and name the broken links if any chain is broken."""
    from app import audit
    from app.models import Job

    if (job_id is None) == (not all_jobs):
        raise CliError("give a job id or --all", 2)
    with database() as session:
        if job_id is not None and session.get(Job, job_id) is None:
            raise CliError(f"job {job_id} not found")
        reports = [audit.verify_job(session, job_id)] if job_id else audit.verify_all(session)
        checked, events, broken = 0, 0, []
        with err.status("verifying audit chains"):
            for report in reports:
                checked, events = checked + 1, events + report.events
                if not report.ok:
                    broken.append(
                        {
                            "job_id": report.job_id,
                            "broken_seq": report.broken_seq,
                            "reason": report.reason,
                        }
                    )
    report_audit(checked, events, broken, as_json)


def report_audit(checked: int, events: int, broken: list[dict[str, Any]], as_json: bool) -> None:
    """Print what `audit verify` found; exit 1 if any chain is broken."""
    if as_json:
        emit_json({"ok": not broken, "chains": checked, "events": events, "broken": broken})
    else:
        for b in broken:
            out.print(f"[red]broken[/]: job {b['job_id']} at seq {b['broken_seq']}: {b['reason']}")
        verdict = "[green]all intact[/]" if not broken else f"[red]{len(broken)} broken[/]"
        out.print(f"{checked} chain(s), {events} event(s): {verdict}")
    if broken:
        raise typer.Exit(1)


# Servers -------------------------------------------------------------------------------


def require(value: str | None, name: str) -> str:
    """A setting a server needs, or a usage error naming its variable."""
    if not value:
        raise CliError(f"BABELQ_{name.upper()} is not set (or run `babelq up`)", 2)
    return value


@app.command(rich_help_panel="Run the stack")
def up(
    port: Annotated[int | None, typer.Option(help="api port (default 8000).")] = None,
    flower_port: Annotated[int | None, typer.Option(help="Flower port (default 5555).")] = None,
    no_flower: Annotated[bool, typer.Option("--no-flower", help="Do not start Flower.")] = False,
) -> None:
    """The whole stack on this machine: PostgreSQL, Redis, api, worker, relay, Flower."""
    from app.launcher import up as run_stack

    code = run_stack(out, api_port=port, flower_port=flower_port, with_flower=not no_flower)
    raise typer.Exit(code)


@app.command(rich_help_panel="Run the stack")
def api(
    host: Annotated[str | None, typer.Option(help="Default BABELQ_API_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default BABELQ_API_PORT.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes.")] = 1,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the HTTP api (uvicorn)."""
    import uvicorn

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
        timeout_graceful_shutdown=5,
    )


@app.command(rich_help_panel="Run the stack")
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
    from workers.celery_app import celery_app, configure

    configure(settings)
    argv = ["worker", "-Q", queues, "--pool", pool, "--loglevel", loglevel, "-E"]
    argv += ["-c", str(concurrency)] if concurrency else []
    argv += ["-n", hostname] if hostname else []
    celery_app.worker_main(argv)


@app.command(rich_help_panel="Run the stack")
def relay() -> None:
    """Republish lost messages, expire leases, release retries; until SIGTERM or Ctrl-C."""
    settings = get_settings()
    require(settings.redis_url, "redis_url")
    require(settings.database_url, "database_url")
    from workers import relay as relay_loop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
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


@app.command(rich_help_panel="Run the stack")
def flower(
    host: Annotated[str | None, typer.Option(help="Default BABELQ_FLOWER_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default BABELQ_FLOWER_PORT.")] = None,
) -> None:
    """Run Flower on the same broker, behind basic auth."""
    import os

    user, password = flower_login()
    settings = get_settings()
    require(settings.redis_url, "redis_url")
    from workers.celery_app import celery_app, configure

    configure(settings)
    # Through Flower's environment option, so the password is not in `ps` output.
    os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    address, listen = host or settings.flower_host, port or settings.flower_port
    celery_app.start(["flower", f"--address={address}", f"--port={listen}"])


@app.command("migrate", rich_help_panel="Run the stack")
def migrate_cmd() -> None:
    """Bring the database schema to the newest migration."""
    from app.db import current_revision, engine_for, migrate

    url = require(get_settings().database_url, "database_url")
    migrate(url)
    out.print(f"database at revision {current_revision(engine_for(url))}")


@app.command(
    rich_help_panel="Run the stack",
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def bench(ctx: typer.Context) -> None:
    """Benchmark ingestion, end to end and latency against plain Celery (see its --help)."""
    import click

    try:
        from app.bench.cli import main as bench_main
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("app.bench"):
            raise
        raise CliError("the benchmark is not part of this installation (no app.bench)") from exc
    try:
        code = bench_main(list(ctx.args))
    except click.ClickException as exc:  # its own usage errors, e.g. a bad option
        exc.show()
        code = exc.exit_code
    raise typer.Exit(code)


# Entry point ---------------------------------------------------------------------------


def explain(exc: BabelqError) -> str:
    """An api error as a line (plus one per invalid field)."""
    if exc.status == 0:
        return f"{exc.message}\nis `babelq up` running? (or set BABELQ_API_URL)"
    lines = [f"{exc.status} {exc.code}: {exc.message}"]
    if isinstance(exc.details, list):
        lines += [
            f"  {d.get('field') or d.get('line', '')}: {d.get('message') or d.get('reason')}"
            for d in exc.details
            if isinstance(d, dict)
        ]
    elif exc.details:
        lines.append(f"  {json.dumps(exc.details)}")
    return "\n".join(lines)


def fail(message: str, code: int) -> None:
    """Print an error line on stderr and exit."""
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """The `babelq` console script."""
    from app.launcher import LaunchError

    try:
        app()
    except CliError as exc:
        fail(str(exc), exc.code)
    except BabelqError as exc:
        fail(explain(exc), 1)
    except LaunchError as exc:
        fail(str(exc), 1)
    except Exception as exc:
        from sqlalchemy.exc import OperationalError

        if not isinstance(exc, OperationalError):
            raise
        fail(f"cannot reach PostgreSQL: {str(exc.orig).strip()}\nis `babelq up` running?", 1)


if __name__ == "__main__":
    main()
