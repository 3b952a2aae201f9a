"""The webhook sender: signs and POSTs due deliveries, outside every job transaction.

It runs beside the relay, in a thread with its own asyncio loop, and keeps at most
webhook_concurrency requests in flight: a slow receiver holds one of them, never a
worker or a job row. Bodies are signed by the Standard Webhooks scheme (webhook-id,
webhook-timestamp, webhook-signature). Redirects are not followed, a receiver has
webhook_timeout seconds, and at most RESPONSE_KEPT bytes of its answer are kept.
HTTP is workers.webhook_http's lean client (httpx cost several times the CPU per
delivery), and the loop is uvloop's where it is installed (it is, with uvicorn[standard]).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlalchemy.exc import OperationalError
from standardwebhooks.webhooks import Webhook

from app.config import get_settings
from app.store.db import session_scope
from app.webhooks import deliveries
from app.webhooks.deliveries import Attempt, Due, Target
from app.webhooks.urls import UnsafeUrl, check_syntax, public_addresses
from workers.webhook_http import Client, Destination, HttpError, destination, request_target

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
#: Claim statements in flight at once: under load a claim waits tens of milliseconds for
#: PostgreSQL, and one at a time capped the sender at its batch size per round trip.
CLAIMS_AT_ONCE = 2
#: Deliveries claimed ahead at least: a claim waits tens of ms for PostgreSQL, and
#: concurrency x rounds (128 with 32) capped the sender near 2,000/s in the benchmark.
#: Safe however slow the receivers: a delivery is sent only before its lease nears its end.
AHEAD_MIN = 512
#: Seconds of a lease kept for recording an outcome after its attempt's timeout.
LEASE_MARGIN = 5.0
#: Seconds an idle sending coroutine waits before it looks whether it should stop.
STOP_CHECK = 1.0


class Sender:
    """Claims due deliveries ahead of its senders, sends each, records outcomes in batches.

    webhook_concurrency coroutines send, each with its own client and connections (no
    shared pool, no bookkeeping that grows with the requests waiting on it). Claims and
    records are one statement for many deliveries.
    """

    def __init__(self) -> None:
        self.settings = get_settings()
        self.size = self.settings.webhook_concurrency
        rounds = claim_rounds(self.settings.webhook_lease_seconds, self.settings.webhook_timeout)
        self.ahead = max(AHEAD_MIN, self.size * rounds)
        #: claimed deliveries, each with the time (monotonic) after which it is not sent
        self.claimed: asyncio.Queue[tuple[Due, Target | None, float]] = asyncio.Queue()
        #: deliveries left unsent because their lease was too close to its end
        self.let_go = 0
        self.outcomes: asyncio.Queue[Attempt] = asyncio.Queue()
        self.busy = 0
        #: deliveries asked for by claims still in flight, and those claims' tasks
        self.claiming = 0
        self.claims: set[asyncio.Task[None]] = set()
        #: no claim starts before this (monotonic): nothing was due, or the database was down
        self.claim_after = 0.0
        self.senders_left = 0
        self.signers: dict[str, Webhook] = {}
        self.resolved: dict[tuple[str, int], tuple[float, str]] = {}
        #: url -> (scheme, host, port, port given in the url, request target)
        self.parsed: dict[str, tuple[str, str, int, bool, str]] = {}
        #: deliveries this sender delivered, and attempts that failed (cheap counts)
        self.delivered = 0
        self.failed_attempts = 0

    async def run(self, stop: threading.Event) -> None:
        """Send until stop is set; database outages are waited out."""
        self.senders_left = self.size
        tasks = [asyncio.create_task(self.send_loop(stop)) for _ in range(self.size)]
        recorder = asyncio.create_task(self.record_loop(stop))
        while not stop.is_set():
            await self.fill()
        await asyncio.gather(*self.claims)  # what they claim is sent before the senders stop
        await asyncio.gather(*tasks)
        await recorder

    async def fill(self) -> None:
        """Keep `ahead` deliveries claimed (or being claimed) ahead of the senders."""
        free = self.ahead - self.claimed.qsize() - self.busy - self.claiming
        if (free < max(1, self.size // 2) or len(self.claims) >= CLAIMS_AT_ONCE
                or time.monotonic() < self.claim_after):
            await asyncio.sleep(FILL_EVERY)
            return
        self.claiming += free
        task = asyncio.create_task(self.claim(free))
        self.claims.add(task)
        task.add_done_callback(self.claims.discard)
        await asyncio.sleep(0)

    async def claim(self, limit: int) -> None:
        """One claim statement; database outages are waited out."""
        # Sent only if it can end, and be recorded, before its lease does; later it
        # is left for the next claim after the lease, never sent twice at once.
        # (A lease shorter than timeout + margin, as in tests, keeps its first half.)
        lease = self.settings.webhook_lease_seconds
        send_before = time.monotonic() + max(
            lease - self.settings.webhook_timeout - LEASE_MARGIN, lease / 2)
        try:
            due, targets = await asyncio.to_thread(_claim, limit)
        except OperationalError as exc:
            log.warning("webhook sender: database unavailable, will retry: %s", exc)
            due, targets = [], {}
            self.claim_after = time.monotonic() + 1.0
        finally:
            self.claiming -= limit
        for d in due:
            self.claimed.put_nowait((d, targets.get(d.endpoint_id), send_before))
        if not due:
            self.claim_after = max(self.claim_after, time.monotonic() + IDLE_POLL)

    async def send_loop(self, stop: threading.Event) -> None:
        """One sender: take a claimed delivery, send it, hand the outcome to the recorder."""
        http = Client(self.settings.webhook_timeout, RESPONSE_KEPT,
                      self.settings.webhook_ca_file)
        try:
            while not (stop.is_set() and self.claimed.empty()):
                try:
                    d, target, send_before = await asyncio.wait_for(self.claimed.get(),
                                                                    timeout=STOP_CHECK)
                except TimeoutError:
                    continue
                if time.monotonic() > send_before:
                    self.let_go += 1
                    continue
                self.busy += 1
                try:
                    self.outcomes.put_nowait(await self.send(http, d, target))
                finally:
                    self.busy -= 1
        finally:
            http.close()
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

    async def send(self, http: Client, d: Due, target: Target | None) -> Attempt:
        """One signed POST; any failure becomes the attempt's error, never an exception."""
        at = datetime.now(UTC)
        start = time.monotonic()
        attempt = Attempt(d, at, 0.0)
        try:
            if target is None:
                raise LookupError("endpoint deleted, or its secret cannot be opened")
            to, path = await self.route(target.url)
            reply = await http.post(to, path, self.sign(target.secret, d, at), d.body)
            attempt.status_code = reply.status
            attempt.response = reply.head.decode("utf-8", "replace")
        except (HttpError, UnsafeUrl, OSError, LookupError, UnicodeError) as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"[:RESPONSE_KEPT]
        attempt.ms = (time.monotonic() - start) * 1000
        return attempt

    def sign(self, secret: str, d: Due, at: datetime) -> list[tuple[str, str]]:
        """The Standard Webhooks headers of one attempt, with the others of every POST."""
        signer = self.signers.get(secret)
        if signer is None:
            signer = self.signers[secret] = Webhook(secret)
        msg_id = f"msg_{d.id}"
        return [("webhook-id", msg_id), ("webhook-timestamp", str(int(at.timestamp()))),
                ("webhook-signature", signer.sign(msg_id, at, d.body.decode())),
                ("content-type", "application/json"), ("user-agent", "babelq-webhooks/1")]

    async def route(self, url: str) -> tuple[Destination, str]:
        """Where to connect: unless private addresses are allowed, a checked public
        address of the host (pinned, so DNS cannot change it between check and connect),
        with the name kept for the Host header and TLS; and the request target."""
        parsed = self.parsed.get(url)
        if parsed is None:
            scheme, host, port = check_syntax(url, require_https=self.settings.env == "production")
            parts = urlsplit(url)
            parsed = (scheme, host, port, parts.port is not None,
                      request_target(parts.path, parts.query))
            if len(self.parsed) > 10_000:  # endpoints come and go: forget them all now and then
                self.parsed.clear()
            self.parsed[url] = parsed
        scheme, host, port, explicit, target = parsed
        if self.settings.webhook_allow_private:
            return destination(scheme, host, port, host, explicit), target
        key = (host, port)
        cached = self.resolved.get(key)
        if cached is None or cached[0] < time.monotonic():
            infos = await asyncio.get_running_loop().getaddrinfo(host, port)
            found = [(str(i[4][0]), int(i[0])) for i in infos]
            cached = (time.monotonic() + RESOLVED_FOR, public_addresses(host, port, found)[0])
            self.resolved[key] = cached
        return destination(scheme, host, port, cached[1], explicit), target


def claim_rounds(lease: float, timeout: float) -> int:
    """Rounds of `concurrency` deliveries to claim at once, so that the last of them is
    sent, and its outcome recorded, well within the lease even if every receiver takes
    the whole timeout: (rounds + 1) * timeout <= lease - timeout. One claim statement
    per round cost the sender most of its wall time waiting for PostgreSQL."""
    return max(1, int(lease // timeout) - 2)


def _claim(limit: int) -> tuple[list[Due], dict[int, Target]]:
    with session_scope() as session:
        return deliveries.claim_due(session, limit)


def _record(attempts: list[Attempt]) -> int:
    with session_scope() as session:
        return deliveries.record(session, attempts)


def run(stop: threading.Event) -> None:
    """The sender's loop, until stop is set (the relay starts it in a thread)."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(Sender().run(stop))
    except Exception:  # the relay starts a new sender (relay.keep_sending)
        log.exception("webhook sender stopped on an error")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (a third less CPU per delivery), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def start(stop: threading.Event) -> threading.Thread:
    """Run the sender in a daemon thread."""
    thread = threading.Thread(target=run, args=(stop,), name="webhook-sender", daemon=True)
    thread.start()
    return thread
