"""`babelq tenants`: fair-dispatch settings of tenants, directly in the database."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer
from rich.table import Table

from app.cli.admin import TENANT_NAME, database
from app.cli.common import CliError, JsonFlag, emit_json, out


def tenants_list(as_json: JsonFlag = False) -> None:
    """List tenants: weight, max_running, jobs queued and running."""
    from app.jobs import tenants

    with database() as session:
        rows = [dataclasses.asdict(t) for t in tenants.list_tenants(session)]
    if as_json:
        emit_json(rows)
        return
    table = Table("tenant", "weight", "max running", "queued", "running")
    for r in rows:
        cap = "unlimited" if r["max_running"] is None else str(r["max_running"])
        table.add_row(r["name"], f"{r['weight']:g}", cap, str(r["queued"]), str(r["running"]))
    out.print(table)


def tenants_set(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    weight: Annotated[float | None, typer.Option(
        help="Share of the workers when several tenants are backlogged (default 1).")] = None,
    max_running: Annotated[int | None, typer.Option(
        help="At most this many of the tenant's jobs in flight at once.")] = None,
    unlimited: Annotated[bool, typer.Option(
        "--unlimited", help="Remove the tenant's max_running cap.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Set a tenant's weight and/or max_running; dispatch applies it within seconds."""
    from app.jobs import tenants

    if not TENANT_NAME.fullmatch(tenant):
        raise CliError(f"tenant {tenant!r}: use 1..100 of A-Z a-z 0-9 _ . -", 2)
    if weight is None and max_running is None and not unlimited:
        raise CliError("give --weight, --max-running or --unlimited", 2)
    if unlimited and max_running is not None:
        raise CliError("--max-running and --unlimited exclude each other", 2)
    try:
        with database() as session:
            share = tenants.set_tenant(session, tenant, weight=weight, max_running=max_running,
                                       unlimited=unlimited)
    except tenants.UnknownTenant as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    if as_json:
        emit_json(dataclasses.asdict(share))
        return
    cap = "unlimited" if share.max_running is None else share.max_running
    out.print(f"tenant {share.name}: weight {share.weight:g}, max running {cap}")
