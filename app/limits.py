"""Per-tenant limits: a submission rate (token bucket in Redis) and a queued-jobs cap."""

from __future__ import annotations

import math
import time

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from app.config import get_settings
from app.keys import Principal
from app.notify import redis_client

#: Atomic token bucket: refill by elapsed time, take n tokens or say how long to wait.
_BUCKET = """
local rate, burst, n, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= n then tokens = tokens - n else wait = (n - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return tostring(wait)
"""


def take_tokens(tenant_id: int, n: int) -> float:
    """Take n submissions from the tenant's bucket; seconds to wait if it is too empty."""
    s = get_settings()
    if s.rate_limit_per_second <= 0:
        return 0.0
    burst = max(s.rate_limit_burst, n, 1) if n > s.rate_limit_burst else max(s.rate_limit_burst, 1)
    client = redis_client(s.redis_url or "")
    wait = client.eval(_BUCKET, 1, f"babelq:bucket:{tenant_id}", s.rate_limit_per_second,
                       burst, n, time.time())
    return float(wait)


def queued_count(session: Session, tenant_id: int) -> int:
    """Jobs of the tenant waiting or running."""
    return int(session.execute(
        text("SELECT count(*) FROM jobs WHERE tenant_id = :t AND status IN ('queued', 'running')"),
        {"t": tenant_id},
    ).scalar_one())


def check_submission(session: Session, principal: Principal, n: int) -> None:
    """Raise 429 (with Retry-After) if n more jobs would break a tenant limit."""
    s = get_settings()
    wait = take_tokens(principal.tenant_id, n)
    if wait > 0:
        raise ApiError(429, f"rate limit of {s.rate_limit_per_second:g} jobs/s exceeded",
                       headers={"Retry-After": str(max(1, math.ceil(wait)))})
    cap = s.max_queued_per_tenant
    if cap > 0 and queued_count(session, principal.tenant_id) + n > cap:
        raise ApiError(429, f"tenant already has the maximum of {cap} unfinished jobs",
                       headers={"Retry-After": "5"})
