"""Batch counters, moved in the same transaction as the jobs they count."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.core.status import RUN, JobStatus
from app.jobs import webhooks

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
    completed: list[tuple[int, int]] = []
    # Sorted, so two transactions moving the same batches lock their rows in one order.
    for batch_id, d in sorted(delta.items()):
        row = session.execute(
            text(
                "UPDATE batches SET queued = queued + :queued, running = running + :running, "
                "succeeded = succeeded + :succeeded, dead = dead + :dead, "
                "cancelled = cancelled + :cancelled, "
                # clock_timestamp(), not now(): the row is written once its lock is held,
                # so a transaction that began first but waited for the lock cannot stamp
                # a finish before the start another one stamped meanwhile.
                "started_at = CASE WHEN :started THEN coalesce(started_at, clock_timestamp()) "
                "ELSE started_at END, "
                "finished_at = CASE WHEN queued + :queued + running + :running = 0 "
                "THEN coalesce(finished_at, clock_timestamp()) ELSE NULL END "
                "WHERE id = :id RETURNING tenant_id, queued + running = 0 AS idle"
            ),
            {"id": batch_id, "started": batch_id in started,
             **{s.value: d[s] for s in JobStatus}},
        ).first()
        # Complete now: nothing left to run, and this move is what ran the last of it.
        if row is not None and row.idle and d[JobStatus.QUEUED] + d[JobStatus.RUNNING] < 0:
            completed.append((batch_id, row.tenant_id))
    webhooks.record_batch_completed(session, completed)
