"""Publishing to the fast lane: single cheap jobs, straight to the worker threads that take them.

See workers/fastlane.py for the consuming side. A fast message carries its job as the
api stored it (Fresh: id, dispatch row, kind, params, priority, max_attempts and the
audit head of its "submitted" event), as JSON on a Redis list per priority step,
LPUSHed by the process's one pooled Redis client. The lane computes the job from the
message and finishes it with one statement that checks the row is still that job, as
stored (app.jobs.execute.finish_fresh), or else runs it the usual way. The dispatch row
is recorded with the job as for any message (app.jobs.dispatch), so fair dispatch
counts it, the lane's run settles it, and a lost fast message is sent again as a
Celery message, like any lost message.

Messages of the previous form, "<job id>:<dispatch row>" on the FAST_KEYS lists, are
still taken (and run the usual way): an api not yet upgraded may send them. Workers
of that version never see the new lists, so a rolling upgrade loses no lane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from app.broker import window
from app.broker.notify import redis_client
from app.broker.window import Sent
from app.config import get_settings

#: The broker queue whose workers run fast-lane jobs (every fast job is an inline encode).
FAST_QUEUE = "encode"
#: The lane's Redis lists of job-carrying messages (Fresh), highest priority (step 0) first.
FRESH_KEYS = ["babelq:fast:v2:0", "babelq:fast:v2:1", "babelq:fast:v2:2"]
#: The lists of the previous message form (ids only), read for what older apis send.
FAST_KEYS = ["babelq:fast:0", "babelq:fast:1", "babelq:fast:2"]


@dataclass(frozen=True, slots=True)
class Fresh:
    """A fast-lane job as the api stored it: what its lane needs to run it before reading it."""

    kind: str
    params: dict[str, Any]
    priority: int
    max_attempts: int
    #: the audit head of its "submitted" event: the row must still have it
    head: str


def fast_keys() -> list[str]:
    """The lane's lists in the order a worker takes from them (BRPOP key order)."""
    return [key for pair in zip(FRESH_KEYS, FAST_KEYS, strict=True) for key in pair]


def priority_of(key: bytes | str) -> int:
    """The priority step of a lane list."""
    name = key.decode() if isinstance(key, bytes) else key
    return fast_keys().index(name) // 2


def send(sent: Sequence[Sent]) -> None:
    """LPUSH recorded one-job messages to the fast lane; raises as window.send does.

    Each push also reads the length of its kind's Celery lane, in the same round trip,
    for the next submission's window.lane_has_room.
    """
    if not sent:
        return
    pipe = redis_client(get_settings().redis_url or "").pipeline(transaction=False)
    lanes = _queue(pipe, sent)
    _saw(lanes, pipe.execute())


async def send_async(client: aioredis.Redis, sent: Sequence[Sent]) -> None:
    """send() from an event loop, on its asyncio client."""
    if not sent:
        return
    pipe = client.pipeline(transaction=False)
    lanes = _queue(pipe, sent)
    _saw(lanes, await pipe.execute())


def _queue(pipe: Any, sent: Sequence[Sent]) -> list[str]:
    """Queue each message's LPUSH and its Celery lane's LLEN on a pipeline: the lanes."""
    lanes = []
    for s in sent:
        if s.fresh is None:
            pipe.lpush(FAST_KEYS[s.priority], f"{s.ids[0]}:{s.dispatch}")
        else:
            f = s.fresh
            pipe.lpush(FRESH_KEYS[s.priority], orjson.dumps({
                "id": s.ids[0], "dispatch": s.dispatch, "kind": f.kind, "params": f.params,
                "priority": f.priority, "max_attempts": f.max_attempts, "head": f.head}))
        lanes.append(window.lane_key(s.kind, s.priority))
        pipe.llen(lanes[-1])
    return lanes


def _saw(lanes: list[str], replies: list[Any]) -> None:
    for key, length in zip(lanes, replies[1::2], strict=True):
        window.saw_length(key, int(length))


def parse(message: bytes | str) -> tuple[int, int, Fresh | None]:
    """(job id, dispatch row, the job as stored if the message carries it); ValueError if
    it is neither form."""
    if message[:1] in (b"{", "{"):
        try:
            m = orjson.loads(message)
            return int(m["id"]), int(m["dispatch"]), Fresh(
                str(m["kind"]), dict(m["params"]), int(m["priority"]), int(m["max_attempts"]),
                str(m["head"]))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a fast-lane message: {exc}") from None
    text = message.decode() if isinstance(message, bytes) else message
    job_id, _, dispatch = text.partition(":")
    return int(job_id), int(dispatch), None
