"""A lean HTTP/1.1 client for webhook POSTs, on asyncio transports and httptools' parser.

httpx spent 0.8-1.0 ms of CPU on each delivery (its pool, header models, h11 events,
anyio streams); the sender needs far less: one POST at a time per connection, the status
code and the first bytes of the answer. This client writes the request in one buffer and
parses the answer with httptools (llhttp, in C), so a delivery costs a fraction of that.

What it guarantees, as the sender's contract asks:
- it connects where it is told (the address the sender checked), never resolving the
  name itself, and sends the name in the Host header and TLS SNI (certificates checked
  against the name);
- it follows no redirect: a 3xx is an answer like any other;
- it keeps at most `kept` bytes of a body and never reads further: an answer longer
  than that closes the connection instead of being drained;
- the whole attempt (connect, TLS, write, answer) has `timeout` seconds;
- nothing about the response is stored but its status and its first bytes, so a hostile
  receiver (endless headers or body, slow drip) costs bounded memory and time.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast
from urllib.parse import quote

import httptools

#: Seconds an idle kept-alive connection is reused (receivers often close at 5 s).
IDLE_FOR = 4.0
#: Idle connections one client keeps (one per destination).
IDLE_MAX = 8
#: Characters sent as they are in a request target (printable ASCII); others are %-encoded.
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%") + "%"


class HttpError(Exception):
    """No complete answer: connection refused or lost, TLS failure, or a malformed answer."""


@dataclass(slots=True)
class Reply:
    """The status of an answer and at most `kept` bytes of its body."""

    status: int
    head: bytes


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one request goes: the address to connect to, and the name it is for."""

    scheme: str
    #: the address (or, when private addresses are allowed, the name) connected to
    connect_to: str
    port: int
    #: the Host header
    host_header: str
    #: the name TLS checks the certificate against (https only)
    server_name: str


def destination(scheme: str, host: str, port: int, connect_to: str, explicit_port: bool
                ) -> Destination:
    """The destination of a URL's host, connected at connect_to."""
    ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    shown = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
    return Destination(scheme, connect_to, port,
                       f"{shown}:{port}" if explicit_port else shown, ascii_host)


def request_target(path: str, query: str) -> str:
    """The request target of a URL's path and query, with unsafe characters %-encoded."""
    target = (path or "/") + (f"?{query}" if query else "")
    return quote(target, safe=_TARGET_SAFE)


class _Answer(asyncio.Protocol):
    """One connection: parses the answer to the request in flight."""

    def __init__(self, kept: int) -> None:
        self.kept = kept
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Reply] | None = None
        self.status = 0
        self.body = bytearray()
        self.headers_done = False
        self.complete = False
        #: whether the answer allows another request on this connection (read at its end:
        #: the parser forgets it once the message is complete)
        self.keep_alive = False
        self.closed = False
        self.idle_since = 0.0

    def reset(self) -> None:
        """Ready for the next request on this connection."""
        self.status = 0
        self.body = bytearray()
        self.headers_done = False
        self.complete = False
        self.keep_alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (a stream transport: create_connection makes no other)."""
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; the answer is ready at its end or once `kept` body bytes came."""
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: this connection is not reusable
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(HttpError(f"malformed answer: {exc}"))
            return
        if self.headers_done and len(self.body) >= self.kept:
            self.finish()

    def on_headers_complete(self) -> None:
        """httptools callback: the status line and headers are in."""
        if self.complete:  # a second answer to one request: never reuse this connection
            self.closed = True
            return
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        """httptools callback: keep the first `kept` bytes, drop the rest."""
        room = self.kept - len(self.body)
        if room > 0:
            self.body += body[:room]

    def on_message_complete(self) -> None:
        """httptools callback: a whole answer; an interim 1xx is skipped."""
        if 100 <= self.status < 200:
            self.reset()
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self.finish()

    def finish(self) -> None:
        """Hand the answer to the request that waits for it."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(Reply(self.status, bytes(self.body)))

    def fail(self, exc: Exception) -> None:
        """The request in flight gets exc; the connection is closed."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        """Close the connection (it is never reused after)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """A body delimited by the close is complete; anything else is a failed request."""
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.headers_done:
                self.finish()
            else:
                self.waiter.set_exception(HttpError(
                    f"connection closed before an answer{f': {exc}' if exc else ''}"))

    def usable(self) -> bool:
        """Whether a kept connection may take a request now (open, not idle too long)."""
        return (not self.closed and self.transport is not None
                and not self.transport.is_closing()
                and self.idle_since + IDLE_FOR >= time.monotonic())

    def reusable(self) -> bool:
        """Whether the next request may use this connection."""
        return self.complete and self.keep_alive and not self.closed


