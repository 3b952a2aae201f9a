"""Log lines as JSON objects (BABELQ_LOG_FORMAT=json) or for a person at a console.

Every job-related line carries the job's id, batch, tenant, kind and attempt as fields
(`extra=job_fields(job)`), so a log search for one job finds its whole story across
api, workers and relay. Job params, results and keys are never logged.
"""

from __future__ import annotations

import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

#: The fields of a job-related line, in the order shown.
JOB_FIELDS = ("job_id", "batch_id", "tenant", "kind", "attempt")
#: LogRecord attributes that are not fields a caller passed in `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "color_message", "taskName"}
#: Access logs: the api's own (app.api.observe), and uvicorn's when run by hand.
ACCESS_LOGGERS = frozenset({"babelq.access", "uvicorn.access"})
#: What an access log line passes as args, named.
_ACCESS_ARGS = ("client", "method", "path", "http_version", "status")


def job_fields(job: Any) -> dict[str, Any]:
    """The fields of a line about this job (any object with the job's attributes)."""
    return {
        "job_id": job.id, "batch_id": getattr(job, "batch_id", None),
        "tenant": getattr(job, "tenant_id", None), "kind": job.kind,
        "attempt": getattr(job, "attempt", None),
    }


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the caller added to this line (extra=...), job fields first."""
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    if record.name in ACCESS_LOGGERS and isinstance(record.args, tuple) \
            and len(record.args) == len(_ACCESS_ARGS):
        fields.update(zip(_ACCESS_ARGS, record.args, strict=True))
    return dict(sorted(fields.items(), key=lambda kv: (kv[0] not in JOB_FIELDS, kv[0])))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **extra_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """A plain line with the fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in extra_fields(record).items() if v is not None)
        return f"{line} {fields}" if fields else line


def dict_config(fmt: Literal["json", "console"], level: str = "INFO") -> dict[str, Any]:
    """A logging.config.dictConfig for the root logger and uvicorn's (uvicorn takes it too)."""
    formatter = JsonFormatter if fmt == "json" else ConsoleFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"babelq": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "babelq",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {name: {"handlers": [], "propagate": True}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }


def configure(fmt: Literal["json", "console"], level: str = "INFO") -> None:
    """Send every logger's lines to stderr in this format."""
    logging.config.dictConfig(dict_config(fmt, level))
