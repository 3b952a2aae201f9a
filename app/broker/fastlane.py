"""Publishing to the fast lane: single cheap jobs, straight to the worker threads that take them.

See workers/fastlane.py for the consuming side. A fast message is "<job id>:<dispatch row>"
on a Redis list per priority step, LPUSHed by the process's one pooled Redis client. The
dispatch row is recorded with the job as for any message (app.jobs.dispatch), so fair
dispatch counts it, the lane's run settles it, and a lost fast message is sent again as
a Celery message, like any lost message.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.broker.notify import redis_client
from app.broker.window import Sent
from app.config import get_settings

#: The broker queue whose workers run fast-lane jobs (every fast job is an inline encode).
FAST_QUEUE = "encode"
#: The lane's Redis lists, highest priority (step 0) first.
FAST_KEYS = ["babelq:fast:0", "babelq:fast:1", "babelq:fast:2"]


def fast_keys() -> list[str]:
    """The lane's lists in the order a worker takes from them (BRPOP key order)."""
    return list(FAST_KEYS)


def send(sent: Sequence[Sent]) -> None:
    """LPUSH recorded one-job messages to the fast lane; raises as window.send does."""
    client = redis_client(get_settings().redis_url or "")
    for s in sent:
        client.lpush(FAST_KEYS[s.priority], f"{s.ids[0]}:{s.dispatch}")


def parse(message: bytes | str) -> tuple[int, int]:
    """(job id, dispatch row) of a fast message."""
    text = message.decode() if isinstance(message, bytes) else message
    job_id, _, dispatch = text.partition(":")
    return int(job_id), int(dispatch)
