"""The Redis side of fair dispatch: each lane's window, chunk sizes by time, publishing.

app.jobs.dispatch decides what to send; this module measures Redis and sends. A lane is a
kind's queue and a priority; its window is the few messages waiting in its Redis list.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import redis

from app.broker.celery_app import celery_app, chunk_message
from app.broker.notify import redis_client
from app.broker.queues import KINDS, PRIORITY_STEPS, queue_for, queue_keys
from app.config import get_settings

if TYPE_CHECKING:  # fastlane builds on this module
    from app.broker.fastlane import Fresh

log = logging.getLogger(__name__)

#: Redis hash: kind -> measured seconds per job (an EWMA over chunks).
JOB_SECONDS = "babelq:job_seconds"
#: Redis hash: "<worker>|<queue>" -> "<pool processes> <expiry, Unix seconds>": the live
#: workers of each queue, so each lane's window grows with the processes it feeds.
CONSUMERS = "babelq:consumers"
#: Messages a lane's window holds per live process consuming its queue (at least
#: dispatch_window): one running, one waiting for each.
PER_PROCESS = 2
#: Seconds a worker's registration lasts; workers renew it every third of that.
CONSUMER_TTL = 30.0
#: Weight of the newest chunk in the per-job run time.
EWMA_ALPHA = 0.3
#: Jobs per message of a kind whose run time was never measured.
FIRST_CHUNK = 10

#: Seconds between one process's writes of a kind's estimate to Redis: a chunk of one job
#: (a fast-lane job) is measured too, and a write per job would cost more than the job.
WRITE_EVERY = 1.0

#: This process's running estimates (kind -> seconds per job), written through to Redis,
#: and when each kind's was last written (time.monotonic()).
_estimates: dict[str, float] = {}
_written: dict[str, float] = {}


@dataclass(frozen=True, slots=True)
class Sent:
    """A message recorded as dispatch row `dispatch`, to publish after its commit."""

    dispatch: int
    kind: str
    priority: int
    ids: list[int]
    #: goes to the head of its lane, before the messages waiting there: its tenant had
    #: none in the window, so deficit round robin serves it before them
    ahead: bool = False
    #: a fast-lane job as it was stored, for its message
    fresh: Fresh | None = None


def _client() -> redis.Redis:
    return redis_client(celery_app.conf.broker_url)


class RedisWindow:
    """Lane lengths and per-kind run times, read from Redis once, when made."""

    def __init__(self) -> None:
        settings = get_settings()
        self.window = settings.dispatch_window
        self.max_chunk = settings.chunk_size
        self.target = settings.chunk_seconds
        pipe = _client().pipeline(transaction=False)
        lanes = [(queue, step) for queue in KINDS for step in PRIORITY_STEPS]
        for queue, step in lanes:
            pipe.llen(queue_keys(queue)[PRIORITY_STEPS.index(step)])
        pipe.hgetall(JOB_SECONDS)
        pipe.hgetall(CONSUMERS)
        *lengths, costs, consumers = pipe.execute()
        #: messages waiting per (queue, priority)
        self.waiting: dict[tuple[str, int], int] = dict(zip(lanes, lengths, strict=True))
        self.costs = {k.decode(): float(v) for k, v in costs.items()}
        #: live pool processes per queue
        self.processes = live_processes(consumers, time.time())
        saw_processes(self.processes)

    def window_of(self, queue: str) -> int:
        """Messages a lane of this queue holds (lane_window)."""
        return lane_window(self.window, self.processes.get(queue, 0))

    def room(self, kind: str, priority: int) -> int:
        """Messages this kind's lane takes before its window is full."""
        queue = queue_for(kind)
        return max(0, self.window_of(queue) - self.waiting.get((queue, priority), 0))

    def low(self, queue: str, priority: int) -> bool:
        """Whether this lane has drained to half its window: time to refill."""
        return self.waiting.get((queue, priority), 0) <= self.window_of(queue) // 2

    def chunk_size(self, kind: str) -> int:
        """About chunk_seconds of this kind's jobs, 1..chunk_size."""
        cost = self.costs.get(kind)
        if cost is None:
            return min(self.max_chunk, FIRST_CHUNK)
        return max(1, min(self.max_chunk, int(self.target / max(cost, 1e-6))))


def lane_window(setting: int, processes: int) -> int:
    """Messages a lane holds: a few per live process consuming it, at least the setting."""
    return max(setting, PER_PROCESS * processes)


def _announced(value: bytes) -> tuple[int, float]:
    """(pool processes, expiry) of a CONSUMERS value."""
    processes, _, expiry = value.decode().partition(" ")
    return int(processes), float(expiry)


def live_processes(consumers: dict[bytes, bytes], now: float) -> dict[str, int]:
    """Pool processes per queue of the registrations not yet expired (CONSUMERS' form)."""
    live: dict[str, int] = defaultdict(int)
    for field, value in consumers.items():
        processes, expiry = _announced(value)
        if expiry > now:
            live[field.decode().rpartition("|")[2]] += processes
    return dict(live)


