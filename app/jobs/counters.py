"""Batch counters, moved in the same transaction as the jobs they count."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.core.status import RUN, JobStatus

#: A job moved from one status to another in a batch: (batch_id, from, to) -> count.
Moves = Counter[tuple[int, str, str]]


def move_counters(session: Session, moves: Moves) -> None:
    """Apply status moves to batch counters; stamp started/finished times."""
    delta: dict[int, Counter[str]] = {}
    started: set[int] = set()
    for (batch_id, src, dst), n in moves.items():
        if src == dst:  # an inline job queued again for a retry: nothing to count
            continue
        d = delta.setdefault(batch_id, Counter())
        d[src] -= n
        d[dst] += n
        if dst in RUN:
            started.add(batch_id)
    # Sorted, so two transactions moving the same batches lock their rows in one order.
    for batch_id, d in sorted(delta.items()):
        session.execute(
            text(
                "UPDATE batches SET queued = queued + :queued, running = running + :running, "
                "succeeded = succeeded + :succeeded, dead = dead + :dead, "
                "cancelled = cancelled + :cancelled, "
                "started_at = CASE WHEN :started THEN coalesce(started_at, now()) "
                "ELSE started_at END, "
                "finished_at = CASE WHEN queued + :queued + running + :running = 0 "
                "THEN coalesce(finished_at, now()) ELSE NULL END "
                "WHERE id = :id"
            ),
            {"id": batch_id, "started": batch_id in started,
             **{s.value: d[s] for s in JobStatus}},
        )
