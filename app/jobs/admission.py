"""Per-tenant limits: a submission rate (token bucket in Redis) and a cap on unfinished jobs.

Rate. Each tenant has a bucket holding up to `burst` tokens (`rate_limit_burst`, or one
second's worth when 0), refilled at `rate_limit_per_second`; n jobs take n tokens. A
request for more jobs than the bucket can hold (a big batch) is admitted only when the
bucket is full, and leaves it in debt: the tenant's next submission waits until the debt
is repaid. So the long-run rate never exceeds the limit, yet a batch never has to be
split to fit the burst. A refused request takes no tokens.

Cap. `max_queued_per_tenant` bounds the tenant's queued and running jobs. A request
that would pass it is refused whole with 429; a batch bigger than the cap itself could
never fit, so it gets 413 and a message saying to split it.

Both say when to retry (retry_after, the api's Retry-After). Either limit is off when its
setting is 0. Refusals are plain exceptions (app/jobs/refusals.py); the api maps them.
"""

from __future__ import annotations

import logging
import math

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.broker.notify import redis_client
from app.config import get_settings
from app.jobs.keys import Principal
from app.jobs.refusals import AtCap, NeverFits, RateLimited

log = logging.getLogger(__name__)

#: Seconds a tenant at its cap is told to wait: jobs finish at the workers' pace, unknown here.
CAP_RETRY_AFTER = 5

#: First half of the advisory lock key that serialises one tenant's cap checks ("bq").
_CAP_LOCK = 0x6271

#: Atomic token bucket on Redis' clock (api hosts' clocks may disagree). ARGV: rate,
#: burst, cost (tokens to take), need (tokens the bucket must hold). Returns the seconds
#: to wait, 0 when the tokens were taken. The key expires when the bucket would be full
#: again, so a missing key means a full bucket.
_BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, need = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= need then tokens = tokens - cost else wait = (need - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1)
return tostring(wait)
"""

_UNFINISHED = text(
    "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE tenant_id = :t "
    "AND status IN ('queued', 'running') AND batch_id IS DISTINCT FROM :b LIMIT :cap) s"
)


def burst_size() -> float:
    """The bucket's capacity: the configured burst, or one second's worth of jobs."""
    s = get_settings()
    return float(s.rate_limit_burst or max(1, math.ceil(s.rate_limit_per_second)))


def _bucket(tenant_id: int, cost: int, need: float) -> float:
    """Run the bucket script; 0.0 (allowed) if Redis cannot be reached."""
    s = get_settings()
    try:
        wait = redis_client(s.redis_url or "").eval(
            _BUCKET, 1, f"babelq:bucket:{tenant_id}", s.rate_limit_per_second, burst_size(),
            cost, need)
    except redis.RedisError as exc:
        # Redis only carries messages: jobs are still stored and the relay publishes them
        # later, so the api keeps accepting (the cap, in PostgreSQL, still holds).
        log.warning("rate limit not enforced, Redis unavailable: %s", exc)
        return 0.0
    return float(wait)


def take_tokens(tenant_id: int, n: int) -> float:
    """Take n submissions from the tenant's bucket; seconds to wait (nothing taken) if too empty."""
    if get_settings().rate_limit_per_second <= 0:
        return 0.0
    return _bucket(tenant_id, n, min(float(n), burst_size()))


def _rate_limited(wait: float) -> RateLimited:
    rate = get_settings().rate_limit_per_second
    return RateLimited(f"rate limit of {rate:g} jobs/s (burst {burst_size():g}) exceeded; "
                       f"retry in {wait:.1f} s", {"retry_after": wait},
                       retry_after=max(1, math.ceil(wait)))


def _capped(cap: int, unfinished: int, n: int) -> AtCap:
    have = f"at least {cap}" if unfinished >= cap else str(unfinished)
    return AtCap(f"tenant has {have} unfinished jobs; {n} more would pass the cap of "
                 f"{cap}", {"cap": cap, "unfinished": unfinished, "requested": n},
                 retry_after=CAP_RETRY_AFTER)


def unfinished_count(session: Session, tenant_id: int, cap: int, batch_id: int | None = None
                     ) -> int:
    """The tenant's queued and running jobs outside batch_id, counted up to cap only."""
    # Batch ids start at 1, so 0 excludes nothing (NULL would exclude every single job).
    params = {"t": tenant_id, "b": batch_id or 0, "cap": cap}
    return int(session.execute(_UNFINISHED, params).scalar_one())


def check_cap(session: Session, tenant_id: int, n: int, batch_id: int | None = None) -> None:
    """NeverFits if n jobs could never fit under the cap, AtCap if they do not fit now.

    Holds a per-tenant advisory lock until the caller's transaction ends, so concurrent
    submissions of one tenant cannot all see room for themselves and overshoot the cap.
    """
    cap = get_settings().max_queued_per_tenant
    if cap <= 0:
        return
    if n > cap:
        raise NeverFits(f"{n} jobs can never fit under the cap of {cap} unfinished jobs per "
                        f"tenant; split the batch", {"cap": cap, "requested": n})
    lock_tenant(session, _CAP_LOCK, tenant_id)
    unfinished = unfinished_count(session, tenant_id, cap, batch_id)
    if unfinished + n > cap:
        raise _capped(cap, unfinished, n)


def lock_tenant(session: Session, namespace: int, tenant_id: int) -> None:
    """Hold the tenant's advisory lock of this namespace until the transaction ends: a
    count-then-insert under a per-tenant limit, done by one transaction at a time."""
    session.execute(text("SELECT pg_advisory_xact_lock(:ns, :t)"),
                    {"ns": namespace, "t": tenant_id})


def check_submission(
    session: Session, principal: Principal, n: int, *, batch_id: int | None = None
) -> None:
    """Raise AtCap or RateLimited (with retry_after) if n more jobs would break a limit.

    The cap is checked first, so a request refused for it takes no tokens. batch_id names
    a batch whose jobs are already inserted in this transaction (and counted in n).
    """
    check_cap(session, principal.tenant_id, n, batch_id)
    wait = take_tokens(principal.tenant_id, n)
    if wait > 0:
        raise _rate_limited(wait)


def precheck_batch(session: Session, principal: Principal) -> None:
    """Refuse an upload before reading it when the tenant is already at a limit."""
    s = get_settings()
    cap = s.max_queued_per_tenant
    if cap > 0:
        unfinished = unfinished_count(session, principal.tenant_id, cap)
        if unfinished >= cap:
            raise _capped(cap, unfinished, 1)
    if s.rate_limit_per_second > 0:
        wait = _bucket(principal.tenant_id, 0, 1.0)
        if wait > 0:
            raise _rate_limited(wait)
