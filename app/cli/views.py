"""How jobs look on the terminal: one-line summaries, panels, tables."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from app.cli.common import CliError, emit_json, out, styled
from app.client import TERMINAL


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
