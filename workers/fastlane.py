"""The fast lane: single cheap jobs taken straight from Redis by a thread of each worker process.

A single job that runs inline (see jobs.runs_inline) is published to a Redis list of its
own (app.broker.fastlane), not as a Celery message, and a thread in every pool process of
a worker that serves the `encode` queue takes it with BRPOP and runs it at once: no
hand-over from Celery's consumer to a pool process, no task events, no message ack. With
a pool other than prefork, one thread runs in the worker process itself.

Nothing changes about what is kept: the job is locked, computed and finished in one
transaction by execute_chunk, as a Celery message would have it. A fast message that is
lost (Redis emptied, or a process killed after BRPOP) leaves its job queued; the relay
republishes it as a Celery message once the job is older than requeue_after, like any
lost message. Fast jobs are not Celery tasks, but with task events on (`babelq worker`
always turns them on) a lane sends the events of one, after the job is done, so Flower
lists them among the run_chunk tasks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from uuid import uuid4

import redis
from celery import bootsteps
from celery.concurrency.prefork import TaskPool
from celery.signals import worker_process_init, worker_process_shutdown

from app.broker import window
from app.broker.celery_app import celery_app
from app.broker.fastlane import FAST_QUEUE, Fresh, fast_keys, parse, priority_of
from app.broker.queues import TASK_NAME
from app.config import get_settings

log = logging.getLogger(__name__)

#: Seconds one BRPOP waits: how long a stopping lane may take to notice.
POLL = 1.0
#: Seconds to wait after Redis failed before asking again.
PAUSE = 1.0


class TaskEvents:
    """Celery task events for the jobs a lane ran, so Flower lists them as it lists tasks.

    Each job's three (received, started, succeeded) carry the times it had, but are sent
    later, with those of the jobs that ran meanwhile, between jobs: EVENTS_DELAY after
    the first of them at most (or once EVENTS_MAX are waiting). A message per job cost a
    tenth of a lane job's CPU, in the job's own hand-over time.
    """

    #: Seconds the oldest waiting job's events may wait, and jobs whose events may wait.
    EVENTS_DELAY, EVENTS_MAX = 0.5, 64

    def __init__(self, worker: str) -> None:
        self._connection = celery_app.connection_for_write()
        self._dispatcher = celery_app.events.Dispatcher(
            self._connection, hostname=worker, enabled=True, buffer_group=("task",))
        #: (job id, wall-clock start and end, jobs it ran) of jobs not yet announced
        self._waiting: list[tuple[int, float, float, int]] = []
        self._since = 0.0

    def ran(self, job_id: int, started: float, ended: float, ran: int) -> None:
        """Note one lane job (a run_chunk task of one id that ran `ran` jobs) to announce."""
        if not self._waiting:
            self._since = time.monotonic()
        self._waiting.append((job_id, started, ended, ran))

    def due_in(self) -> float | None:
        """Seconds until the waiting events are due (0: now), None if none wait."""
        if not self._waiting:
            return None
        if len(self._waiting) >= self.EVENTS_MAX:
            return 0.0
        return max(0.0, self._since + self.EVENTS_DELAY - time.monotonic())

    def send(self) -> None:
        """Announce every waiting job, in one flush."""
        waiting, self._waiting = self._waiting, []
        send = self._dispatcher.send
        for job_id, started, ended, ran in waiting:
            uuid = str(uuid4())
            send("task-received", uuid=uuid, name=TASK_NAME, args=repr([[job_id]]),
                 kwargs="{}", root_id=uuid, parent_id=None, retries=0, eta=None,
                 expires=None, timestamp=started)
            send("task-started", uuid=uuid, timestamp=started)
            send("task-succeeded", uuid=uuid, result=repr(ran), runtime=ended - started,
                 timestamp=ended)
        if waiting:
            self._dispatcher.flush()

    def close(self) -> None:
        """Announce what waits, then let go of the broker connection."""
        try:
            self.send()
        except Exception as exc:  # only Flower's view
            log.debug("fast lane: last task events not sent: %s", exc)
        finally:
            self._dispatcher.close()
            self._connection.release()


class FastLane:
    """A thread that runs fast-lane jobs until stopped."""

    def __init__(self, redis_url: str, worker: str, task_events: bool) -> None:
        self.worker = worker
        self._events = TaskEvents(worker) if task_events else None
        self._client = redis.Redis.from_url(redis_url, socket_timeout=POLL + 5,
                                            socket_connect_timeout=5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="babelq-fast-lane", daemon=True)

    def start(self) -> None:
        """Start taking jobs."""
        self._thread.start()

    def stop(self) -> None:
        """Finish the job in hand, then stop (within POLL seconds)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._client.close()
        if self._events is not None:
            self._events.close()

    def _run(self) -> None:
        keys = fast_keys()
        while not self._stop.is_set():
            due = self._events.due_in() if self._events is not None else None
            if due == 0.0:
                self._send_events()
                due = None
            try:
                item = self._client.brpop(keys, timeout=POLL if due is None else min(POLL, due))
            except redis.RedisError as exc:
                log.warning("fast lane: Redis unavailable: %s", exc)
                time.sleep(PAUSE)
                continue
            if item is not None:
                key, message = item
                try:
                    job_id, dispatch, fresh = parse(message)
                except ValueError as exc:  # its dispatch row stays: the relay sends it again
                    log.warning("fast lane: message dropped: %s", exc)
                    continue
                self._run_job(priority_of(key), job_id, dispatch, fresh)

    def _run_job(self, priority: int, job_id: int, dispatch: int, fresh: Fresh | None) -> None:
        """Run one job, from its message when it carries it, else as a fresh message would;
        if that fails, hand it to Celery, claim first.

        As a Celery task would retry it (autoretry_for), but at once: the job is still
        queued (its transaction rolled back), and that run claims it before computing, so
        a job that keeps failing its worker spends its attempts.
        """
        from workers import tasks

        started = time.time()
        if fresh is not None and self._run_fresh(job_id, dispatch, fresh):
            if self._events is not None:
                self._events.ran(job_id, started, time.time(), 1)
            return
        try:
            ran = tasks.execute_chunk([job_id], worker=self.worker, claim_first=False,
                                      dispatch=dispatch)
        except Exception as exc:
            log.warning("fast lane: job %d handed to Celery after %s: %s", job_id,
                        type(exc).__name__, exc)
            try:
                window.send([window.Sent(dispatch, FAST_QUEUE, priority, [job_id])],
                            claim_first=True)
            except Exception as lost:  # its dispatch row stays: the relay sends it again
                log.warning("fast lane: job %d left to the relay: %s", job_id, lost)
            return
        if self._events is not None:
            self._events.ran(job_id, started, time.time(), ran)

    def _run_fresh(self, job_id: int, dispatch: int, fresh: Fresh) -> bool:
        """tasks.run_fresh; False (run it the usual way) when it did not finish the job."""
        from workers import tasks

        try:
            return tasks.run_fresh(job_id, dispatch, fresh, worker=self.worker)
        except Exception as exc:  # the usual way finds what is left to do, if anything
            log.warning("fast lane: job %d run the usual way after %s: %s", job_id,
                        type(exc).__name__, exc)
            return False

    def _send_events(self) -> None:
        assert self._events is not None
        try:
            self._events.send()
        except Exception as exc:  # only Flower's view: never the jobs' business
            log.debug("fast lane: task events not sent: %s", exc)


