"""The broker's side of fair dispatch: window room, chunk sizes by time, publishing.

app.jobs.dispatch decides what to send; this module measures Redis and sends. Used by
the relay (every pass), by workers (after each chunk, so the window refills as fast as
it drains) and by the api (a batch starts at once, not at the next relay pass).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import redis

from app.config import get_settings
from app.db import session_scope
from app.jobs import dispatch
from app.notify import redis_client
from app.testhooks import TEST_KINDS
from workers.celery_app import (
    KINDS,
    PRIORITY_STEPS,
    celery_app,
    chunk_message,
    queue_for,
    queue_keys,
)

log = logging.getLogger(__name__)

#: Redis hash: kind -> measured seconds per job (an EWMA over chunks).
JOB_SECONDS = "babelq:job_seconds"
#: Weight of the newest chunk in the per-job run time.
EWMA_ALPHA = 0.3
#: Jobs per message of a kind whose run time was never measured.
FIRST_CHUNK = 10

#: This process's running estimates (kind -> seconds per job), written through to Redis.
_estimates: dict[str, float] = {}


def _client() -> redis.Redis:
    return redis_client(celery_app.conf.broker_url)


class RedisBroker:
    """dispatch.Broker over the Celery queues in Redis; reads Redis once, when made."""

    def __init__(self) -> None:
        settings = get_settings()
        self.window = settings.dispatch_window
        self.max_chunk = settings.chunk_size
        self.target = settings.chunk_seconds
        pipe = _client().pipeline(transaction=False)
        for queue in KINDS:
            for key in queue_keys(queue):
                pipe.llen(key)
        pipe.hgetall(JOB_SECONDS)
        *lengths, costs = pipe.execute()
        lanes = [(queue, step) for queue in KINDS for step in PRIORITY_STEPS]
        #: messages waiting per (queue, priority)
        self.waiting = dict(zip(lanes, lengths, strict=True))
        self.costs = {k.decode(): float(v) for k, v in costs.items()}

    def room(self) -> dict[tuple[str, int], int]:
        """Messages each lane takes before its window is full (test kinds share encode's)."""
        return {(kind, step): max(0, self.window - self.waiting[(queue_for(kind), step)])
                for kind in (*KINDS, *TEST_KINDS) for step in PRIORITY_STEPS}

    def low(self, queue: str, priority: int) -> bool:
        """Whether this lane has drained to half its window: time to refill."""
        return self.waiting.get((queue, priority), 0) <= self.window // 2

    def chunk_size(self, kind: str) -> int:
        """About chunk_seconds of this kind's jobs, 1..chunk_size."""
        cost = self.costs.get(kind)
        if cost is None:
            return min(self.max_chunk, FIRST_CHUNK)
        return max(1, min(self.max_chunk, int(self.target / max(cost, 1e-6))))


def send(sent: Sequence[dispatch.Sent], careful: bool = False) -> None:
    """Publish recorded messages, in order, lane by lane (one LPUSH per lane)."""
    lanes: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    for s in sent:
        queue = queue_for(s.kind)
        lanes[(queue, s.priority)].append(
            chunk_message(s.ids, s.priority, queue, careful, dispatch=s.dispatch))
    client = _client()
    for (queue, priority), messages in lanes.items():
        client.lpush(queue_keys(queue)[PRIORITY_STEPS.index(priority)], *messages)


def fill(broker: RedisBroker | None = None) -> int:
    """One dispatch pass: fill every lane's window from PostgreSQL; messages sent.

    A publish that fails loses nothing: the dispatch rows are committed, and the relay
    sends them again after requeue_after.
    """
    broker = broker or RedisBroker()
    with session_scope() as session:
        sent = dispatch.fill(session, broker)
    send(sent)
    return len(sent)


def refill(queue: str, priority: int) -> None:
    """After a chunk of this lane: fill the windows if it drained to half; never fails."""
    try:
        broker = RedisBroker()
        if broker.low(queue, priority):
            fill(broker)
    except Exception as exc:  # the relay fills on its next pass
        log.warning("refill after chunk failed, the relay will fill: %s", exc)


def observe(kind: str, seconds: float, jobs: int) -> None:
    """Fold a chunk's run time into its kind's seconds per job (best effort)."""
    if jobs <= 0:
        return
    per_job = seconds / jobs
    old = _estimates.get(kind)
    _estimates[kind] = per_job if old is None else old + EWMA_ALPHA * (per_job - old)
    try:
        _client().hset(JOB_SECONDS, kind, repr(_estimates[kind]))
    except redis.RedisError as exc:
        log.debug("run time of %s not recorded: %s", kind, exc)


def lane_has_room(kind: str, priority: int) -> bool:
    """Whether a single job may go straight to Redis: its lane's window is not full."""
    key = queue_keys(queue_for(kind))[PRIORITY_STEPS.index(priority)]
    return int(_client().llen(key)) < get_settings().dispatch_window
