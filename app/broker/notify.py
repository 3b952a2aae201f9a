"""Finished-job notifications over Redis pub/sub, so long-polls wake at once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

import orjson
import redis
import redis.asyncio as aioredis

from app.broker import sentinel
from app.config import get_settings

log = logging.getLogger(__name__)

CHANNEL = "babelq:finished"
#: Ids of revoked API keys, so every api process drops them from its key cache at once.
KEYS_CHANNEL = "babelq:keys-revoked"


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


def finished(ids: Sequence[int], jobs: Sequence[orjson.Fragment] = ()) -> None:
    """Tell waiters these jobs changed state; best effort, waiters also poll.

    jobs: some of them whole, the JSON of each as a read would show it (with
    "tenant_id"), so a waiter answers without reading them again. The message is then
    {"ids": [...], "jobs": [...]}, else the list of ids alone.
    """
    url = get_settings().redis_url
    if not url or not ids:
        return
    message = orjson.dumps({"ids": list(ids), "jobs": list(jobs)}) if jobs else orjson.dumps(
        list(ids))
    try:
        redis_client(url).publish(CHANNEL, message)
    except redis.RedisError as exc:
        log.debug("finished-notification not sent: %s", exc)


def key_revoked(key_id: int) -> None:
    """Tell every api process to forget a revoked key; best effort, their cache expires."""
    url = get_settings().redis_url
    if not url:
        return
    try:
        redis_client(url).publish(KEYS_CHANNEL, str(key_id))
    except redis.RedisError as exc:
        log.debug("key revocation notice not sent: %s", exc)
