"""kombu's Redis transport, with one client per channel for the commands it sends.

kombu builds a new redis.Redis for every event, ack and publish (Channel.conn_or_acquire),
and building one fills redis-py's table of some 170 response callbacks. A client holds no
connection of its own, only the channel's pool, so one client serves every call (redis-py
clients are thread-safe, and a pool reconnects after a fork). Measured here: a task event
sent and flushed costs 274 µs of CPU instead of 457-496 µs, and a worker sends three per
task while Flower listens. Used for redis:// URLs (see celery_app.configure).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):
    """A Redis channel that reuses one client on its pool."""

    _shared: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The given client, else this channel's one client (made anew if its pool changed)."""
        if client:
            yield client
            return
        pool = self.pool
        if self._shared is None or self._shared.connection_pool is not pool:
            self._shared = self._create_client()
        yield self._shared


class Transport(redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel
