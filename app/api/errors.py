"""Every error leaves the api as {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.jobs import Busy
from app.jobs.refusals import AtCap, NeverFits, NothingAccepted, RateLimited, Refused, TooManyLines
from app.jobs.submission import field_errors

log = logging.getLogger(__name__)

CODES = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An error with its HTTP status, for route code to raise."""

    def __init__(
        self, status: int, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.details, self.headers = status, message, details, headers


def error_response(
    status: int, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error body every failure uses."""
    body = {"error": {"code": CODES.get(status, "error"), "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def _summary(details: list[dict[str, Any]]) -> str:
    names = ", ".join(d["field"] or "body" for d in details[:5])
    return f"invalid field(s): {names}"


async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "request body is not valid JSON", field_errors(errors))
    details = field_errors(errors)
    return error_response(422, _summary(details), details)


async def _params_invalid(_: Request, exc: ValidationError) -> JSONResponse:
    details = field_errors(exc.errors(), ("params",))
    return error_response(422, _summary(details), details)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.details, exc.headers)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), None, dict(exc.headers or {}))


#: The HTTP status of each refusal of a submission (app/jobs/refusals.py).
REFUSALS: dict[type[Refused], int] = {
    RateLimited: 429, AtCap: 429, NeverFits: 413, TooManyLines: 413, NothingAccepted: 422,
}


async def _refused(_: Request, exc: Refused) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return error_response(REFUSALS.get(type(exc), 422), exc.message, exc.details, headers)


async def _busy(_: Request, exc: Exception) -> JSONResponse:
    return error_response(409, str(exc), headers={"Retry-After": "1"})


async def _db_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response(503, "database unavailable; nothing was accepted, try again",
                          headers={"Retry-After": "5"})


async def _data_refused(_: Request, exc: Exception) -> JSONResponse:
    # The net under validation: a value PostgreSQL refuses is the client's, not a 500.
    # Only the class is logged: the statement's parameters are the client's data.
    log.warning("database refused a value: %s", type(exc).__name__)
    return error_response(422, "a value cannot be stored (out of range, or not storable text)")


async def _dbapi_error(request: Request, exc: DBAPIError) -> JSONResponse:
    if exc.connection_invalidated:
        return await _db_down(request, exc)
    # The server's message may quote a value (a unique key's DETAIL names it): the log
    # gets the error's class, its SQLSTATE and where it was raised, not the message.
    log.error("database error %s (SQLSTATE %s) in %s\n%s", type(exc.orig).__name__,
              getattr(exc.orig, "sqlstate", None), request.url.path,
              "".join(traceback.format_tb(exc.__traceback__)).rstrip())
    return error_response(500, "internal error")


async def _pool_exhausted(_: Request, exc: Exception) -> JSONResponse:
    # Every pooled connection is taken (a burst, or clients holding uploads open): the
    # request was not served and may simply be sent again.
    log.warning("database connection pool exhausted: %s", type(exc).__name__)
    return error_response(503, "the api is at its database connection limit; nothing was "
                               "accepted, try again", headers={"Retry-After": "2"})


def install(app: FastAPI) -> None:
    """Register the handlers on the app."""
    app.add_exception_handler(RequestValidationError, _request_invalid)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _params_invalid)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(Busy, _busy)
    app.add_exception_handler(Refused, _refused)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _db_down)
    app.add_exception_handler(DBAPIError, _dbapi_error)  # type: ignore[arg-type]
    app.add_exception_handler(DataError, _data_refused)
    app.add_exception_handler(PoolTimeout, _pool_exhausted)
