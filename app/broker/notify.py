"""Finished-job notifications over Redis pub/sub, so long-polls wake at once."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import lru_cache

import redis
import redis.asyncio as aioredis

from app.broker import sentinel
from app.config import get_settings

log = logging.getLogger(__name__)

CHANNEL = "babelq:finished"


#: Socket timeouts of the app's own Redis clients, in seconds.
REDIS_TIMEOUTS = {"socket_timeout": 5, "socket_connect_timeout": 5}


@lru_cache(maxsize=4)
def redis_client(url: str) -> redis.Redis:
    """One client (with its pool) per URL per process; the Sentinel master's for sentinel://."""
    if sentinel.is_sentinel(url):
        s = get_settings()
        return sentinel.master_client(url, s.redis_sentinel_master, s.redis_sentinel_password,
                                      **REDIS_TIMEOUTS)
    return redis.Redis.from_url(url, **REDIS_TIMEOUTS)


def async_redis_client(url: str) -> aioredis.Redis:
    """A new asyncio client (no timeouts: it holds a subscription); Sentinel-aware."""
    if sentinel.is_sentinel(url):
        s = get_settings()
        return sentinel.async_master_client(url, s.redis_sentinel_master,
                                            s.redis_sentinel_password)
    return aioredis.Redis.from_url(url)


def finished(ids: Sequence[int]) -> None:
    """Tell waiters these jobs changed state; best effort, waiters also poll."""
    url = get_settings().redis_url
    if not url or not ids:
        return
    try:
        redis_client(url).publish(CHANNEL, json.dumps(list(ids)))
    except redis.RedisError as exc:
        log.debug("finished-notification not sent: %s", exc)
