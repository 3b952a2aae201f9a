"""A liveness file for the processes that serve no HTTP: the worker and the relay.

Each touches BABELQ_ALIVE_FILE from its main loop (the worker from its event loop's timer,
the relay once per pass), so the file's age tells whether that loop still turns. A
Kubernetes exec probe (deploy/kubernetes) or a compose healthcheck compares the age with
a bound; a process whose loop hangs (a read that never returns, a stuck event loop) is
restarted, which a process that merely stays alive would never be. Off when unset.
"""

from __future__ import annotations

import logging

from app.config import get_settings

log = logging.getLogger(__name__)

#: Seconds between touches; a probe's bound should be several of these (60 s in deploy/).
EVERY = 5.0


def touch() -> None:
    """Mark the loop alive now; best effort (a full disk must not stop the loop)."""
    target = get_settings().alive_file
    if target is None:
        return
    try:
        target.touch()
    except OSError as exc:
        log.warning("liveness file %s not touched: %s", target, exc)


def remove() -> None:
    """A process stopping cleanly: no stale file for the next one to be judged by."""
    target = get_settings().alive_file
    if target is not None:
        target.unlink(missing_ok=True)
