"""Sums that every process adds to Redis, so one reader sees the whole cluster's.

Each process keeps its deltas (hash, field) -> amount in memory; a daemon thread sends
them once a second in one MULTI/EXEC of HINCRBY (HINCRBYFLOAT for fields ending in
SEP + "sum"), and flush() at exit sends the rest. A failed flush keeps its deltas for
the next one; a forked child starts empty (its parent sends what it had). Worker
heartbeats live here too: a sorted set of (node, queue) by last beat.

app.jobs.metrics says what is counted; this module only adds up and reads back.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import redis

from app.broker.notify import redis_client
from app.config import get_settings

log = logging.getLogger(__name__)

#: Seconds between two flushes of a process's deltas to Redis.
FLUSH_EVERY = 1.0
#: Between label values in a hash field (never in a kind, route, status or decision).
SEP = "\x1f"
#: Seconds since its last heartbeat within which a worker counts as live.
LIVE_WINDOW = 30.0


class _Pending:
    """This process's deltas not yet in Redis: (hash, field) -> amount."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deltas: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.flusher_pid = 0

    def take(self) -> dict[tuple[str, str], float]:
        with self.lock:
            taken, self.deltas = self.deltas, defaultdict(float)
        return taken

    def give_back(self, deltas: dict[tuple[str, str], float]) -> None:
        with self.lock:
            for key, amount in deltas.items():
                self.deltas[key] += amount


_pending = _Pending()


def _forget_parents_deltas() -> None:
    """A forked child starts empty: its parent flushes what it had (else counted twice)."""
    global _pending
    _pending = _Pending()


os.register_at_fork(after_in_child=_forget_parents_deltas)


def add(key: str, fields: dict[str, float]) -> None:
    """Add these amounts to the fields of a Redis hash (sent within FLUSH_EVERY)."""
    if not fields:
        return
    with _pending.lock:
        for field, amount in fields.items():
            _pending.deltas[(key, field)] += amount
    _start_flusher()


def flush() -> None:
    """Send this process's deltas to Redis; on failure keep them for the next flush."""
    deltas = _pending.take()
    url = get_settings().redis_url
    if not deltas or not url:
        return
    try:
        pipe = redis_client(url).pipeline(transaction=True)
        for (key, field), amount in deltas.items():
            if field.endswith(f"{SEP}sum"):
                pipe.hincrbyfloat(key, field, amount)
            else:
                pipe.hincrby(key, field, int(amount))
        pipe.execute()
    except redis.RedisError as exc:
        _pending.give_back(deltas)
        log.warning("metrics not flushed to Redis, will retry: %s", exc)


def _start_flusher() -> None:
    """A daemon thread per process (forked children start their own) that flushes."""
    if _pending.flusher_pid == os.getpid():
        return
    with _pending.lock:
        if _pending.flusher_pid == os.getpid():
            return
        _pending.flusher_pid = os.getpid()
    threading.Thread(target=_flush_forever, name="babelq-metrics", daemon=True).start()


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_EVERY)
        flush()


atexit.register(flush)


def read(key: str) -> dict[str, float]:
    """Every field of a hash, as added up by all processes."""
    url = get_settings().redis_url or ""
    raw: dict[Any, Any] = redis_client(url).hgetall(key)  # type: ignore[assignment]
    return {k.decode(): float(v) for k, v in raw.items()}


def beat(node: str, queues: Sequence[str]) -> None:
    """Say this worker node is alive and consumes these queues (every few seconds)."""
    url = get_settings().redis_url
    if url:  # unset only in a process whose settings were taken away (tests)
        redis_client(url).zadd("babelq:live:workers",
                               {f"{node}{SEP}{q}": time.time() for q in queues})


def live_workers() -> Counter[str]:
    """Worker nodes seen within LIVE_WINDOW, per queue; older entries are dropped."""
    client = redis_client(get_settings().redis_url or "")
    now = time.time()
    client.zremrangebyscore("babelq:live:workers", "-inf", now - 10 * LIVE_WINDOW)
    members = client.zrangebyscore("babelq:live:workers", now - LIVE_WINDOW, "+inf")
    return Counter(m.decode().rsplit(SEP, 1)[1] for m in members)  # type: ignore[union-attr]
