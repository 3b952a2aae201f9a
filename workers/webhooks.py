"""The webhook sender: signs and POSTs due deliveries, outside every job transaction.

It runs beside the relay, in a thread with its own asyncio loop, and keeps at most
webhook_concurrency requests in flight: a slow receiver holds one of them, never a
worker or a job row. Bodies are signed by the Standard Webhooks scheme (webhook-id,
webhook-timestamp, webhook-signature). Redirects are not followed, a receiver has
webhook_timeout seconds, and at most RESPONSE_KEPT bytes of its answer are kept.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy.exc import OperationalError
from standardwebhooks.webhooks import Webhook

from app.config import get_settings
from app.store.db import session_scope
from app.webhooks import deliveries
from app.webhooks.deliveries import Attempt, Due, Target
from app.webhooks.urls import UnsafeUrl, check_syntax, public_addresses

log = logging.getLogger(__name__)

#: Bytes of a response body kept with the attempt.
RESPONSE_KEPT = 1024
#: Seconds between looks for due deliveries while there are none.
IDLE_POLL = 0.2
#: Seconds a checked address of a host is used before the name is resolved again.
RESOLVED_FOR = 30.0
#: Seconds the recorder gathers outcomes before writing them in one statement.
RECORD_EVERY = 0.05
#: Seconds between looks at whether the senders need more claimed deliveries.
FILL_EVERY = 0.02
#: Seconds an idle sending coroutine waits before it looks whether it should stop.
STOP_CHECK = 1.0


class Sender:
    """Claims due deliveries ahead of its senders, sends each, records outcomes in batches.

    webhook_concurrency coroutines send, each with its own httpx client (one pool shared
    by all of them costs several times the CPU per request: its bookkeeping grows with the
    requests waiting on it). Claims and records are one statement for many deliveries.
    """

    def __init__(self) -> None:
        self.settings = get_settings()
        self.size = self.settings.webhook_concurrency
        self.claimed: asyncio.Queue[tuple[Due, Target | None]] = asyncio.Queue()
        self.outcomes: asyncio.Queue[Attempt] = asyncio.Queue()
        self.busy = 0
        self.senders_left = 0
        self.signers: dict[str, Webhook] = {}
        self.resolved: dict[tuple[str, int], tuple[float, str]] = {}
        #: deliveries this sender delivered, and attempts that failed (cheap counts)
        self.delivered = 0
        self.failed_attempts = 0

    async def run(self, stop: threading.Event) -> None:
        """Send until stop is set; database outages are waited out."""
        self.senders_left = self.size
        tasks = [asyncio.create_task(self.send_loop(stop)) for _ in range(self.size)]
        recorder = asyncio.create_task(self.record_loop(stop))
        while not stop.is_set():
            try:
                await self.fill()
            except OperationalError as exc:
                log.warning("webhook sender: database unavailable, will retry: %s", exc)
                await asyncio.sleep(1.0)
        await asyncio.gather(*tasks)
        await recorder

    async def fill(self) -> None:
        """Keep about two rounds of deliveries claimed ahead of the senders."""
        free = 2 * self.size - self.claimed.qsize() - self.busy
        if free < max(1, self.size // 2):
            await asyncio.sleep(FILL_EVERY)
            return
        due, targets = await asyncio.to_thread(_claim, free)
        for d in due:
            self.claimed.put_nowait((d, targets.get(d.endpoint_id)))
        if not due:
            await asyncio.sleep(IDLE_POLL)

    async def send_loop(self, stop: threading.Event) -> None:
        """One sender: take a claimed delivery, send it, hand the outcome to the recorder."""
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout,
                                     follow_redirects=False, trust_env=False) as http:
            while not (stop.is_set() and self.claimed.empty()):
                try:
                    d, target = await asyncio.wait_for(self.claimed.get(), timeout=STOP_CHECK)
                except TimeoutError:
                    continue
                self.busy += 1
                try:
                    self.outcomes.put_nowait(await self.send(http, d, target))
                finally:
                    self.busy -= 1
        self.senders_left -= 1

    async def record_loop(self, stop: threading.Event) -> None:
        """Write outcomes in batches until stopped and nothing is left to write."""
        while not (stop.is_set() and not self.senders_left and self.outcomes.empty()):
            try:
                first = await asyncio.wait_for(self.outcomes.get(), timeout=IDLE_POLL)
            except TimeoutError:
                continue
            await asyncio.sleep(RECORD_EVERY)  # let the others of this round arrive
            batch = [first]
            while not self.outcomes.empty():
                batch.append(self.outcomes.get_nowait())
            try:
                delivered = await asyncio.to_thread(_record, batch)
            except OperationalError as exc:
                # Not recorded: the deliveries are sent again when their lease ends.
                log.warning("webhook sender: %d outcome(s) not recorded: %s", len(batch), exc)
                continue
            self.delivered += delivered
            self.failed_attempts += len(batch) - delivered

    async def send(self, http: httpx.AsyncClient, d: Due, target: Target | None) -> Attempt:
        """One signed POST; any failure becomes the attempt's error, never an exception."""
        at = datetime.now(UTC)
        start = time.monotonic()
        attempt = Attempt(d, at, 0.0)
        try:
            if target is None:
                raise LookupError("endpoint deleted, or its secret cannot be opened")
            url, headers, extensions = await self.route(target.url)
            headers.update(self.sign(target.secret, d, at))
            async with http.stream("POST", url, content=d.body, headers=headers,
                                   extensions=extensions) as response:
                attempt.status_code = response.status_code
                attempt.response = await _head(response)
        except (httpx.HTTPError, UnsafeUrl, OSError, LookupError) as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"[:RESPONSE_KEPT]
        attempt.ms = (time.monotonic() - start) * 1000
        return attempt

    def sign(self, secret: str, d: Due, at: datetime) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt."""
        signer = self.signers.get(secret)
        if signer is None:
            signer = self.signers[secret] = Webhook(secret)
        msg_id = f"msg_{d.id}"
        return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": signer.sign(msg_id, at, d.body.decode()),
                "content-type": "application/json", "user-agent": "babelq-webhooks/1"}

    async def route(self, url: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """Where to connect: unless private addresses are allowed, a checked public
        address of the host (pinned, so DNS cannot change it between check and connect),
        with the name kept for the Host header and TLS."""
        scheme, host, port = check_syntax(url, require_https=self.settings.env == "production")
        if self.settings.webhook_allow_private:
            return url, {}, {}
        key = (host, port)
        cached = self.resolved.get(key)
        if cached is None or cached[0] < time.monotonic():
            infos = await asyncio.get_running_loop().getaddrinfo(host, port)
            found = [(str(i[4][0]), int(i[0])) for i in infos]
            cached = (time.monotonic() + RESOLVED_FOR, public_addresses(host, port, found)[0])
            self.resolved[key] = cached
        address = cached[1]
        parts = urlsplit(url)
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        return urlunsplit(parts._replace(netloc=netloc)), {"host": parts.netloc}, extensions


async def _head(response: httpx.Response) -> str:
    """At most RESPONSE_KEPT bytes of a body, as text; the rest is never read."""
    kept = b""
    async for chunk in response.aiter_raw():
        kept += chunk
        if len(kept) >= RESPONSE_KEPT:
            break
    return kept[:RESPONSE_KEPT].decode("utf-8", "replace")


def _claim(limit: int) -> tuple[list[Due], dict[int, Target]]:
    with session_scope() as session:
        return deliveries.claim_due(session, limit)


def _record(attempts: list[Attempt]) -> int:
    with session_scope() as session:
        return deliveries.record(session, attempts)


def run(stop: threading.Event) -> None:
    """The sender's loop, until stop is set (the relay starts it in a thread)."""
    # httpx logs every request at INFO: thousands of lines a second under load.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        asyncio.run(Sender().run(stop))
    except Exception:
        log.exception("webhook sender stopped; restart the relay to send again")
        raise


def start(stop: threading.Event) -> threading.Thread:
    """Run the sender in a daemon thread."""
    thread = threading.Thread(target=run, args=(stop,), name="webhook-sender", daemon=True)
    thread.start()
    return thread
