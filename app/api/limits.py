"""Request body limits enforced while reading, so a huge body never ties up the api."""

from __future__ import annotations

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """The client sent more than the limit."""


def _too_large(limit: int, hint: str) -> bytes:
    return json.dumps({"error": {"code": "too_large", "message":
                                 f"request body exceeds {limit} bytes{hint}", "details":
                                 {"limit": limit}}}).encode()


class _Guard:
    """One request's byte count, and whether its response was replaced by the 413."""

    def __init__(self, receive: Receive, send: Send, limit: int, hint: str = "") -> None:
        self.receive, self.send, self.limit, self.hint = receive, send, limit, hint
        self.seen = 0
        self.exceeded = self.started = self.replaced = False

    async def counted(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                raise BodyTooLarge
        return message

    async def tracked(self, message: Message) -> None:
        # Frameworks may turn a failed read into a response of their own (FastAPI answers
        # 400 "error parsing the body"); whatever the app makes of it, the client gets 413.
        if self.exceeded and not self.started:
            await self.reject()
        if self.replaced:
            return
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)

    async def reject(self) -> None:
        """Send the 413 once, unless a response had already begun."""
        if self.started:
            return
        self.started = self.replaced = True
        body = _too_large(self.limit, self.hint)
        await self.send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await self.send({"type": "http.response.body", "body": body})


#: What a JSON body over its own limit is told to do instead.
JSON_HINT = "; send bigger batches as NDJSON (application/x-ndjson)"


class BodyLimit:
    """ASGI middleware: 413 on a Content-Length over the limit (body unread), or once the
    stream passes it (the rest unread; the connection is closed after the answer).

    overrides: limits of paths other than the default; json: limits of JSON bodies on
    some paths (a JSON batch is read whole, so it is capped far below an NDJSON one).
    """

    def __init__(self, app: ASGIApp, default: int, overrides: dict[str, int],
                 json: dict[str, int] | None = None) -> None:
        self.app, self.default, self.overrides, self.json = app, default, overrides, json or {}

    def _guard(self, scope: Scope, receive: Receive, send: Send) -> _Guard:
        path = scope["path"]
        ctype = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if path in self.json and ctype == b"application/json":
            return _Guard(receive, send, self.json[path], JSON_HINT)
        return _Guard(receive, send, self.overrides.get(path, self.default))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self._guard(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > guard.limit:
            await guard.reject()
            return
        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, guard.counted, guard.tracked)
        if guard.exceeded:
            await guard.reject()
