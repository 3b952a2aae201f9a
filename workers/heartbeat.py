"""The worker's heartbeat: one thread per process renewing the leases of running chunks.

A chunk registers its claimed jobs while it computes and persists them. Every third of
the lease the thread renews the leases of the chunks that have been running for at least
half that long, so a chunk is renewed at most a third of a lease after its claim, then
every third of a lease. A chunk that ends sooner (nearly all of them) costs a dict entry
and a lock, and no statement at all.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count

from sqlalchemy.exc import SQLAlchemyError

from app import jobs
from app.config import get_settings
from app.store.db import session_scope

log = logging.getLogger(__name__)


@dataclass
class _Chunk:
    claimed: Sequence[jobs.LockedJob]
    since: float = field(default_factory=time.monotonic)


class Heartbeat:
    """Renews, from a thread of its own, the leases of the chunks this process runs."""

    def __init__(self) -> None:
        self._chunks: dict[int, _Chunk] = {}
        self._tokens = count()
        self._lock = threading.Lock()
        self._pid = -1  # the thread is started in the process that uses it (after fork)

    @contextmanager
    def hold(self, claimed: Sequence[jobs.LockedJob]) -> Iterator[None]:
        """Keep these jobs' leases alive for as long as the block runs."""
        token = next(self._tokens)
        with self._lock:
            self._start()
            self._chunks[token] = _Chunk(claimed)
        try:
            yield
        finally:
            with self._lock:
                del self._chunks[token]

    def _start(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._run, name="babelq-heartbeat", daemon=True).start()

    def _run(self) -> None:
        while True:
            every = get_settings().lease_seconds / 3
            time.sleep(every)
            with self._lock:
                due = [c for c in self._chunks.values() if time.monotonic() - c.since >= every / 2]
            for chunk in due:
                self._renew(chunk)

    def _renew(self, chunk: _Chunk) -> None:
        try:
            with session_scope() as session:
                jobs.renew_leases(session, chunk.claimed)
        except SQLAlchemyError as exc:  # an outage: the next beat tries again
            log.warning("lease renewal of %d job(s) failed: %s", len(chunk.claimed),
                        type(exc).__name__)


#: The process's heartbeat.
HEARTBEAT = Heartbeat()
