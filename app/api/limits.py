"""Request body limits enforced while reading, so a huge body never ties up the api."""

from __future__ import annotations

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """The client sent more than the limit."""


def _too_large(limit: int) -> bytes:
    return json.dumps({"error": {"code": "too_large", "message":
                                 f"request body exceeds {limit} bytes", "details":
                                 {"limit": limit}}}).encode()


class _Guard:
    """One request's byte count, and whether its response was replaced by the 413."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self.receive, self.send, self.limit = receive, send, limit
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
        body = _too_large(self.limit)
        await self.send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await self.send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: 413 on a Content-Length over the limit (body unread), or once the
    stream passes it (the rest unread; the connection is closed after the answer)."""

    def __init__(self, app: ASGIApp, default: int, overrides: dict[str, int]) -> None:
        self.app, self.default, self.overrides = app, default, overrides

    def _limit(self, path: str) -> int:
        return self.overrides.get(path, self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = _Guard(receive, send, self._limit(scope["path"]))
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > guard.limit:
            await guard.reject()
            return
        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, guard.counted, guard.tracked)
        if guard.exceeded:
            await guard.reject()
