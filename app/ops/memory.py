"""Garbage collection in the long-running processes: the api and the worker pool processes."""

from __future__ import annotations

import gc
from functools import cache

#: Net allocations between two young-generation collections (CPython's default is 700).
YOUNG_THRESHOLD = 20_000


@cache
def tune_gc() -> None:
    """Collect young objects less often, and leave the start-up heap out of collections.

    An uploaded block of 5,000 lines or a 500-job chunk makes hundreds of thousands of
    short-lived objects, nearly all freed by reference counting. At CPython's default a
    collection ran every 700 of them, each also walking what had survived so far: it took
    about a quarter of the api's CPU per uploaded line (19.9-21.4 µs measured, 14.1-14.8
    with this). Cycles are still collected, in larger steps; gc.freeze moves the objects
    made at start-up (modules, models, settings) to a generation no collection walks.
    Once per process: call it when start-up is done.
    """
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 20)
