"""Publishing after commit: a session's jobs reach the broker only if it commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import event
from sqlalchemy.orm import Session

_OUTBOX = "babelq_outbox"


def schedule_publish(session: Session, kind: str, priority: int, ids: Sequence[int],
                     *, fast: bool = False) -> None:
    """Publish these job ids once (and only if) the session's transaction commits.

    fast: one job that runs inline, for the fast lane (app.broker.fastlane).
    """
    session.info.setdefault(_OUTBOX, []).append((kind, priority, ids, fast))


@event.listens_for(Session, "after_commit")
def _publish_outbox(session: Session) -> None:
    pending = session.info.pop(_OUTBOX, [])
    if pending:
        from app.broker.fastlane import publish_fast
        from workers.celery_app import publish_safely

        for kind, priority, ids, fast in pending:
            if fast:
                publish_fast(priority, ids[0])
            else:
                publish_safely(kind, priority, ids)


@event.listens_for(Session, "after_rollback")
def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)
