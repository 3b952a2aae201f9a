"""Publishing after commit: a session's messages reach the broker only if it commits.

A session records what to send (single jobs that go straight to their lane) and whether
to run a dispatch pass (new pending jobs); both happen after commit and never fail the
caller: whatever is left behind, the relay sends within requeue_after.
"""

from __future__ import annotations

import logging

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.broker import fastlane, notify, window
from app.broker.window import Sent

log = logging.getLogger(__name__)

#: Where a session keeps the messages to publish at commit (session.info): a list.
PENDING = "babelq_pending_publish"
#: Where a session keeps its fast-lane messages (single inline jobs).
FAST = "babelq_pending_fast"
#: Set in session.info when a dispatch pass should run after commit.
FILL = "babelq_fill"
#: Ids of jobs to announce as changed after commit (notify.finished): a cancel.
ANNOUNCE = "babelq_announce"


def schedule_publish(session: Session, sent: Sent, *, fast: bool = False) -> None:
    """Publish this recorded message once (and only if) the session's transaction commits.

    fast: one job that runs inline, for the fast lane (app.broker.fastlane).
    """
    session.info.setdefault(FAST if fast else PENDING, []).append(sent)


def schedule_fill(session: Session) -> None:
    """Run a dispatch pass after commit, so new pending jobs start at once."""
    session.info[FILL] = True


def schedule_announce(session: Session, job_ids: list[int]) -> None:
    """Tell the waiting long-polls, in every api process, that these jobs changed, once
    (and only if) the session's transaction commits."""
    session.info.setdefault(ANNOUNCE, []).extend(job_ids)


def lane_has_room(kind: str, priority: int) -> bool:
    """Whether a single job may go straight to Redis; False when Redis cannot tell."""
    try:
        return window.lane_has_room(kind, priority)
    except Exception as exc:  # the job is pending instead; a dispatch pass sends it
        log.warning("lane length unknown, job left to the dispatcher: %s", exc)
        return False


@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    pending: list[Sent] = session.info.pop(PENDING, [])
    fast: list[Sent] = session.info.pop(FAST, [])
    fill = session.info.pop(FILL, False)
    announce: list[int] = session.info.pop(ANNOUNCE, [])
    if announce:
        notify.finished(announce)  # best effort: long-polls also read once a second
    if not pending and not fill and not fast:
        return
    from app.jobs import dispatch  # dispatch itself commits sessions: imported late

    try:
        fastlane.send(fast)
        window.send(pending)
        if fill:
            dispatch.run_pass()
    except Exception as exc:  # committed: the relay sends what is left
        log.warning("publish after commit failed, the relay will send: %s", exc)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(PENDING, None)
    session.info.pop(FAST, None)
    session.info.pop(FILL, None)
    session.info.pop(ANNOUNCE, None)
