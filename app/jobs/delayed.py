"""Delayed jobs: held in PostgreSQL until their run_after, then released to the relay.

A job submitted with run_at or delay is stored queued with run_after set and
published_at = HELD, in the year 9999 ("held"). No relay scan (unpublished: published_at
IS NULL; stale: published_at long past) ever reads it, and Redis holds nothing for it, so a week's
delay or a million delayed jobs cost nothing until due. Once due, release_due sets
published_at to NULL: the job is then an ordinary unpublished one, which the relay
publishes in the same pass. Claims check run_after too, so even a message that arrived
early would not start it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.config import get_settings

#: published_at of a held job: later than any real time, and still a Python datetime
#: (PostgreSQL's 'infinity' is not one, so no row holding it could be read).
HELD = datetime(9999, 1, 1, tzinfo=UTC)
#: The same as PostgreSQL text, as jobs_held's predicate spells it.
HELD_SQL = "9999-01-01 00:00:00+00"


class BadDelay(ValueError):
    """run_at and delay together, in the past by more than a moment, or too far ahead."""


def run_after(run_at: datetime | None, delay: float | None) -> datetime | None:
    """When a job submitted with run_at or delay may start; None to start now."""
    if run_at is not None and delay is not None:
        raise BadDelay("give run_at or delay, not both")
    now = datetime.now(UTC)
    longest = get_settings().max_delay_seconds
    if delay is not None:
        if not 0 <= delay <= longest:
            raise BadDelay(f"delay must be between 0 and {longest:.0f} seconds")
        at = now + timedelta(seconds=delay)
    elif run_at is not None:
        if run_at.tzinfo is None:
            raise BadDelay("run_at needs a time zone, e.g. 2026-01-31T12:00:00Z")
        at = run_at
    else:
        return None
    if (at - now).total_seconds() > longest:
        raise BadDelay(f"run_at is more than {longest:.0f} seconds ahead")
    return at if at > now else None


_RELEASE = text(
    "UPDATE jobs SET published_at = NULL FROM (SELECT id FROM jobs "
    f"WHERE status = 'queued' AND published_at = '{HELD_SQL}' AND run_after <= now() "
    "ORDER BY run_after LIMIT :limit FOR UPDATE SKIP LOCKED) AS due "
    "WHERE jobs.id = due.id"
)


def release_due(session: Session, *, limit: int = 10_000) -> int:
    """Held jobs whose time has come become unpublished, for the relay to publish."""
    return session.execute(_RELEASE, {"limit": limit}).rowcount  # type: ignore[attr-defined, no-any-return]
