"""Publishing to the fast lane: single cheap jobs, straight to the worker threads that take them.

See workers/fastlane.py for the consuming side. A fast message is the job id alone, on a
Redis list per priority step; LPUSH by the process's one pooled Redis client.
"""

from __future__ import annotations

import logging

import redis

from app.broker.notify import redis_client
from app.config import get_settings

log = logging.getLogger(__name__)

#: The broker queue whose workers run fast-lane jobs (every fast job is an inline encode).
FAST_QUEUE = "encode"
#: The lane's Redis lists, highest priority (step 0) first.
FAST_KEYS = ["babelq:fast:0", "babelq:fast:1", "babelq:fast:2"]


def fast_keys() -> list[str]:
    """The lane's lists in the order a worker takes from them (BRPOP key order)."""
    return list(FAST_KEYS)


def publish_fast(priority: int, job_id: int) -> bool:
    """Send one job to the fast lane; False (the relay republishes it) if Redis is away."""
    try:
        redis_client(get_settings().redis_url or "").lpush(FAST_KEYS[priority], job_id)
    except redis.RedisError as exc:
        log.warning("fast-lane publish of job %d failed, relay will retry: %s", job_id, exc)
        return False
    return True
