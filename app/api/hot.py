"""The two requests of a single job, submit and long-poll, without FastAPI's machinery.

POST /v1/jobs and GET /v1/jobs/{id} are what a producer of single jobs sends, and on
the 2-core bench machine FastAPI's routing, dependency solving, parameter and body
validation and response handling took 0.8-1.0 ms of a submission's 4.5 (instrumented
api, median of 300), more than the statement that stores the job.

HotJobs is the innermost middleware, so body limits, metrics, tracing and the access log
see these requests as they see any other. It answers the plain forms of the two
requests itself with the routes' own functions (app.api.routes.jobs), and renders their
errors with the app's own exception handlers. Anything else goes on to FastAPI, with
the body it read replayed: another query parameter, a body that is not JSON or that the
model refuses, a malformed Idempotency-Key. Each refusal is then FastAPI's own, worded
as ever, and nothing has been done yet when a request is handed on.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import MAX_ID
from app.api.routes import jobs as routes
from app.api.schemas import JobCreate

#: The one query a hot request may carry: a long-poll's seconds, as the routes take them
#: (0-60). Anything else is FastAPI's to parse or refuse.
_WAIT = re.compile(rb"wait=(\d{1,2}(?:\.\d{1,6})?)")
_JOB_PATH = re.compile(r"/v1/jobs/([1-9]\d{0,18})")
#: An Idempotency-Key header the route accepts (Header(max_length=200, pattern=...)).
_KEY = re.compile(rb"[!-~]{1,200}")


class HotJobs:
    """ASGI middleware: POST /v1/jobs and GET /v1/jobs/{id} in their plain forms."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], APIRoute] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "POST" and path == "/v1/jobs":
                await self._submit(scope, receive, send)
                return
            if method == "GET" and path.startswith("/v1/jobs/"):
                match = _JOB_PATH.fullmatch(path)
                wait = _wait(scope)
                if match is not None and wait is not None and int(match[1]) <= MAX_ID:
                    await self._answer(scope, receive, send, "/v1/jobs/{job_id}",
                                       routes.read(_request(scope, receive), int(match[1]),
                                                   wait))
                    return
        await self.app(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _body(receive)
        job_in, key, wait = _plain_submission(scope, body)
        if job_in is None or wait is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await self._answer(scope, receive, send, "/v1/jobs",
                           routes.submit(_request(scope, receive), job_in, key, wait))

    async def _answer(self, scope: Scope, receive: Receive, send: Send, template: str,
                      work: Any) -> None:
        """Run a route's work, labelled as its route; its errors as the app renders them."""
        scope["route"] = self._route(scope, template)
        try:
            response = await work
        except Exception as exc:
            handler = _handler(scope, exc)
            if handler is None:
                raise  # as FastAPI would: ServerErrorMiddleware answers 500
            response = await handler(_request(scope, receive), exc)
        await response(scope, receive, send)

    def _route(self, scope: Scope, template: str) -> APIRoute | None:
        """The FastAPI route this request stands for (metrics and traces name it)."""
        key = (scope["method"], template)
        if key not in self._routes:
            for route in routes.router.routes:
                if isinstance(route, APIRoute) and route.path == template and \
                        scope["method"] in (route.methods or ()):
                    self._routes[key] = route
        return self._routes.get(key)


def _request(scope: Scope, receive: Receive) -> Request:
    return Request(scope, receive)


def _wait(scope: Scope) -> float | None:
    """The long-poll seconds of a plain query (0 without one); None: not plain."""
    query: bytes = scope.get("query_string", b"")
    if not query:
        return 0.0
    match = _WAIT.fullmatch(query)
    if match is None:
        return None
    wait = float(match[1])
    return wait if wait <= 60 else None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def _plain_submission(scope: Scope, body: bytes
                      ) -> tuple[JobCreate | None, str | None, float | None]:
    """(job, Idempotency-Key header, wait) of a plain submission; job None: not plain."""
    wait = _wait(scope)
    ctype = _header(scope, b"content-type")
    key = _header(scope, b"idempotency-key")
    if wait is None or ctype is None or ctype.split(b";")[0].strip().lower() != \
            b"application/json" or (key is not None and _KEY.fullmatch(key) is None):
        return None, None, None
    try:
        # The same model FastAPI validates the body with, given the same parsed JSON.
        job_in = JobCreate.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None, None, None
    return job_in, key.decode() if key is not None else None, wait


async def _body(receive: Receive) -> bytes:
    """The whole request body (BodyLimit, outside, stops it at the limit)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then whatever comes next."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _handler(scope: Scope, exc: Exception) -> Any:
    """The app's handler of this exception (nearest class first), as Starlette finds it."""
    handlers = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None

