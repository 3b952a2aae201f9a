"""kombu's Redis transports, with one client per channel for the commands they send.

kombu builds a new redis.Redis for every event, ack and publish (Channel.conn_or_acquire),
and building one fills redis-py's table of some 170 response callbacks. A client holds no
connection of its own, only the channel's pool, so one client serves every call (redis-py
clients are thread-safe, and a pool reconnects after a fork). Measured here: a task event
sent and flushed costs 274 µs of CPU instead of 457-496 µs, and a worker sends three per
task while Flower listens. Used for redis:// and sentinel:// URLs (see
celery_app.configure); behind Sentinel the pool is kombu's sentinel-managed one, which
asks the sentinels for the master at every new connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis


class SharedClient:
    """conn_or_acquire that reuses one client on the channel's pool."""

    _shared: Any = None
    pool: Any
    _create_client: Any

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


class Channel(SharedClient, redis.Channel):
    """A Redis channel that reuses one client on its pool."""


class SentinelChannel(SharedClient, redis.SentinelChannel):
    """kombu's Sentinel channel, reusing one client on its sentinel-managed pool."""


class Transport(redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel


class SentinelTransport(redis.SentinelTransport):
    """kombu's Redis Sentinel transport with the shared-client channel."""

    Channel = SentinelChannel
