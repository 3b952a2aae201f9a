"""Job commands (`submit`, `status`, `wait`, `cancel`, `retry`, `jobs`) and the `demo`."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.live import Live

from app.cli.common import CliError, JsonFlag, client, emit_json, out, parse_params, styled
from app.cli.views import finish_job, jobs_table, show_job
from app.client import MAX_WAIT, TERMINAL, Client

JobArg = Annotated[int, typer.Argument(help="Job id.", min=1)]


def _first_wait(wait: bool, timeout: float | None) -> float:
    """Seconds the submitting request itself long-polls: --wait's first, or none."""
    if not wait:
        return 0.0
    return MAX_WAIT if timeout is None else min(timeout, MAX_WAIT)


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
    run_at: Annotated[str | None, typer.Option(
        help="Not before this ISO 8601 time, e.g. 2026-01-31T09:00:00Z.")] = None,
    delay: Annotated[float | None, typer.Option(min=0, help="Not before this many seconds.")
                     ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it finishes.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds --wait waits at most.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit one job: `babelq submit encode --param text="hello world" --wait`."""
    params = parse_params(param or [], params_json)
    started = time.monotonic()
    with client() as bq:
        job = bq.submit(
            kind,
            params,
            priority=priority,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            ref=ref,
            run_at=run_at,
            delay=delay,
            wait=_first_wait(wait, timeout),
        )
        if wait:
            left = None if timeout is None else timeout - (time.monotonic() - started)
            if job["status"] not in TERMINAL and (left is None or left > 0):
                job = bq.wait(job["id"], left)
            finish_job(job, as_json)
        elif as_json:
            emit_json(job)
        else:
            later = f", not before {job['run_after']}" if job.get("run_after") else ""
            out.print(f"job {job['id']} {styled(job['status'])}{later} "
                      f"(`babelq wait {job['id']}` waits for it)")


def status(job_id: JobArg, as_json: JsonFlag = False) -> None:
    """Show a job: status, attempts, timings, result or error."""
    with client() as bq:
        show_job(bq.get(job_id), as_json)


def wait_cmd(
    job_id: JobArg,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Wait until a job finishes; exit 1 unless it succeeded."""
    with client() as bq:
        finish_job(bq.wait(job_id, timeout), as_json)


def cancel(job_id: JobArg, as_json: JsonFlag = False) -> None:
    """Cancel a queued or running job."""
    with client() as bq:
        show_job(bq.cancel(job_id), as_json)


def retry(job_id: JobArg, as_json: JsonFlag = False) -> None:
    """Queue a dead or cancelled job again."""
    with client() as bq:
        show_job(bq.retry(job_id), as_json)


def list_jobs(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, dead…")] = None,
    kind: Annotated[str | None, typer.Option()] = None,
    batch: Annotated[int | None, typer.Option(help="Only this batch's jobs.")] = None,
    scheduled: Annotated[bool, typer.Option(
        "--scheduled", help="Only queued jobs waiting for a later time (run_at/delay).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    with client() as bq:
        found = bq.list_jobs(status=status, kind=kind, batch_id=batch,
                             scheduled="true" if scheduled else None,
                             page_size=min(limit, 1000))
        jobs = [job for _, job in zip(range(limit), found, strict=False)]
    if as_json:
        emit_json(jobs)
    else:
        out.print(jobs_table(jobs))


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
#: One of each kind and codec, and each governor outcome: the examples of docs/computations.md.
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
