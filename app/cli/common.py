"""What every command shares: user errors, consoles, `--param` parsing, JSON output, the client."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from app.client import BabelqError, Client
from app.config import load_settings

out = Console()
err = Console(stderr=True)

STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "dead": "red",
    "cancelled": "magenta",
}

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine output: JSON on stdout.")]


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


# Api client ----------------------------------------------------------------------------


def client() -> Client:
    """A client for the configured api, or a usage error saying how to configure one."""
    settings = load_settings()
    if not settings.api_key:
        raise CliError(
            "no API key: set BABELQ_API_KEY, or run `babelq up` in this directory "
            "(it saves one in .babelq/credentials.json)",
            2,
        )
    return Client(settings.api_base_url(), settings.api_key)


# Errors --------------------------------------------------------------------------------


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
