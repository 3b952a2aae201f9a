"""The only code that changes job state: submit, claim, finish, cancel, retry, relay moves.

Every transition is one of app.core.status.TRANSITIONS, made by the function named
there, with its SQL as one whole named statement. It appends to the job's audit chain
and moves its batch's counters in the same transaction. Publishing to the broker
happens after commit only (pending_publish).
"""

from __future__ import annotations

from app.core.status import TERMINAL, TRANSITIONS, JobStatus
from app.jobs.counters import Moves, move_counters
from app.jobs.execute import (
    LockedJob,
    Outcome,
    backoff,
    claim,
    error_info,
    finish,
    finish_fresh,
    finished_jobs,
    fresh_job,
    lock_queued,
)
from app.jobs.leases import renew_leases
from app.jobs.manage import (
    CANCEL_SLICE,
    Busy,
    cancel,
    cancel_batch,
    cancelling_batches,
    expire_leases,
    mark_cancelling,
    prune,
    retry,
)
from app.jobs.pending_publish import schedule_publish
from app.jobs.submit import (
    JobRow,
    NewJob,
    PreparedRows,
    UnknownKind,
    find_keyed,
    prepare_rows,
    reserve_ids,
    store_rows,
    submit,
    submit_now,
    validate,
)

__all__ = [
    "CANCEL_SLICE",
    "TERMINAL",
    "TRANSITIONS",
    "Busy",
    "JobRow",
    "JobStatus",
    "LockedJob",
    "Moves",
    "NewJob",
    "Outcome",
    "PreparedRows",
    "UnknownKind",
    "backoff",
    "cancel",
    "cancel_batch",
    "cancelling_batches",
    "claim",
    "error_info",
    "expire_leases",
    "find_keyed",
    "finish",
    "finish_fresh",
    "finished_jobs",
    "fresh_job",
    "lock_queued",
    "mark_cancelling",
    "move_counters",
    "prepare_rows",
    "prune",
    "renew_leases",
    "reserve_ids",
    "retry",
    "schedule_publish",
    "store_rows",
    "submit",
    "submit_now",
    "validate",
]
