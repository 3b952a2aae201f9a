"""Publishing after commit: a session's messages reach the broker only if it commits.

A session records what to send (single jobs that go straight to their lane) and whether
to run a dispatch pass (new pending jobs); both happen after commit, and never fail the
caller: whatever is left behind, the relay sends within requeue_after.
"""

from __future__ import annotations

import logging

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.jobs.dispatch import Sent

log = logging.getLogger(__name__)

_OUTBOX = "babelq_outbox"
_FILL = "babelq_fill"


def schedule_publish(session: Session, sent: Sent) -> None:
    """Publish this recorded message once (and only if) the session's transaction commits."""
    session.info.setdefault(_OUTBOX, []).append(sent)


def schedule_fill(session: Session) -> None:
    """Run a dispatch pass after commit, so new pending jobs start at once."""
    session.info[_FILL] = True


def lane_has_room(kind: str, priority: int) -> bool:
    """Whether a single job may go straight to Redis; False when Redis cannot tell."""
    from workers import dispatching

    try:
        return dispatching.lane_has_room(kind, priority)
    except Exception as exc:  # the job is pending instead; a dispatch pass sends it
        log.warning("lane length unknown, job left to the dispatcher: %s", exc)
        return False


@event.listens_for(Session, "after_commit")
def _publish_outbox(session: Session) -> None:
    pending: list[Sent] = session.info.pop(_OUTBOX, [])
    fill = session.info.pop(_FILL, False)
    if not pending and not fill:
        return
    from workers import dispatching

    try:
        dispatching.send(pending)
        if fill:
            dispatching.fill()
    except Exception as exc:  # committed: the relay sends what is left
        log.warning("publish after commit failed, the relay will send: %s", exc)


@event.listens_for(Session, "after_rollback")
def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)
    session.info.pop(_FILL, None)
