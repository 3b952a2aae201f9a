"""A Python client of the HTTP API, for other services and for the `babelq` CLI.

    with Client.from_settings() as bq:
        job = bq.wait(bq.submit("encode", {"text": "hello world"})["id"])

Every API error is raised as BabelqError with the status, code, message and details of
the API's error body; an API that cannot be reached at all is a BabelqError with status
0 and code "unreachable". A Client is safe to share between threads.

Two transports. The small JSON calls (submit, get, wait, cancel, ... everything but
the batch upload and the results stream) go over the standard library's http.client:
one keep-alive connection per thread, each request in one send. A call costs 0.4 ms
there against httpx's 0.9-1.2 (a 2-core VM, a trivial uvicorn app), which a producer
that submits one job and waits for it feels. httpx streams the batch upload and the
results, and carries every call when the environment names a proxy for the API
(http.client knows no proxies).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import select
import socket
import ssl
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast
from urllib.parse import SplitResult, urlencode, urlsplit

import httpx

#: Statuses a job never leaves on its own.
TERMINAL = frozenset({"succeeded", "dead", "cancelled"})
#: The longest long-poll the API grants per request.
MAX_WAIT = 60.0
#: Bytes read from a file per chunk of a streamed batch upload.
UPLOAD_CHUNK = 256 * 1024
#: Seconds to wait for the API's answer once a (possibly huge) batch upload is sent.
BATCH_READ_TIMEOUT = 3600.0

BatchSource = str | Path | IO[bytes] | Iterable[Mapping[str, Any] | str | bytes]


class BabelqError(Exception):
    """An error answered by the API (or status 0: the API could not be reached)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status, self.code, self.message, self.details = status, code, message, details

    @classmethod
    def from_response(cls, response: httpx.Response) -> BabelqError:
        """The error described by an (httpx) error response's body (or its status alone)."""
        return cls.from_answer(response.status_code, response.content, response.reason_phrase)

    @classmethod
    def from_answer(cls, status: int, body: bytes, reason: str = "") -> BabelqError:
        """The error described by an error answer's status, body and reason phrase."""
        try:
            error = json.loads(body)["error"]
            return cls(status, error["code"], error["message"], error.get("details"))
        except (ValueError, KeyError, TypeError):
            text = body.decode("utf-8", "replace").strip()[:500] or reason
            return cls(status, "http_error", text)


