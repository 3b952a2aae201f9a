"""The Celery app: one queue per kind, priority lanes, and the delivery settings of system.md."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery
from kombu import Queue

from app.config import Settings, get_settings
from app.core import KINDS

log = logging.getLogger(__name__)

TASK_NAME = "babelq.run_chunk"
#: kombu's Redis transport keeps one list per priority step; lower is served first.
PRIORITY_STEPS = [0, 1, 2]
#: Separator kombu puts between a queue name and its priority step.
PRIORITY_SEP = ":"

celery_app = Celery("babelq", include=["workers.tasks"])


def configure(settings: Settings) -> Celery:
    """Point the app at the configured Redis with the delivery guarantees we rely on."""
    celery_app.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for messages of dead workers every 30 s (kombu's default is ~100 s).
            "unacked_restore_interval": 30,
            "unacked_restore_throttle": 1,
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEP,
            "queue_order_strategy": "priority",
        },
        task_queues=[Queue(kind) for kind in KINDS],
        task_default_queue="encode",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        # Flower sees received/started/succeeded from the workers' events; a "sent" event
        # per message would double the Redis round trips of every publish.
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return celery_app


configure(get_settings())


def queue_keys(kind: str) -> list[str]:
    """The Redis lists that hold a kind's messages, highest priority first."""
    return [kind if step == 0 else f"{kind}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def queue_for(kind: str) -> str:
    """The queue of a kind; test-only kinds ride on the encode queue."""
    return kind if kind in KINDS else "encode"


def publish(
    kind: str, priority: int, ids: Sequence[int], chunk_size: int | None = None,
    careful: bool = False,
) -> int:
    """Send job ids to the kind's queue in messages of at most chunk_size ids.

    careful marks a republished message: its jobs are claimed before they are computed
    (see workers.tasks.execute_chunk).
    """
    size = chunk_size or get_settings().chunk_size
    kwargs = {"careful": True} if careful else {}
    sent = 0
    with celery_app.producer_or_acquire() as producer:
        for start in range(0, len(ids), size):
            chunk = list(ids[start:start + size])
            celery_app.send_task(
                TASK_NAME, args=[chunk], kwargs=kwargs, queue=queue_for(kind), priority=priority,
                producer=producer,
            )
            sent += 1
    return sent


def publish_safely(kind: str, priority: int, ids: Sequence[int]) -> bool:
    """Publish, but never fail the caller: the relay republishes whatever is left behind."""
    try:
        publish(kind, priority, ids)
    except Exception as exc:  # the job is committed; the relay will publish it
        log.warning("publish of %d %s job(s) failed, relay will retry: %s", len(ids), kind, exc)
        return False
    return True
