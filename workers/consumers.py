"""A worker announces its pool on its queues, so each lane's window grows with it.

The dispatcher keeps a few messages per live pool process waiting in each lane
(app.broker.window.PER_PROCESS, at least BABELQ_DISPATCH_WINDOW): a fixed window fed 40
processes as poorly as it fed 2 generously. The announcement lasts CONSUMER_TTL seconds
and is renewed every third of that, so a killed worker stops counting within it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import bootsteps

from app.broker import window
from app.broker.celery_app import celery_app

log = logging.getLogger(__name__)


class ConsumersStep(bootsteps.StartStopStep):
    """A worker step: register the pool on its queues while the worker runs."""

    requires = ("celery.worker.components:Pool",)

    def create(self, w: Any) -> None:
        self.queues = sorted(w.app.amqp.queues.consume_from)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, w: Any) -> None:
        """Register now and renew in the background."""
        processes = int(w.concurrency or 1)
        self.thread = threading.Thread(target=self._renew, args=(w.hostname, processes),
                                       name="babelq-consumers", daemon=True)
        self.thread.start()

    def stop(self, w: Any) -> None:
        """Stop renewing and take the registration back (best effort)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        try:
            window.unregister_consumer(w.hostname, self.queues)
        except redis.RedisError as exc:  # it expires by itself
            log.debug("worker registration not removed: %s", exc)

    def terminate(self, w: Any) -> None:
        """A cold shutdown stops it too (StartStopStep's own terminate only stops self.obj)."""
        self.stop(w)

    def _renew(self, worker: str, processes: int) -> None:
        while not self.stopping.is_set():
            try:
                window.register_consumer(worker, self.queues, processes)
            except redis.RedisError as exc:  # the lanes keep the setting's window meanwhile
                log.warning("worker registration not renewed: %s", exc)
            self.stopping.wait(window.CONSUMER_TTL / 3)


celery_app.steps["worker"].add(ConsumersStep)
