"""The relay: returns expired leases, (re)publishes queued jobs, prunes by retention.

Several relays may run at once: every pass takes rows with FOR UPDATE SKIP LOCKED,
so two relays never move or publish the same job in the same pass.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import redis
from sqlalchemy.exc import OperationalError

from app import jobs
from app.broker.celery_app import publish
from app.broker.notify import redis_client
from app.broker.queues import KINDS, queue_keys
from app.config import get_settings
from app.jobs import kinds
from app.jobs.manage import SLICE
from app.store.db import session_scope

log = logging.getLogger(__name__)

#: Seconds between retention prunes (each scans the finished jobs).
PRUNE_EVERY = 60.0
#: Stale checks per requeue_after.
STALE_CHECKS = 3


@dataclass
class PassReport:
    """What one relay pass did."""

    expired: int = 0
    published: int = 0
    pruned: int = 0
    #: whether it looked for stale jobs (asked to, and some kind's queue was empty)
    stale_checked: bool = False


def idle_kinds() -> list[str]:
    """Kinds whose broker queues are empty, so any stale queued job's message is lost."""
    url = get_settings().redis_url
    assert url, "BABELQ_REDIS_URL is not set"
    client = redis_client(url)
    pipe = client.pipeline(transaction=False)
    for kind in KINDS:
        for key in queue_keys(kind):
            pipe.llen(key)
    lengths = pipe.execute()
    per = len(queue_keys(KINDS[0]))
    idle = [k for i, k in enumerate(KINDS) if sum(lengths[i * per:(i + 1) * per]) == 0]
    # Kinds registered by plugins ride on the encode queue (queue_for).
    return idle + list(kinds.extra()) if "encode" in idle else idle


def relay_pass(actor: str, prune: bool = True, stale: bool = True) -> PassReport:
    """One pass: expire leases, publish what is due, and (if asked) apply retention and
    republish stale queued jobs of idle kinds."""
    report = PassReport()
    with session_scope() as session:
        report.expired = jobs.expire_leases(session, actor=actor)
    idle = idle_kinds() if stale else []
    report.stale_checked = bool(idle)
    while True:
        with session_scope() as session:
            groups = jobs.take_due(session, idle_kinds=idle)
        for (kind, priority), ids in groups.items():
            publish(kind, priority, ids, claim_first=True)
            report.published += len(ids)
        if sum(len(v) for v in groups.values()) < SLICE:
            break
    days = get_settings().retention_days
    if prune and days > 0:
        with session_scope() as session:
            report.pruned = jobs.prune(session, older_than_days=days)
    return report


def run(stop: threading.Event | None = None, interval: float | None = None) -> None:
    """Relay passes forever (or until stop is set), surviving outages of either server."""
    stop = stop or threading.Event()
    pause = interval if interval is not None else get_settings().relay_interval
    actor = f"relay@{socket.gethostname()}"
    next_prune, last_stale = 0.0, float("-inf")
    while not stop.is_set():
        try:
            # Pruning looks for finished jobs with no index to help (one would cost every
            # finishing write), so it runs once per PRUNE_EVERY, not every pass.
            prune = time.monotonic() >= next_prune
            # The stale check reads every queued job while a backlog waits (no index
            # serves it; one would cost every ingested line), so it runs a few times per
            # requeue_after, not every pass: a lost message waits a third longer at most.
            # Until it has run, every pass asks again whether a queue is empty (cheap).
            every = get_settings().requeue_after / STALE_CHECKS
            report = relay_pass(actor, prune=prune,
                                stale=time.monotonic() - last_stale >= every)
            if report.stale_checked:
                last_stale = time.monotonic()
            if prune:  # a full slice: more is waiting, so prune again next pass
                next_prune = time.monotonic() + (0 if report.pruned >= SLICE else PRUNE_EVERY)
            if report.expired or report.published or report.pruned:
                log.info("relay: %s", report)
        except (OperationalError, redis.RedisError, OSError) as exc:
            log.warning("relay pass failed, will retry: %s", exc)
        stop.wait(pause)
