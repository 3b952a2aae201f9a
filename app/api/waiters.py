"""Long-poll support: one Redis subscription per api process wakes every waiter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from app.broker.notify import CHANNEL, async_redis_client

log = logging.getLogger(__name__)


class Waiters:
    """Job id → events of requests waiting for that job to change state."""

    def __init__(self) -> None:
        self._events: dict[int, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

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
                        await pubsub.subscribe(CHANNEL)
                        async for message in pubsub.listen():
                            if message.get("type") == "message":
                                self._wake(json.loads(message["data"]))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis away: waiters fall back to polling
                    log.debug("waiter subscription lost: %s", exc)
                    await asyncio.sleep(1.0)
        finally:
            await client.aclose()

    def _wake(self, ids: list[int]) -> None:
        for job_id in ids:
            for ev in self._events.get(job_id, ()):
                ev.set()

    @contextlib.contextmanager
    def watch(self, job_id: int):  # type: ignore[no-untyped-def]
        """Register interest before reading the job, so no notification slips between."""
        ev = asyncio.Event()
        self._events.setdefault(job_id, set()).add(ev)
        try:
            yield ev
        finally:
            group = self._events.get(job_id)
            if group is not None:
                group.discard(ev)
                if not group:
                    del self._events[job_id]
