"""Queue names: one broker queue per kind, each with priority lanes. No Celery here.

Read by the api's metrics and the relay (queue depths) as well as by publishing.
"""

from __future__ import annotations

from app.core import KINDS

__all__ = ["KINDS", "PRIORITY_SEP", "PRIORITY_STEPS", "TASK_NAME", "queue_for", "queue_keys"]

#: The Celery task every chunk message names.
TASK_NAME = "babelq.run_chunk"
#: kombu's Redis transport keeps one list per priority step; lower is served first.
PRIORITY_STEPS = [0, 1, 2]
#: Separator kombu puts between a queue name and its priority step.
PRIORITY_SEP = ":"


def queue_keys(kind: str) -> list[str]:
    """The Redis lists that hold a kind's messages, highest priority first."""
    return [kind if step == 0 else f"{kind}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def queue_for(kind: str) -> str:
    """The queue of a kind; kinds registered by plugins ride on the encode queue."""
    return kind if kind in KINDS else "encode"