def register_consumer(worker: str, queues: Sequence[str], processes: int) -> None:
    """Announce (or renew) a worker's pool on its queues for CONSUMER_TTL seconds, and
    drop registrations that expired (a worker killed without saying goodbye)."""
    client = _client()
    expiry = f"{processes} {time.time() + CONSUMER_TTL:.0f}"
    client.hset(CONSUMERS, mapping={f"{worker}|{queue}": expiry for queue in queues})
    now = time.time()
    entries = cast(dict[bytes, bytes], client.hgetall(CONSUMERS))
    stale = [f for f, v in entries.items() if _announced(v)[1] <= now]
    if stale:
        client.hdel(CONSUMERS, *stale)


def unregister_consumer(worker: str, queues: Sequence[str]) -> None:
    """A worker stopping: its processes no longer count toward any lane's window."""
    _client().hdel(CONSUMERS, *(f"{worker}|{queue}" for queue in queues))


def send(sent: Sequence[Sent], claim_first: bool = False) -> None:
    """Publish recorded messages, in order, lane by lane, in one round trip."""
    lanes: dict[tuple[str, int, bool], list[bytes]] = defaultdict(list)
    for s in sent:
        queue = queue_for(s.kind)
        lanes[(queue, s.priority, s.ahead)].append(
            chunk_message(s.ids, s.priority, queue, claim_first, dispatch=s.dispatch))
    pipe = _client().pipeline(transaction=False)
    for (queue, priority, ahead), messages in lanes.items():
        key = queue_keys(queue)[PRIORITY_STEPS.index(priority)]
        # Workers pop from the right: LPUSH queues a message last, RPUSH next.
        if ahead:
            pipe.rpush(key, *reversed(messages))
        else:
            pipe.lpush(key, *messages)
    pipe.execute()


def observe(kind: str, seconds: float, jobs: int) -> None:
    """Fold a chunk's run time into its kind's seconds per job (best effort)."""
    if jobs <= 0:
        return
    per_job = seconds / jobs
    old = _estimates.get(kind)
    _estimates[kind] = per_job if old is None else old + EWMA_ALPHA * (per_job - old)
    now = time.monotonic()
    if now - _written.get(kind, -WRITE_EVERY) < WRITE_EVERY:
        return
    _written[kind] = now
    try:
        _client().hset(JOB_SECONDS, kind, repr(_estimates[kind]))
    except redis.RedisError as exc:
        log.debug("run time of %s not recorded: %s", kind, exc)


#: Seconds a lane's length as this process last saw it stands for asking Redis again.
#: Every fast-lane send reads its lane's length in the same round trip as its push
#: (app.broker.fastlane.send), so a steady stream of single jobs asks no more: the LLEN
#: before each insert was a round trip of a submission's critical path (0.35 ms of 4.5 on
#: the bench machine). The window may then take a few single jobs more than its size,
#: those one process sends within this time of the lane filling up.
LENGTH_FRESH = 0.25
#: lane key -> (length, time.monotonic() when seen)
_lengths: dict[str, tuple[int, float]] = {}
#: Seconds the live pool processes per queue, as this process last read them from
#: CONSUMERS, stand for asking again: a lane's window grows with them, and workers
#: renew their registrations every CONSUMER_TTL / 3.
PROCESSES_FRESH = CONSUMER_TTL / 3
#: queue -> live pool processes, and time.monotonic() when read (never: -inf)
_live: dict[str, int] = {}
_live_seen: list[float] = [float("-inf")]


def lane_key(kind: str, priority: int) -> str:
    """The Celery lane (Redis list) of a kind's messages at a priority step."""
    return queue_keys(queue_for(kind))[PRIORITY_STEPS.index(priority)]


def saw_length(key: str, length: int) -> None:
    """Note a lane's length seen now (see LENGTH_FRESH)."""
    _lengths[key] = (length, time.monotonic())


def saw_processes(live: dict[str, int]) -> None:
    """Note the live pool processes per queue read now (see PROCESSES_FRESH)."""
    _live.clear()
    _live.update(live)
    _live_seen[0] = time.monotonic()


def room_seen(kind: str, priority: int) -> bool | None:
    """lane_has_room() from what this process saw lately: the lane's length within
    LENGTH_FRESH seconds, its queue's live processes within PROCESSES_FRESH; None if
    either is older (then only Redis can tell)."""
    seen = _lengths.get(lane_key(kind, priority))
    now = time.monotonic()
    if seen is None or now - seen[1] > LENGTH_FRESH or now - _live_seen[0] > PROCESSES_FRESH:
        return None
    return seen[0] < lane_window(get_settings().dispatch_window, _live.get(queue_for(kind), 0))


def lane_has_room(kind: str, priority: int) -> bool:
    """Whether a single job may go straight to Redis: its lane's window, which the
    dispatcher sizes by the live processes (RedisWindow.window_of), is not full."""
    room = room_seen(kind, priority)
    if room is None:
        key = lane_key(kind, priority)
        pipe = _client().pipeline(transaction=False)
        pipe.llen(key)
        # The processes stand longer than the length: asked only once they are stale.
        processes_stale = time.monotonic() - _live_seen[0] > PROCESSES_FRESH
        if processes_stale:
            pipe.hgetall(CONSUMERS)
        length, *consumers = pipe.execute()
        saw_length(key, int(length))
        if processes_stale:
            saw_processes(live_processes(consumers[0], time.time()))
        room = room_seen(kind, priority)
    return bool(room)
