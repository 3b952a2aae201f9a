"""A webhook receiver for the benchmark: verifies every signature, counts every event.

A bare ASGI app (run by uvicorn in its own process): POST /secret sets the signing secret,
POST /hook takes deliveries, GET /stats says what arrived. Duplicates are counted by
event, so the bench can tell "every event exactly once" from "every event at least once".
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

_STATE: dict[str, Any] = {"signer": None, "events": set(), "types": Counter(), "bad": 0,
                          "duplicates": 0, "first": None, "last": None, "requests": 0}


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Any, status: int, body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _take(body: bytes, headers: dict[str, str]) -> int:
    """Verify and count one delivery; the status to answer."""
    try:
        payload = _STATE["signer"].verify(body, headers)
    except (WebhookVerificationError, AttributeError):
        _STATE["bad"] += 1
        return 400
    event = (payload["type"], payload["data"]["id"])
    if event in _STATE["events"]:
        _STATE["duplicates"] += 1
    else:
        _STATE["events"].add(event)
        _STATE["types"][event[0]] += 1
    _STATE["requests"] += 1
    now = time.monotonic()
    _STATE["first"] = _STATE["first"] or now
    _STATE["last"] = now
    return 204


def stats() -> dict[str, Any]:
    """What arrived: events, duplicates, bad signatures, and the span of the arrivals."""
    span = (_STATE["last"] - _STATE["first"]) if _STATE["first"] else 0.0
    return {"requests": _STATE["requests"], "events": len(_STATE["events"]),
            "duplicates": _STATE["duplicates"], "bad_signatures": _STATE["bad"],
            "by_type": _STATE["types"], "span_seconds": span,
            "first": _STATE["first"], "last": _STATE["last"]}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The receiver."""
    if scope["type"] != "http":
        return
    body = await _body(receive)
    path = scope["path"]
    if path == "/secret":
        _STATE["signer"] = Webhook(body.decode())
        await _answer(send, 204)
    elif path == "/stats":
        await _answer(send, 200, orjson.dumps(stats()))
    else:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        await _answer(send, _take(body, headers))
