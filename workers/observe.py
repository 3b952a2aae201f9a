"""What a worker tells an operator: a heartbeat per node for /metrics' live workers, and
its pool processes' last counts before they exit."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from app.broker import sums
from app.config import get_settings
from app.observe import logs, tracing

log = logging.getLogger(__name__)

#: Seconds between heartbeats; well inside sums.LIVE_WINDOW.
BEAT_EVERY = 5.0

_stop = threading.Event()


@setup_logging.connect
def _configure_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery's lines in the format of every other process (BABELQ_LOG_FORMAT)."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    logs.configure(get_settings().log_format, str(level or "INFO"))


@worker_init.connect
def _start_heartbeat(sender: Any, **_: Any) -> None:
    """Beat from the worker's main process (sender: its WorkController) while it runs."""
    tracing.setup(get_settings(), "babelq-worker")  # thread pools: spans made here
    node = str(sender.hostname)
    queues = sorted(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
    _stop.clear()
    threading.Thread(target=_beat_forever, args=(node, queues), daemon=True,
                     name="babelq-heartbeat").start()


def _beat_forever(node: str, queues: list[str]) -> None:
    while True:
        try:
            sums.beat(node, queues)
        except redis.RedisError as exc:
            log.warning("heartbeat not sent: %s", exc)
        if _stop.wait(BEAT_EVERY):
            return


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    _stop.set()


@worker_process_init.connect
def _setup_tracing(**_: Any) -> None:
    """A prefork child exports its own spans (its parent's export thread did not fork)."""
    tracing.setup(get_settings(), "babelq-worker")


@worker_process_shutdown.connect
def _flush_metrics(**_: Any) -> None:
    """A pool process may exit without running atexit handlers."""
    sums.flush()
