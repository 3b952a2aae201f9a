"""The relay: returns expired leases, dispatches and resends, prunes by retention.

Several relays may run at once: every pass takes rows with FOR UPDATE SKIP LOCKED (and
a dispatch pass its advisory lock), so two relays never move or send the same job.
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
from app.config import get_settings
from app.jobs import counts, delayed, dispatch, schedules
from app.jobs.manage import SLICE
from app.observe import alive
from app.store import statistics
from app.store.db import session_scope
from workers import webhooks

log = logging.getLogger(__name__)

#: Seconds between retention prunes (each scans the finished jobs).
PRUNE_EVERY = 60.0


@dataclass
class PassReport:
    """What one relay pass did."""

    expired: int = 0
    #: delayed jobs whose time came, and schedules that fired
    released: int = 0
    fired: int = 0
    #: never-published queued jobs (retries, returned leases) made pending
    pended: int = 0
    #: messages sent again: sent more than requeue_after ago and never taken
    resent: int = 0
    #: messages sent from PostgreSQL into the lanes' windows
    published: int = 0
    pruned: int = 0
    #: jobs of batches whose cancel had stopped half way
    cancelled: int = 0
    #: whether the planner's statistics of jobs were refreshed (app.store.statistics)
    analyzed: bool = False


def relay_pass(actor: str, prune: bool = True) -> PassReport:
    """One pass: expire leases, make due jobs pending, resend lost messages, fill the
    windows, and (if asked) apply retention."""
    report = PassReport()
    with session_scope() as session:
        report.expired = jobs.expire_leases(session, actor=actor)
    with session_scope() as session:
        counts.fold(session)  # keeps /metrics' read of job counts short
        report.released = delayed.release_due(session)
    with session_scope() as session:
        report.analyzed = statistics.refresh_jobs(session)
    with session_scope() as session:
        report.fired = schedules.fire_due(session, actor=actor)
    while True:
        with session_scope() as session:
            pended = dispatch.pend_unpublished(session, limit=SLICE)
        report.pended += pended
        if pended < SLICE:
            break
        alive.touch()  # a backlog of a million takes many slices: the loop still turns
    report.resent = dispatch.resend()
    report.published = dispatch.run_pass()
    report.cancelled = finish_cancels(actor)
    days = get_settings().retention_days
    if prune and days > 0:
        with session_scope() as session:
            report.pruned = jobs.prune(session, older_than_days=days)
    return report


#: How long the relay waits for a job row a worker holds, when finishing a cancel.
CANCEL_LOCK_WAIT = "200ms"


def finish_cancels(actor: str) -> int:
    """Go on with the cancels that stopped half way (409, or an api that went away)."""
    done = 0
    with session_scope() as session:
        batch_ids = jobs.cancelling_batches(session)
    for batch_id in batch_ids:
        try:
            with session_scope() as session:
                done += jobs.cancel_batch(session, batch_id, actor=actor,
                                          lock_wait=CANCEL_LOCK_WAIT)
        except jobs.Busy:
            continue  # a worker holds some of its rows: next pass
    return done


#: Seconds at least between starts of the webhook sender, when it stopped on an error.
SENDER_RESTART_AFTER = 5.0


@dataclass
class SenderThread:
    """The thread running the relay's webhook sender (webhooks.Sender), and when it
    was started."""

    thread: threading.Thread
    started: float


def keep_sending(sender: SenderThread, stop: threading.Event) -> SenderThread:
    """A new webhook sender if this one stopped on an error (a bug, or something nobody
    foresaw): webhooks would otherwise wait for a restart of the relay, whose own loop
    still turns. At most one start per SENDER_RESTART_AFTER."""
    if sender.thread.is_alive() or stop.is_set():
        return sender
    if time.monotonic() - sender.started < SENDER_RESTART_AFTER:
        return sender
    log.error("webhook sender had stopped; starting it again")
    return SenderThread(webhooks.start(stop), time.monotonic())


def run(stop: threading.Event | None = None, interval: float | None = None) -> None:
    """Relay passes forever (or until stop is set), surviving outages of either server."""
    stop = stop or threading.Event()
    pause = interval if interval is not None else get_settings().relay_interval
    actor = f"relay@{socket.gethostname()}"
    sender = SenderThread(webhooks.start(stop), time.monotonic())
    next_prune = 0.0
    while not stop.is_set():
        try:
            # Pruning looks for finished jobs with no index to help (one would cost every
            # finishing write), so it runs once per PRUNE_EVERY, not every pass.
            prune = time.monotonic() >= next_prune
            report = relay_pass(actor, prune=prune)
            if prune:  # a full slice: more is waiting, so prune again next pass
                next_prune = time.monotonic() + (0 if report.pruned >= SLICE else PRUNE_EVERY)
            if (report.expired or report.pended or report.resent or report.pruned
                    or report.cancelled or report.released or report.fired or report.analyzed):
                log.info("relay: %s", report)
        except (OperationalError, redis.RedisError, OSError) as exc:
            log.warning("relay pass failed, will retry: %s", exc)
        sender = keep_sending(sender, stop)
        # After each pass, failed or not: the probe asks whether the loop turns, not
        # whether the servers answer (an outage of either is waited out here).
        alive.touch()
        stop.wait(pause)
    alive.remove()
