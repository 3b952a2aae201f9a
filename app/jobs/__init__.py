"""The only code that changes job state: submit, claim, finish, cancel, retry, relay moves.

Every transition appends to the job's audit chain and moves its batch's counters
in the same transaction. Publishing to the broker happens after commit only.
"""

from __future__ import annotations

from app.jobs.counters import Moves, move_counters
from app.jobs.execute import Claimed, Outcome, backoff, claim, error_info, finish, hold, take
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
    take_due,
)
from app.jobs.outbox import schedule_publish
from app.jobs.submit import (
    NewJob,
    PreparedRows,
    UnknownKind,
    find_keyed,
    prepare_rows,
    reserve_ids,
    store_rows,
    submit,
    submit_rows,
    validate,
)

__all__ = [
    "CANCEL_SLICE",
    "Busy",
    "Claimed",
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
    "hold",
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
    "submit_rows",
    "take",
    "take_due",
    "validate",
]
