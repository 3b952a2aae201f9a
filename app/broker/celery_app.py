"""The Celery app and publishing: the delivery settings of docs/design.md, chunk messages.

Below both the api and the workers: app.jobs publishes through it after commit, the
workers consume with the same app (workers/tasks.py registers the task on it).
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson
from celery import Celery
from kombu import Queue

from app.broker import sentinel
from app.broker.notify import redis_client
from app.broker.queues import KINDS, PRIORITY_SEP, PRIORITY_STEPS, TASK_NAME, queue_for, queue_keys
from app.config import Settings, get_settings

__all__ = ["KINDS", "TASK_NAME", "celery_app", "configure", "publish",
           "queue_for", "queue_keys"]

log = logging.getLogger(__name__)

celery_app = Celery("babelq")


def configure(settings: Settings, *, fast_transport: bool = True) -> Celery:
    """Point the app at the configured Redis with the delivery guarantees we rely on.

    fast_transport False keeps kombu's own transport: Flower picks its Broker page's
    client by the scheme of the broker URL, and ours would show as `app.broker.transport:...`.
    """
    celery_app.conf.update(
        broker_url=settings.redis_url,
        broker_transport=_transport(settings.redis_url) if fast_transport else None,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            **_sentinel_options(settings),
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
        # Flower sees received/started/succeeded from the workers' events; chunk messages
        # are written by publish(), not send_task, so a "sent" event would never be sent.
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return celery_app


def _transport(url: str | None) -> str | None:
    """Our channel (app/broker/transport.py) for redis:// and sentinel://: kombu turns TLS on
    by the transport's name, so rediss:// keeps kombu's own."""
    return TRANSPORTS.get(urlsplit(url or "").scheme)


def _sentinel_options(settings: Settings) -> dict[str, object]:
    """kombu's master_name (and the sentinels' password) when the URL lists sentinels."""
    if not sentinel.is_sentinel(settings.redis_url):
        return {}
    return sentinel.broker_options(settings.redis_sentinel_master,
                                   settings.redis_sentinel_password)


#: URL scheme -> our kombu transport for it.
TRANSPORTS = {"redis": "app.broker.transport:Transport",
              "sentinel": "app.broker.transport:SentinelTransport"}

configure(get_settings())


def publish(
    kind: str, priority: int, ids: Sequence[int], chunk_size: int | None = None,
    claim_first: bool = False,
) -> int:
    """Send job ids to the kind's queue in messages of at most chunk_size ids.

    claim_first marks a republished message: its jobs are claimed before they are
    computed (see workers.tasks.execute_chunk). Messages go PUSH_MESSAGES to a command; a worker
    takes them in the order given, as if each had been published alone.
    """
    size = chunk_size or get_settings().chunk_size
    queue = queue_for(kind)
    key = queue_keys(queue)[PRIORITY_STEPS.index(priority)]
    messages = [chunk_message(list(ids[start:start + size]), priority, queue, claim_first)
                for start in range(0, len(ids), size)]
    client = redis_client(celery_app.conf.broker_url)
    for start in range(0, len(messages), PUSH_MESSAGES):
        client.lpush(key, *messages[start:start + PUSH_MESSAGES])
    return len(messages)


#: Messages per LPUSH: 256 chunks of 500 ids are about 1.2 MB.
PUSH_MESSAGES = 256


#: Ids shown in full in a message's argsrepr (Flower's "args"); longer chunks are abridged.
SHOWN_IDS = 64


def chunk_message(chunk: list[int], priority: int, queue: str, claim_first: bool = False,
                  dispatch: int | None = None) -> bytes:
    """A run_chunk message as kombu's Redis transport stores it (Celery task protocol 2).

    Built here rather than by send_task, which costs about six times as much CPU per
    message (700 against 120 µs measured): signals, saferepr of the ids, kombu's routing
    and a new redis client per publish. tests/unit/test_messages.py holds it to kombu's.
    """
    task_id = str(uuid.uuid4())
    kwargs: dict[str, object] = {"claim_first": True} if claim_first else {}
    if dispatch is not None:  # its dispatch row, deleted by the worker that takes it
        kwargs["dispatch"] = dispatch
    shown = chunk if len(chunk) <= SHOWN_IDS else [*chunk[:SHOWN_IDS], f"... {len(chunk)} ids"]
    body = orjson.dumps([[chunk], kwargs, _EMBED])
    return orjson.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            **_HEADERS, "id": task_id, "root_id": task_id, "argsrepr": repr([shown]),
            "kwargsrepr": repr(kwargs), "origin": f"gen{os.getpid()}@{_HOST}",
        },
        "properties": {
            "correlation_id": task_id, "reply_to": celery_app.thread_oid, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": priority,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


_EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_HEADERS: dict[str, object] = {
    "lang": "py", "task": TASK_NAME, "shadow": None, "eta": None, "expires": None,
    "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
    "parent_id": None, "ignore_result": None, "replaced_task_nesting": 0,
    "stamped_headers": None, "stamps": {},
}
_HOST = socket.gethostname()
