"""What the api tells an operator about each request: its metrics, and its trace."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.jobs import metrics
from app.observe import tracing

#: Methods counted under their own name; anything else is "other" (labels stay bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_of(scope: Scope) -> str:
    """The matched route's template (/v1/jobs/{job_id}), never the raw path."""
    route: Any = scope.get("route")
    return str(getattr(route, "path", None) or "unmatched")


class RequestMetrics:
    """Counts every request by method, route template and status, and times it; when
    tracing is on, runs it in a server span (continuing the producer's traceparent)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope["method"] if scope["method"] in METHODS else "other"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"traceparent", b"tracestate")} if tracing.enabled() else {}
        with tracing.request_span(method, headers) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = route_of(scope)
                tracing.name_request(span, method, route, status)
                seconds = time.perf_counter() - start
                metrics.record(metrics.API_REQUESTS, (method, route, str(status)))
                metrics.record(metrics.API_SECONDS, (method, route), seconds)
                _access_line(scope, status, seconds)


#: The access log: uvicorn's message and fields, written once the answer is sent (by then
#: the client has it), with the request's duration. uvicorn's own writes its line as the
#: answer starts, on the answer's path: `babelq api` turns it off (app.cli.stack).
access_log = logging.getLogger("babelq.access")


def _access_line(scope: Scope, status: int, seconds: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    query = scope.get("query_string", b"")
    path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
    access_log.info('%s - "%s %s HTTP/%s" %d',
                    f"{client[0]}:{client[1]}" if client else "-", scope["method"], path,
                    scope.get("http_version", "1.1"), status,
                    extra={"duration_ms": round(seconds * 1000, 3)})
