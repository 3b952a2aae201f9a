"""Long-poll support: one Redis subscription per api process wakes every waiter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket

import redis.asyncio as aioredis

from app.notify import CHANNEL

log = logging.getLogger(__name__)

#: Idle seconds before the first probe, seconds between probes, probes before giving up
#: (the options this platform has; elsewhere the system's defaults apply).
KEEPALIVE = {getattr(socket, name): value for name, value in
             (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
             if hasattr(socket, name)}


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
        # TCP keepalive: a subscription blocks reading with nothing to send, so a peer
        # gone without a word (a half-open connection) is found only by the kernel's
        # probes; then listen() raises and we resubscribe. About 60 s, not 2 hours.
        client = aioredis.Redis.from_url(url, socket_keepalive=True,
                                         socket_keepalive_options=KEEPALIVE)
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
