"""The `babelq` command line: run the servers, submit and watch jobs, manage keys.

Commands that talk to the api use app.client with the URL and key of the settings
(environment first, then .babelq/credentials.json written by `babelq up`); `keys`
and `audit` work directly on the database. User errors end with a one-line message
on stderr and exit code 2 (bad input) or 1 (the api or a server said no), never a
traceback.

The commands live in one module per concept (jobs, batches, admin, stack); this
module assembles them into the `babelq` app, in the order and help panels that
`babelq --help` shows.
"""

from __future__ import annotations

import typer

from app.cli import admin, batches, jobs, stack, tenants, webhooks
from app.cli.common import CliError, explain, fail, parse_object, parse_params, parse_value
from app.cli.stack import flower_login
from app.client import BabelqError

__all__ = [
    "CliError",
    "app",
    "audit_app",
    "flower_login",
    "keys_app",
    "main",
    "parse_object",
    "parse_params",
    "parse_value",
]

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
tenants_app = typer.Typer(
    help="Tenants' fair-dispatch weight and max_running (directly in the database).",
    no_args_is_help=True,
)
app.add_typer(tenants_app, name="tenants", rich_help_panel="Admin")
webhooks_app = typer.Typer(help="The tenant's webhook endpoints and deliveries.",
                           no_args_is_help=True)
schedules_app = typer.Typer(help="The tenant's periodic schedules.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks", rich_help_panel="Jobs")
app.add_typer(schedules_app, name="schedules", rich_help_panel="Jobs")


def _register_jobs() -> None:
    """Jobs: one at a time, through the api."""
    panel = "Jobs"
    app.command(rich_help_panel=panel)(jobs.submit)
    app.command(rich_help_panel=panel)(jobs.status)
    app.command("wait", rich_help_panel=panel)(jobs.wait_cmd)
    app.command(rich_help_panel=panel)(jobs.cancel)
    app.command(rich_help_panel=panel)(jobs.retry)
    app.command("jobs", rich_help_panel=panel)(jobs.list_jobs)
    app.command(rich_help_panel=panel)(jobs.demo)
    for name in ("create", "list", "delete", "deliveries", "redeliver"):
        webhooks_app.command(name)(getattr(webhooks, f"webhooks_{name}"))
    for name in ("create", "list", "pause", "resume", "delete"):
        schedules_app.command(name)(getattr(webhooks, f"schedules_{name}"))


def _register_batches() -> None:
    """Batches: many jobs from one NDJSON upload."""
    panel = "Batches"
    app.command(rich_help_panel=panel)(batches.ingest)
    app.command("batch", rich_help_panel=panel)(batches.batch_cmd)
    app.command(rich_help_panel=panel)(batches.results)


def _register_admin() -> None:
    """Admin: keys and audit chains, directly in the database."""
    keys_app.command("create")(admin.keys_create)
    keys_app.command("list")(admin.keys_list)
    keys_app.command("revoke")(admin.keys_revoke)
    audit_app.command("verify")(admin.audit_verify)
    tenants_app.command("list")(tenants.tenants_list)
    tenants_app.command("set")(tenants.tenants_set)


def _register_stack() -> None:
    """Run the stack: the servers, migrations and the benchmark."""
    panel = "Run the stack"
    app.command(rich_help_panel=panel)(stack.up)
    app.command(rich_help_panel=panel)(stack.api)
    app.command(rich_help_panel=panel)(stack.worker)
    app.command(rich_help_panel=panel)(stack.relay)
    app.command(rich_help_panel=panel)(stack.flower)
    app.command("migrate", rich_help_panel=panel)(stack.migrate_cmd)
    # bench parses its own arguments, --help included.
    app.command(
        rich_help_panel=panel,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(stack.bench)


_register_jobs()
_register_batches()
_register_admin()
_register_stack()


def main() -> None:
    """The `babelq` console script."""
    from app.ops.launcher import LaunchError

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