@lru_cache(maxsize=4)
def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificates checked against the system's (certifi's) authorities, and those of
    ca_file (BABELQ_WEBHOOK_CA_FILE: a private CA of internal receivers). One per process:
    each of webhook_concurrency senders made its own, loading the whole bundle each time.
    A file that cannot be read raises (OSError) and is tried again at the next send."""
    import httpx  # only for its TLS defaults, the same as before this client

    context = httpx.create_ssl_context(trust_env=False)
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class Client:
    """POSTs one request at a time; keeps a connection alive per destination between them.

    Owned by one sending coroutine: no locks, no pool bookkeeping.
    """

    def __init__(self, timeout: float, kept: int, ca_file: Path | None = None) -> None:
        self.timeout = timeout
        self.kept = kept
        self.ca_file = ca_file
        self.idle: dict[Destination, _Answer] = {}
        self._tls: ssl.SSLContext | None = None

    def tls(self) -> ssl.SSLContext:
        """This client's TLS context (tls_context), looked up once."""
        if self._tls is None:
            self._tls = tls_context(self.ca_file)
        return self._tls

    async def post(self, to: Destination, target: str, headers: list[tuple[str, str]],
                   body: bytes) -> Reply:
        """One POST; HttpError, TimeoutError or OSError when there is no answer."""
        head = [f"POST {target} HTTP/1.1\r\nhost: {to.host_header}\r\n"
                f"content-length: {len(body)}\r\n"]
        head.extend(f"{k}: {v}\r\n" for k, v in headers)
        head.append("\r\n")
        message = "".join(head).encode("latin-1") + body
        conn: _Answer | None = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = self.idle.pop(to, None)
                if conn is None or not conn.usable():
                    if conn is not None:
                        conn.close()
                    conn = await self.connect(to)
                loop = asyncio.get_running_loop()
                conn.waiter = loop.create_future()
                assert conn.transport is not None
                conn.transport.write(message)
                reply = await conn.waiter
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        conn.waiter = None
        if conn.reusable():
            self.keep(to, conn)
        else:
            conn.close()
        return reply

    async def connect(self, to: Destination) -> _Answer:
        """A new connection to the destination's address (TLS checked against its name)."""
        loop = asyncio.get_running_loop()
        if to.scheme == "https":
            _, conn = await loop.create_connection(
                lambda: _Answer(self.kept), to.connect_to, to.port, ssl=self.tls(),
                server_hostname=to.server_name)
        else:
            _, conn = await loop.create_connection(lambda: _Answer(self.kept),
                                                   to.connect_to, to.port)
        return conn

    def keep(self, to: Destination, conn: _Answer) -> None:
        """Keep conn for the next request to the same destination, within IDLE_MAX."""
        conn.reset()
        conn.idle_since = time.monotonic()
        self.idle[to] = conn
        while len(self.idle) > IDLE_MAX:
            oldest = next(iter(self.idle))
            self.idle.pop(oldest).close()

    def close(self) -> None:
        """Close every idle connection."""
        for conn in self.idle.values():
            conn.close()
        self.idle.clear()
