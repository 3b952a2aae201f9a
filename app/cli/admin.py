"""Admin commands that work directly on the database: `keys` and `audit verify`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.table import Table

from app.cli.common import CliError, JsonFlag, emit_json, err, out
from app.config import get_settings

#: Tenant names the api accepts (app/api/routes/keys.py), so both ways agree.
TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


@contextmanager
def database() -> Iterator[Any]:
    """A transaction on the configured database, or a usage error saying how to configure it."""
    if not get_settings().database_url:
        raise CliError("no database: set BABELQ_DATABASE_URL, or run `babelq up` here", 2)
    from app.store.db import session_scope

    with session_scope() as session:
        yield session


def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to (created if new).")],
    admin: Annotated[bool, typer.Option("--admin", help="May manage keys, sees all.")] = False,
    name: Annotated[str, typer.Option(help="What the key is for.")] = "",
) -> None:
    """Create a key and print it alone on stdout: KEY=$(babelq keys create --tenant t)."""
    from app.jobs import keys

    if not TENANT_NAME.fullmatch(tenant):
        raise CliError(f"tenant {tenant!r}: use 1..100 of A-Z a-z 0-9 _ . -", 2)
    with database() as session:
        _, secret = keys.create_key(session, tenant=tenant, admin=admin, name=name)
    typer.echo(secret)


def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List keys (never their secrets)."""
    from app.jobs import keys

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


def keys_revoke(key_id: Annotated[int, typer.Argument(help="Key id (see `keys list`).")]) -> None:
    """Revoke a key at once."""
    from app.jobs import keys

    with database() as session:
        if not keys.revoke_key(session, key_id):
            raise CliError(f"no live key {key_id}")
    out.print(f"key {key_id} revoked")


def audit_verify(
    job_id: Annotated[int | None, typer.Argument(help="One job's chain.")] = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="Every job's chain.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Recompute audit hash chains; exit 1 and name the broken links if any chain is broken."""
    from app.jobs import audit
    from app.store.models import Job

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
