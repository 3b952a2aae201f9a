"""A worker step: touch BABELQ_ALIVE_FILE from the worker's event loop (app.observe.alive).

The touch is a timer of the worker's hub, the loop that takes messages from Redis and
hands them to the pool: if that loop stops turning, the file ages and the liveness probe
restarts the worker (its jobs come back through their leases). While the worker cannot
reach Redis the loop waits to reconnect, so a Redis outage longer than the probe's bound
restarts workers too, which is harmless.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from app.broker.celery_app import celery_app
from app.config import get_settings
from app.observe import alive


class AliveStep(bootsteps.StartStopStep):
    """Touch the liveness file every alive.EVERY seconds from the worker's timer."""

    requires = ("celery.worker.components:Timer",)

    def include_if(self, w: Any) -> bool:
        return get_settings().alive_file is not None

    def create(self, w: Any) -> None:
        self.tref: Any = None

    def start(self, w: Any) -> None:
        alive.touch()
        self.tref = w.timer.call_repeatedly(alive.EVERY, alive.touch, priority=10)

    def stop(self, w: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        alive.remove()

    def terminate(self, w: Any) -> None:
        self.stop(w)


celery_app.steps["worker"].add(AliveStep)
