"""Publishing after commit: a session's jobs reach the broker only if it commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import event
from sqlalchemy.orm import Session

#: Where a session keeps the jobs to publish at commit (session.info): a list, no table.
PENDING = "babelq_pending_publish"


def schedule_publish(session: Session, kind: str, priority: int, ids: Sequence[int],
                     *, fast: bool = False) -> None:
    """Publish these job ids once (and only if) the session's transaction commits.

    fast: one job that runs inline, for the fast lane (app.broker.fastlane).
    """
    session.info.setdefault(PENDING, []).append((kind, priority, ids, fast))


@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    pending = session.info.pop(PENDING, [])
    if pending:
        from app.broker.celery_app import publish_safely
        from app.broker.fastlane import publish_fast

        for kind, priority, ids, fast in pending:
            if fast:
                publish_fast(priority, ids[0])
            else:
                publish_safely(kind, priority, ids)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(PENDING, None)
