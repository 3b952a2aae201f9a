"""Job states and the transitions between them: one table of data for every layer.

The database column (models' CHECK constraint), the api's schemas, the SQL of
app.jobs and the tests all read these. Only app.jobs writes a job's status, and only
through the named functions listed here; tests/unit/test_transitions.py holds each
function's SQL to its rows of TRANSITIONS.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life."""

    #: stored, waiting for a worker (also between attempts, with run_after set)
    QUEUED = "queued"
    #: claimed by a worker, under a lease
    RUNNING = "running"
    #: its result is stored
    SUCCEEDED = "succeeded"
    #: out of attempts, its last error stored
    DEAD = "dead"
    #: cancelled by a producer; a late result of its attempt is discarded
    CANCELLED = "cancelled"


Q, R, S, D, C = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.DEAD,
                 JobStatus.CANCELLED)

#: Every status a job is stored with at submission.
INITIAL = Q
#: Statuses a job leaves only by a manual retry (dead, cancelled) or never (succeeded).
TERMINAL = frozenset({S, D, C})
#: Statuses a job reaches only by being run: a batch has started once one of its jobs does.
RUN = frozenset({R, S, D})

#: The allowed transitions, (from, to) -> the app.jobs functions that make them.
#: finish() moves a claimed job from running, and an inline one (computed under its row
#: lock, never claimed) from queued; queued → queued is an inline job's retry.
TRANSITIONS: dict[tuple[JobStatus, JobStatus], frozenset[str]] = {
    (Q, R): frozenset({"claim"}),
    (R, S): frozenset({"finish"}),
    (R, Q): frozenset({"finish", "expire_leases"}),
    (R, D): frozenset({"finish", "expire_leases"}),
    (Q, S): frozenset({"finish"}),
    (Q, Q): frozenset({"finish"}),
    (Q, D): frozenset({"finish"}),
    (Q, C): frozenset({"cancel", "cancel_batch"}),
    (R, C): frozenset({"cancel"}),
    (D, Q): frozenset({"retry"}),
    (C, Q): frozenset({"retry"}),
}


def made_by(function: str) -> frozenset[tuple[JobStatus, JobStatus]]:
    """The (from, to) transitions a named app.jobs function may make."""
    return frozenset(move for move, names in TRANSITIONS.items() if function in names)


def sql_list(statuses: frozenset[JobStatus] | set[JobStatus]) -> str:
    """Statuses as an SQL list, in the enum's order: ('queued', 'running')."""
    return "(" + ", ".join(f"'{s}'" for s in JobStatus if s in statuses) + ")"
