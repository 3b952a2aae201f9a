"""Batch commands: `ingest` a file of jobs, follow a `batch`, stream its `results`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
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

from app.cli.common import CliError, JsonFlag, client, emit_json, err, out, styled
from app.client import TERMINAL, Client

BatchArg = Annotated[int, typer.Argument(help="Batch id.", min=1)]


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
