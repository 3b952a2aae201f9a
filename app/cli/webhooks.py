"""`babelq webhooks ...` and `babelq schedules ...`: the tenant's endpoints and schedules."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from app.cli.common import JsonFlag, client, emit_json, out, parse_params

IdArg = Annotated[int, typer.Argument(min=1)]


def webhooks_create(
    url: Annotated[str, typer.Argument(help="Where to POST events (https in production).")],
    event: Annotated[list[str], typer.Option(
        "--event", "-e",
        help="job.succeeded, job.dead, job.cancelled or batch.completed (repeat).")],
    include_batch_jobs: Annotated[bool, typer.Option(
        "--include-batch-jobs", help="Job events for batch jobs too.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Register an endpoint; prints its signing secret, shown this once."""
    with client() as bq:
        hook = bq.create_webhook(url, event, include_batch_jobs=include_batch_jobs)
    if as_json:
        emit_json(hook)
        return
    out.print(f"webhook {hook['id']} → {hook['url']} ({', '.join(hook['events'])})")
    out.print("secret (shown once, keep it to verify signatures):")
    typer.echo(hook["secret"])


def webhooks_list(as_json: JsonFlag = False) -> None:
    """The tenant's endpoints."""
    with client() as bq:
        hooks = bq.list_webhooks()
    if as_json:
        emit_json(hooks)
        return
    table = Table("id", "url", "events", "batch jobs", "created")
    for h in hooks:
        table.add_row(str(h["id"]), h["url"], ", ".join(h["events"]),
                      "yes" if h["include_batch_jobs"] else "no", h["created_at"][:19])
    out.print(table)


def webhooks_delete(endpoint_id: IdArg) -> None:
    """Delete an endpoint and its deliveries."""
    with client() as bq:
        bq.delete_webhook(endpoint_id)
    out.print(f"webhook {endpoint_id} deleted")


def webhooks_deliveries(
    endpoint_id: IdArg,
    status: Annotated[str | None, typer.Option(help="pending, delivered or failed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: JsonFlag = False,
) -> None:
    """An endpoint's latest deliveries, with each one's attempts."""
    with client() as bq:
        found = bq.deliveries(endpoint_id, status=status, limit=limit)
    if as_json:
        emit_json(found)
        return
    table = Table("id", "event", "job/batch", "status", "attempts", "last answer", "next try")
    for d in found:
        last = d["history"][-1] if d["history"] else None
        answer = "" if last is None else str(last["status_code"] or last["error"])[:40]
        subject = f"job {d['job_id']}" if d["job_id"] else f"batch {d['batch_id']}"
        table.add_row(str(d["id"]), d["event"], subject, d["status"], str(d["attempts"]),
                      answer, (d["next_attempt_at"] or "")[:19])
    out.print(table)


def webhooks_redeliver(endpoint_id: IdArg, delivery_id: IdArg) -> None:
    """Send a delivery again now."""
    with client() as bq:
        d = bq.redeliver(endpoint_id, delivery_id)
    out.print(f"delivery {d['id']} is {d['status']} again")


def schedules_create(
    name: Annotated[str, typer.Argument(help="Unique per tenant.")],
    cron: Annotated[str, typer.Argument(help="e.g. '*/5 * * * *' (6th field: seconds).")],
    kind: Annotated[str, typer.Argument(help="The job's kind.")],
    params_json: Annotated[str | None, typer.Argument(metavar="[PARAMS]")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value")] = None,
    timezone: Annotated[str, typer.Option("--tz", help="IANA time zone.")] = "UTC",
    priority: Annotated[str, typer.Option(help="high, normal or low.")] = "normal",
    as_json: JsonFlag = False,
) -> None:
    """Submit a job at every time the cron expression matches."""
    job: dict[str, Any] = {"kind": kind, "params": parse_params(param or [], params_json),
                           "priority": priority}
    with client() as bq:
        made = bq.create_schedule(name, cron, job, timezone=timezone)
    if as_json:
        emit_json(made)
    else:
        out.print(f"schedule {made['id']} {made['name']}: next fire {made['next_fire_at']}")


def schedules_list(as_json: JsonFlag = False) -> None:
    """The tenant's schedules."""
    with client() as bq:
        found = bq.list_schedules()
    if as_json:
        emit_json(found)
        return
    table = Table("id", "name", "cron", "tz", "kind", "next fire", "last job")
    for s in found:
        table.add_row(str(s["id"]), s["name"], s["cron"], s["timezone"], s["job"]["kind"],
                      "paused" if s["paused"] else (s["next_fire_at"] or "")[:19],
                      str(s["last_job_id"] or ""))
    out.print(table)


def schedules_pause(schedule_id: IdArg) -> None:
    """Stop firing until resumed."""
    with client() as bq:
        bq.pause_schedule(schedule_id)
    out.print(f"schedule {schedule_id} paused")


def schedules_resume(schedule_id: IdArg) -> None:
    """Fire again from the next match (missed fires are skipped)."""
    with client() as bq:
        s = bq.pause_schedule(schedule_id, paused=False)
    out.print(f"schedule {schedule_id} resumed: next fire {s['next_fire_at']}")


def schedules_delete(schedule_id: IdArg) -> None:
    """Delete a schedule (its jobs stay)."""
    with client() as bq:
        bq.delete_schedule(schedule_id)
    out.print(f"schedule {schedule_id} deleted")
