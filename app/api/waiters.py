"""Long-poll support: one Redis subscription per api process wakes every waiter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from app.broker.notify import CHANNEL, KEYS_CHANNEL, async_redis_client

log = logging.getLogger(__name__)


class Watch(asyncio.Event):
    """Set when the watched job changes state; with the job itself when the worker sent it."""

    def __init__(self) -> None:
        super().__init__()
        #: the finished job as a read shows it, with its tenant_id (see notify.finished)
        self.final: dict[str, Any] | None = None


class RecentlyFinished:
    """The jobs announced lately, each for a few seconds: whole if they succeeded (so never
    to change), else by id alone.

    A single job usually finishes before its producer's long-poll arrives: that poll is
    then answered from here, after the same tenant check, without reading PostgreSQL. A
    long-poll that knows a job as it was just submitted reads it only if it was announced.
    """

    #: Seconds an announced job is kept, and how many are kept at most: whole (a result
    #: each), and by id alone (a batch's chunks announce hundreds at a time).
    SECONDS, MAX, MAX_IDS = 5.0, 1024, 16_384

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._jobs: OrderedDict[int, tuple[float, dict[str, Any]]] = OrderedDict()
        self._ids: OrderedDict[int, float] = OrderedDict()

    def add(self, job: dict[str, Any]) -> None:
        """Keep a finished job, dropping the oldest beyond MAX."""
        self._jobs[job["id"]] = (self._clock() + self.SECONDS, job)
        self._jobs.move_to_end(job["id"])
        while len(self._jobs) > self.MAX:
            self._jobs.popitem(last=False)
        self.mark(job["id"])

    def mark(self, job_id: int) -> None:
        """Remember that this job was announced (changed state), dropping the oldest ids."""
        self._ids[job_id] = self._clock() + self.SECONDS
        self._ids.move_to_end(job_id)
        while len(self._ids) > self.MAX_IDS:
            self._ids.popitem(last=False)

    def get(self, job_id: int) -> dict[str, Any] | None:
        """The job if it was announced whole less than SECONDS ago."""
        entry = self._jobs.get(job_id)
        return entry[1] if entry is not None and entry[0] > self._clock() else None

    def announced(self, job_id: int) -> bool:
        """Whether the job was announced (whole or not) less than SECONDS ago."""
        until = self._ids.get(job_id)
        return until is not None and until > self._clock()


class RecentlySubmitted:
    """Jobs this process stored a moment ago, by id and tenant, each for a few seconds.

    A producer's long-poll usually follows its submission at once: its first look then
    waits (after the same tenant check as a read) instead of reading PostgreSQL, unless
    the job was announced since. A look after waiting reads, as ever, so a job changed
    elsewhere (cancelled through another api process) is seen within the poll fallback,
    as a lost announcement would be. Only ids and tenants are kept, not the jobs: MAX
    entries cost the same memory whatever the jobs' params.
    """

    SECONDS, MAX = 5.0, 4096

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._jobs: OrderedDict[int, tuple[float, int]] = OrderedDict()

    def add(self, job_id: int, tenant_id: int) -> None:
        """Keep a job just stored (its tenant), dropping the oldest beyond MAX."""
        self._jobs[job_id] = (self._clock() + self.SECONDS, tenant_id)
        while len(self._jobs) > self.MAX:
            self._jobs.popitem(last=False)

    def get(self, job_id: int) -> int | None:
        """The job's tenant if it was stored here less than SECONDS ago."""
        entry = self._jobs.get(job_id)
        return entry[1] if entry is not None and entry[0] > self._clock() else None


class Waiters:
    """Job id → events of requests waiting for that job to change state."""

    def __init__(self, on_key_revoked: Callable[[int], None] = lambda key_id: None) -> None:
        #: jobs just announced whole: see RecentlyFinished
        self.recent = RecentlyFinished()
        #: jobs just stored by this process: see RecentlySubmitted
        self.submitted = RecentlySubmitted()
        self._events: dict[int, set[Watch]] = {}
        #: open long-polls per tenant (see waiting)
        self._open: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        #: Called with the id of every key revoked anywhere (see app.api.keycache).
        self._on_key_revoked = on_key_revoked

    def start(self, redis_url: str) -> None:
        """Start listening on the finished-jobs channel."""
        self._task = asyncio.create_task(self._listen(redis_url))

    async def stop(self) -> None:
        """Stop listening."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _listen(self, url: str) -> None:
        # One client for the process; a lost subscription reconnects through its pool
        # (a client per attempt was never closed: one leaked pool per Redis outage).
        # A subscription only reads, so a half-open connection is found by TCP keepalive,
        # on by default in redis-py 8.1 (redis-py#4082: idle 30 s, then 3 probes 5 s
        # apart); listen() then raises and we resubscribe. Meanwhile waiters re-read.
        client = async_redis_client(url)
        try:
            while True:
                try:
                    async with client.pubsub() as pubsub:
                        await pubsub.subscribe(CHANNEL, KEYS_CHANNEL)
                        async for message in pubsub.listen():
                            if message.get("type") != "message":
                                continue
                            if message["channel"] == KEYS_CHANNEL.encode():
                                self._on_key_revoked(int(message["data"]))
                            else:
                                self._wake(orjson.loads(message["data"]))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis away: waiters fall back to polling
                    log.debug("waiter subscription lost: %s", exc)
                    await asyncio.sleep(1.0)
        finally:
            await client.aclose()

    def _wake(self, message: list[int] | dict[str, Any]) -> None:
        """Set the watches of these jobs: a list of ids, or ids and some jobs whole."""
        if isinstance(message, dict):
            ids, finals = message["ids"], {job["id"]: job for job in message["jobs"]}
        else:
            ids, finals = message, {}
        for job in finals.values():
            self.recent.add(job)
        for job_id in ids:
            self.recent.mark(job_id)
        for job_id in ids:
            for watch in self._events.get(job_id, ()):
                watch.final = finals.get(job_id)
                watch.set()

    @contextlib.contextmanager
    def waiting(self, tenant_id: int, limit: int) -> Iterator[bool]:
        """Whether the tenant may hold one more long-poll here (limit 0: any number); the
        long-poll counts while inside the block."""
        if limit and self._open.get(tenant_id, 0) >= limit:
            yield False
            return
        self._open[tenant_id] = self._open.get(tenant_id, 0) + 1
        try:
            yield True
        finally:
            self._open[tenant_id] -= 1
            if not self._open[tenant_id]:
                del self._open[tenant_id]

    def open_long_polls(self, tenant_id: int) -> int:
        """Long-polls the tenant holds open in this process."""
        return self._open.get(tenant_id, 0)

    @contextlib.contextmanager
    def watch(self, job_id: int):  # type: ignore[no-untyped-def]
        """Register interest before reading the job, so no notification slips between."""
        ev = Watch()
        self._events.setdefault(job_id, set()).add(ev)
        try:
            yield ev
        finally:
            group = self._events.get(job_id)
            if group is not None:
                group.discard(ev)
                if not group:
                    del self._events[job_id]