#: What pool processes need to run a lane of their own: set before the pool forks.
_lane_for_children: dict[str, Any] = {}
#: The lane of this process, if it runs one.
_lane: list[FastLane] = []


def _start(worker: str, task_events: bool) -> None:
    url = get_settings().redis_url
    if url and not _lane:
        _lane.append(FastLane(url, worker, task_events))
        _lane[0].start()


def _stop() -> None:
    while _lane:
        _lane.pop().stop()


class FastLaneStep(bootsteps.StartStopStep):
    """A worker step: fast lanes for workers that serve the encode queue."""

    requires = ("celery.worker.components:Pool",)

    def create(self, w: Any) -> None:
        """Decide before the pool forks: with prefork, each pool process runs a lane."""
        self.enabled = FAST_QUEUE in w.app.amqp.queues.consume_from
        self.in_children = self.enabled and issubclass(w.pool_cls, TaskPool)
        if self.in_children:
            _lane_for_children.update(worker=w.hostname, task_events=bool(w.task_events))

    def start(self, w: Any) -> None:
        """Other pools: one lane in this process."""
        if self.enabled and not self.in_children:
            _start(w.hostname, bool(w.task_events))

    def stop(self, w: Any) -> None:
        """Stop this process's lane (pool processes stop their own as they exit)."""
        _stop()

    def terminate(self, w: Any) -> None:
        """A cold shutdown stops it too (StartStopStep's own terminate only stops self.obj)."""
        self.stop(w)


celery_app.steps["worker"].add(FastLaneStep)


@worker_process_init.connect
def _start_in_child(**_: Any) -> None:
    if _lane_for_children:
        _start(_lane_for_children["worker"], _lane_for_children["task_events"])


@worker_process_shutdown.connect
def _stop_in_child(**_: Any) -> None:
    _stop()