class Client:
    """The Babel Queue HTTP API, v1."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {"User-Agent": user_agent()}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._lean = _Lean.for_url(self.base_url, self._headers)
        self._httpx: httpx.Client | None = None
        self._httpx_lock = threading.Lock()
        self._closed = False
        if self._lean is None:
            self._http()  # a URL httpx cannot take fails here, as it always did

    @classmethod
    def from_settings(cls, timeout: float = 30.0) -> Client:
        """A client for the API and key of the settings (env, then .babelq/credentials.json)."""
        from app.config import load_settings

        s = load_settings()
        return cls(s.api_base_url(), s.api_key, timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection: each thread's keep-alive one, and httpx's pool."""
        if self._lean is not None:
            self._lean.close()
        with self._httpx_lock:
            self._closed = True
            if self._httpx is not None:
                self._httpx.close()

    # Plumbing ----------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        """The httpx client (streams; every call behind a proxy), made on first use: most
        clients never need it, and making one loads a CA bundle."""
        with self._httpx_lock:
            if self._httpx is None:
                if self._closed:
                    raise RuntimeError("the client has been closed")
                self._httpx = httpx.Client(
                    base_url=self.base_url, headers=self._headers, timeout=self.timeout)
            return self._httpx

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            response = self._http().send(request, stream=stream)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            response.read()
            response.close()
            raise BabelqError.from_response(response)
        return response

    def _unreachable(self, exc: BaseException) -> BabelqError:
        reason = str(exc) or type(exc).__name__
        return BabelqError(0, "unreachable", f"cannot reach {self.base_url}: {reason}")

    def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              body: Any = None, timeout: float | None = None) -> Any:
        """A small JSON call: body (unless None) sent as JSON; the JSON answer, None if empty."""
        timeout = self.timeout if timeout is None else timeout
        if self._lean is None:
            request = self._http().build_request(
                method, path, params=params, json=body, timeout=timeout)
            response = self._send(request)
            return response.json() if response.content else None
        # Encoded as httpx encodes json=.
        data = None if body is None else json.dumps(
            body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        try:
            status, reason, answer = self._lean.request(method, path, params, data, timeout)
        except (OSError, http.client.HTTPException, zlib.error) as exc:
            raise self._unreachable(exc) from exc
        if status >= 400:
            raise BabelqError.from_answer(status, answer, reason)
        return json.loads(answer) if answer else None

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A call whose answer is a JSON object."""
        return cast(dict[str, Any], self._call(method, path, **kwargs))

    # Jobs --------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        ref: str | None = None,
        run_at: str | None = None,
        delay: float | None = None,
        wait: float = 0,
    ) -> dict[str, Any]:
        """Submit one job; the same idempotency_key again returns the first job.

        run_at (ISO 8601) or delay (seconds): not before then. wait: answer once the job
        is terminal or that many seconds (≤ 60) have passed, in the same request.
        """
        body: dict[str, Any] = {"kind": kind, "params": dict(params or {})}
        extras = {
            "priority": priority,
            "max_attempts": max_attempts,
            "idempotency_key": idempotency_key,
            "ref": ref,
            "run_at": run_at,
            "delay": delay,
        }
        body.update({k: v for k, v in extras.items() if v is not None})
        if wait <= 0:
            return self._object("POST", "/v1/jobs", body=body)
        wait = min(wait, MAX_WAIT)
        return self._object("POST", "/v1/jobs", body=body, params={"wait": f"{wait:.3f}"},
                            timeout=self.timeout + wait)

    def get(self, job_id: int, wait: float = 0) -> dict[str, Any]:
        """The job; with wait, long-poll up to that many seconds (≤ 60) for a terminal state."""
        if wait <= 0:
            return self._object("GET", f"/v1/jobs/{job_id}")
        wait = min(wait, MAX_WAIT)
        return self._object(
            "GET", f"/v1/jobs/{job_id}", params={"wait": f"{wait:.3f}"}, timeout=self.timeout + wait
        )

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """The job once terminal, or as it is when timeout seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = MAX_WAIT if deadline is None else max(deadline - time.monotonic(), 0.0)
            job = self.get(job_id, wait=min(left, MAX_WAIT))
            if job["status"] in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
                return job

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a queued or running job (409 if it already finished)."""
        return self._object("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: int) -> dict[str, Any]:
        """Queue a dead or cancelled job again (409 otherwise)."""
        return self._object("POST", f"/v1/jobs/{job_id}/retry")

    def list_jobs(self, *, page_size: int = 100, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every job matching the filters (status, kind, batch_id, ...), newest first."""
        query = {k: v for k, v in filters.items() if v is not None}
        query["limit"] = page_size
        while True:
            page = self._call("GET", "/v1/jobs", params=query)
            yield from page["data"]
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    def audit(self, job_id: int) -> dict[str, Any]:
        """The job's audit trail and whether its hash chain verifies."""
        return self._object("GET", f"/v1/jobs/{job_id}/audit")

    def decision(self, job_id: int) -> dict[str, Any]:
        """The governor decision of a finished evaluate job."""
        return self._object("GET", f"/v1/jobs/{job_id}/decision")

    # Batches -----------------------------------------------------------------------

    def submit_batch(
        self,
        source: BatchSource,
        *,
        priority: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Stream jobs as NDJSON: a file path, a binary file, or an iterable of jobs.

        Jobs in an iterable are dicts (serialised here) or ready NDJSON lines. Nothing is
        held in memory beyond one chunk; on_progress gets the byte count of each chunk sent.
        priority is the default of lines that name none.
        """
        body = ndjson_body(source, on_progress)
        timeout = httpx.Timeout(self.timeout, read=BATCH_READ_TIMEOUT, write=BATCH_READ_TIMEOUT)
        headers = {"Content-Type": "application/x-ndjson"}
        params = {"priority": priority} if priority else None
        request = self._http().build_request(
            "POST", "/v1/batches", content=body, headers=headers, params=params, timeout=timeout
        )
        return cast(dict[str, Any], self._send(request).json())

    def batch(self, batch_id: int) -> dict[str, Any]:
        """The batch's counts per status, progress, rate and ETA."""
        return self._object("GET", f"/v1/batches/{batch_id}")

    def cancel_batch(self, batch_id: int) -> dict[str, Any]:
        """Cancel every job of the batch that has not started."""
        return self._object("POST", f"/v1/batches/{batch_id}/cancel")

    def iter_results(self, batch_id: int, page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """The batch's results in line order, one dict per job, across every page."""
        query: dict[str, Any] = {} if page_size is None else {"limit": page_size}
        while True:
            request = self._http().build_request(
                "GET", f"/v1/batches/{batch_id}/results", params=query
            )
            response = self._send(request, stream=True)
            try:
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
            finally:
                response.close()
            cursor = response.headers.get("X-Next-Cursor")
            if not cursor:
                return
            query["cursor"] = cursor

    # Webhooks ----------------------------------------------------------------------

    def create_webhook(self, url: str, events: list[str], *, include_batch_jobs: bool = False
                       ) -> dict[str, Any]:
        """Register an endpoint; its signing secret ("secret") is in this answer only."""
        return self._object("POST", "/v1/webhooks", body={
            "url": url, "events": events, "include_batch_jobs": include_batch_jobs})

    def list_webhooks(self) -> list[dict[str, Any]]:
        """The tenant's endpoints (never their secrets)."""
        return cast(list[dict[str, Any]], self._object("GET", "/v1/webhooks")["data"])

    def delete_webhook(self, endpoint_id: int) -> None:
        """Delete an endpoint and its deliveries."""
        self._call("DELETE", f"/v1/webhooks/{endpoint_id}")

    def deliveries(self, endpoint_id: int, *, status: str | None = None, limit: int = 100
                   ) -> list[dict[str, Any]]:
        """An endpoint's latest deliveries, newest first, with their attempts."""
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        page = self._object("GET", f"/v1/webhooks/{endpoint_id}/deliveries", params=params)
        return cast(list[dict[str, Any]], page["data"])

    def redeliver(self, endpoint_id: int, delivery_id: int) -> dict[str, Any]:
        """Send a delivery again now."""
        return self._object(
            "POST", f"/v1/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver")

    # Schedules ---------------------------------------------------------------------

    def create_schedule(self, name: str, cron: str, job: Mapping[str, Any], *,
                        timezone: str = "UTC") -> dict[str, Any]:
        """A schedule that submits `job` (kind, params, priority...) at every cron match."""
        return self._object("POST", "/v1/schedules", body={
            "name": name, "cron": cron, "timezone": timezone, "job": dict(job)})

    def list_schedules(self) -> list[dict[str, Any]]:
        """The tenant's schedules."""
        return cast(list[dict[str, Any]], self._object("GET", "/v1/schedules")["data"])

    def pause_schedule(self, schedule_id: int, paused: bool = True) -> dict[str, Any]:
        """Pause a schedule, or resume it (paused=False)."""
        action = "pause" if paused else "resume"
        return self._object("POST", f"/v1/schedules/{schedule_id}/{action}")

    def delete_schedule(self, schedule_id: int) -> None:
        """Delete a schedule (its jobs stay)."""
        self._call("DELETE", f"/v1/schedules/{schedule_id}")

    # Keys (admin) ------------------------------------------------------------------

    def create_key(self, tenant: str, *, admin: bool = False, name: str = "") -> dict[str, Any]:
        """A new key for the tenant; its secret ("key") is in this answer only."""
        return self._object(
            "POST", "/v1/keys", body={"tenant": tenant, "admin": admin, "name": name}
        )

    def list_keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every key (never a secret), or one tenant's."""
        params = {"tenant": tenant} if tenant else None
        keys: list[dict[str, Any]] = self._call("GET", "/v1/keys", params=params)
        return keys

    def revoke_key(self, key_id: int) -> None:
        """Revoke a key at once."""
        self._call("DELETE", f"/v1/keys/{key_id}")

    # System ------------------------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        """The readiness checks (database, Redis, migrations); raises BabelqError on 503."""
        return self._object("GET", "/ready")


# The lean transport ---------------------------------------------------------------------

#: Methods sent again, once, on a fresh connection when a kept-alive one fails before any
#: answer (the server closed it as the request left). Never a POST: it could be a job twice.
IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE"})
#: What a kept-alive connection that the server has closed raises on its next request.
_STALE = (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


@functools.cache
def user_agent() -> str:
    """babelq-client/<the installed package's version>."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"babelq-client/{version('babelq')}"
    except PackageNotFoundError:
        return "babelq-client"


def proxied(url: SplitResult) -> bool:
    """Whether httpx would send requests to this URL through a proxy of the environment
    (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, less NO_PROXY), as urllib reads them."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.hostname or "")


def tls_context() -> ssl.SSLContext:
    """The trust httpx gives by default: SSL_CERT_FILE or SSL_CERT_DIR if set, else certifi."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class _Connection(http.client.HTTPConnection):
    """http.client's connection, its request (line, headers and body) sent in one sendall.

    http.client sends the body apart from the headers: with TCP_NODELAY, two packets and
    two wake-ups of the server for every POST (0.1 ms more a call, measured).
    """

    _held: list[bytes] | None = None

    def send(self, data: Any) -> None:
        if self._held is not None and isinstance(data, bytes | bytearray):
            self._held.append(bytes(data))
        else:
            super().send(data)

    def request_at_once(self, method: str, target: str, body: bytes | None,
                        headers: Mapping[str, str]) -> None:
        self._held = []
        try:
            self.request(method, target, body, dict(headers))
            data = b"".join(self._held)
        finally:
            self._held = None
        self.send(data)


class _TLSConnection(_Connection, http.client.HTTPSConnection):
    """The same over TLS."""


class _Open:
    """The connections a client has open, in every thread, for close() to close."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.connections: set[_Connection] = set()
        self.closed = False

    def add(self, conn: _Connection) -> None:
        with self.lock:
            if self.closed:
                raise RuntimeError("the client has been closed")
            self.connections.add(conn)

    def discard(self, conn: _Connection) -> None:
        conn.close()
        with self.lock:
            self.connections.discard(conn)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            connections, self.connections = self.connections, set()
        for conn in connections:
            conn.close()


class _Slot:
    """A thread's connection. A thread's locals go when it ends, and its connection with
    them: a long-lived client used from short-lived threads holds no dead sockets."""

    def __init__(self, open_: _Open) -> None:
        self.open = open_
        self.conn: _Connection | None = None

    def __del__(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # at interpreter exit
                self.open.discard(self.conn)


class _Lean:
    """Small JSON calls over http.client: one keep-alive connection per thread."""

    @classmethod
    def for_url(cls, base_url: str, headers: Mapping[str, str]) -> _Lean | None:
        """The lean transport for an API URL, or None where httpx must carry every call:
        behind a proxy from the environment (httpx honours HTTP(S)_PROXY and NO_PROXY,
        http.client knows no proxies), or a URL that is not plain http(s)://host[:port]."""
        try:
            url = urlsplit(base_url)
            port = url.port
        except ValueError:
            return None
        if url.scheme not in ("http", "https") or not url.hostname or proxied(url):
            return None
        return cls(url, port, headers)

    def __init__(self, url: SplitResult, port: int | None, headers: Mapping[str, str]) -> None:
        self.host = url.hostname or ""
        self.port = port
        self.prefix = url.path.rstrip("/")
        self.context = tls_context() if url.scheme == "https" else None
        self.headers = {**headers, "Accept": "application/json", "Accept-Encoding": "gzip"}
        self.json_headers = {**self.headers, "Content-Type": "application/json"}
        self.open = _Open()
        self.local = threading.local()

    def close(self) -> None:
        self.open.close()

    def request(self, method: str, path: str, params: Mapping[str, Any] | None,
                body: bytes | None, timeout: float) -> tuple[int, str, bytes]:
        """Status, reason phrase and (decoded) body of one request; OSError or
        http.client.HTTPException when there is no answer."""
        target = self.prefix + path + (f"?{query(params)}" if params else "")
        headers = self.headers if body is None else self.json_headers
        slot, reused = self._connection()
        conn = cast(_Connection, slot.conn)
        try:
            try:
                if reused:
                    cast(socket.socket, conn.sock).settimeout(timeout)
                else:
                    conn.timeout = timeout
                    conn.connect()
                conn.request_at_once(method, target, body, headers)
                response = conn.getresponse()
            except _STALE:
                if not (reused and method in IDEMPOTENT):
                    raise
                # The server closed the kept-alive connection as the request left: once
                # more on a fresh one. A POST is not sent again: raised as unreachable.
                self.open.discard(conn)
                conn = slot.conn = self._new()
                conn.timeout = timeout
                conn.connect()
                conn.request_at_once(method, target, body, headers)
                response = conn.getresponse()
            data = response.read()
        except BaseException:
            # Whatever the state of a connection that failed mid-request, it is not reused.
            self.open.discard(conn)
            slot.conn = None
            raise
        if response.getheader("Content-Encoding", "").lower() == "gzip":
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
        return response.status, response.reason, data

    def _connection(self) -> tuple[_Slot, bool]:
        """This thread's slot with a connection, and whether that one is kept alive from
        an earlier request (else it is new and not connected yet)."""
        slot: _Slot | None = getattr(self.local, "slot", None)
        if slot is None:
            slot = self.local.slot = _Slot(self.open)
        conn = slot.conn
        if conn is not None and conn.sock is not None and not readable(conn.sock):
            return slot, True
        if conn is not None:
            # Closed by the answer before (Connection: close), or readable while idle: the
            # server closed it (uvicorn after 5 s idle) or broke the protocol. A new one.
            self.open.discard(conn)
        slot.conn = self._new()
        return slot, False

    def _new(self) -> _Connection:
        conn = (_Connection(self.host, self.port) if self.context is None
                else _TLSConnection(self.host, self.port, context=self.context))
        self.open.add(conn)
        return conn


def readable(sock: socket.socket) -> bool:
    """Whether an idle connection's socket has something to read: only the server's
    close (or garbage). The test httpcore makes before it reuses a connection."""
    if sock.fileno() < 0:
        return True
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select([sock], [], [], 0)[0])
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(0))


def query(params: Mapping[str, Any]) -> str:
    """Query parameters encoded as httpx encodes them (lists repeat the key; true, false)."""
    pairs = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            text = ("true" if item else "false") if isinstance(item, bool) else (
                "" if item is None else str(item))
            pairs.append((key, text))
    return urlencode(pairs)


def ndjson_body(
    source: BatchSource, on_progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """The NDJSON bytes of a batch source, chunk by chunk, never all in memory."""
    if isinstance(source, str | Path):
        return _file_chunks(Path(source), on_progress)
    if hasattr(source, "read"):
        return _stream_chunks(source, on_progress)  # type: ignore[arg-type]
    return _encoded_lines(source, on_progress)  # type: ignore[arg-type]


def _file_chunks(path: Path, on_progress: Callable[[int], None] | None) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from _stream_chunks(handle, on_progress)


def _stream_chunks(handle: IO[bytes], on_progress: Callable[[int], None] | None) -> Iterator[bytes]:
    while chunk := handle.read(UPLOAD_CHUNK):
        yield chunk
        if on_progress is not None:
            on_progress(len(chunk))


def _encoded_lines(
    items: Iterable[Mapping[str, Any] | str | bytes], on_progress: Callable[[int], None] | None
) -> Iterator[bytes]:
    buffer = bytearray()
    for item in items:
        buffer += _line(item)
        if len(buffer) >= UPLOAD_CHUNK:
            yield bytes(buffer)
            if on_progress is not None:
                on_progress(len(buffer))
            buffer.clear()
    if buffer:
        yield bytes(buffer)
        if on_progress is not None:
            on_progress(len(buffer))


def _line(item: Mapping[str, Any] | str | bytes) -> bytes:
    if isinstance(item, Mapping):
        data = json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        data = item.encode() if isinstance(item, str) else bytes(item)
    return data if data.endswith(b"\n") else data + b"\n"
