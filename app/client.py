"""A Python client of the HTTP API, for other services and for the `babelq` CLI.

    with Client.from_settings() as bq:
        job = bq.wait(bq.submit("encode", {"text": "hello world"})["id"])

One keep-alive connection pool per client. Every API error is raised as BabelqError
with the status, code, message and details of the API's error body; an API that
cannot be reached at all is a BabelqError with status 0 and code "unreachable".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

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
        """The error described by an error response's body (or its status alone)."""
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error.get("details"))
        except (ValueError, KeyError, TypeError):
            text = response.text.strip()[:500] or response.reason_phrase
            return cls(response.status_code, "http_error", text)


class Client:
    """The Babel Queue HTTP API, v1."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

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
        """Close the connection pool."""
        self._http.close()

    # Plumbing ----------------------------------------------------------------------

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise BabelqError(0, "unreachable", f"cannot reach {self.base_url}: {reason}") from exc
        if response.status_code >= 400:
            response.read()
            response.close()
            raise BabelqError.from_response(response)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(self._http.build_request(method, path, **kwargs))
        return response.json() if response.content else None

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
            return self._object("POST", "/v1/jobs", json=body)
        wait = min(wait, MAX_WAIT)
        return self._object("POST", "/v1/jobs", json=body, params={"wait": f"{wait:.3f}"},
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
        return self._object(
            "POST", "/v1/batches", content=body, headers=headers, params=params, timeout=timeout
        )

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
            request = self._http.build_request(
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
        return self._object("POST", "/v1/webhooks", json={
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
        return self._object("POST", "/v1/schedules", json={
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
            "POST", "/v1/keys", json={"tenant": tenant, "admin": admin, "name": name}
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
