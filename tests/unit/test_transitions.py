"""Each named transition's SQL writes only the transitions TRANSITIONS lists for it.

Read from the statements themselves: the statuses a statement's WHERE lets a row be
in, times the status its SET writes. Every statement of app.jobs that sets a status
must be listed here, so a new one cannot bypass the table.
"""

from __future__ import annotations

import itertools
import re
from types import ModuleType

import pytest

from app.core.status import TRANSITIONS, JobStatus, made_by
from app.jobs import execute, manage, submit
from app.store.models import Job

Q, R, S, D, C = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.DEAD,
                 JobStatus.CANCELLED)

#: Each function's statements: the one that locks or fences its rows, the one that writes.
STATEMENTS: dict[str, list[tuple[str, str]]] = {
    "claim": [(execute.LOCK_QUEUED_SQL, execute.CLAIM_SQL)],
    "finish": [(execute.SUCCEED_SQL, execute.SUCCEED_SQL),
               (execute.SUCCEED_WITH_ROWS_SQL, execute.SUCCEED_WITH_ROWS_SQL),
               (execute.FAIL_SQL, execute.FAIL_SQL),
               (execute.FINISH_FRESH_SQL, execute.FINISH_FRESH_SQL)],
    "cancel": [(manage.LOCK_CANCEL_SQL, manage.CANCEL_SQL)],
    "cancel_batch": [(manage.LOCK_CANCEL_BATCH_SQL, manage.CANCEL_SQL)],
    "retry": [(manage.LOCK_RETRY_SQL, manage.RETRY_SQL)],
    "expire_leases": [(manage.LOCK_EXPIRED_SQL, manage.EXPIRE_SQL)],
}
#: Statements whose new status is a parameter (v.status): the statuses their caller
#: passes (finish: dead when out of attempts, else queued for a retry; expire the same).
PARAMETER_TARGETS = {execute.FAIL_SQL: {Q, D}, manage.EXPIRE_SQL: {Q, D}}

_WHERE_ONE = re.compile(r"status = '(\w+)'")
_WHERE_IN = re.compile(r"status IN \(([^)]*)\)")
_FENCE = re.compile(r"status = CASE WHEN v\.inline THEN '(\w+)' ELSE '(\w+)' END")
_SET = re.compile(r"SET status = (?:'(\w+)'|(v\.status))")


def sources(sql: str) -> set[JobStatus]:
    """The statuses a statement's WHERE lets a row have."""
    where = sql[sql.index("WHERE"):]
    found = {*_WHERE_ONE.findall(where)}
    for listed in _WHERE_IN.findall(where):
        found |= {s.strip(" '") for s in listed.split(",")}
    for pair in _FENCE.findall(where):
        found |= set(pair)
    return {JobStatus(s) for s in found}


def targets(sql: str) -> set[JobStatus]:
    """The statuses a statement's SET writes."""
    (literal, parameter), = _SET.findall(sql)
    return PARAMETER_TARGETS[sql] if parameter else {JobStatus(literal)}


@pytest.mark.parametrize("function", sorted(STATEMENTS))
def test_a_function_writes_only_its_transitions(function: str) -> None:
    written = set()
    for where_sql, set_sql in STATEMENTS[function]:
        written |= set(itertools.product(sources(where_sql), targets(set_sql)))
    assert written and written <= made_by(function), written - made_by(function)


def test_every_listed_transition_is_written_by_its_functions() -> None:
    written = {(function, move) for function, pairs in STATEMENTS.items()
               for where_sql, set_sql in pairs
               for move in itertools.product(sources(where_sql), targets(set_sql))}
    listed = {(function, move) for move, functions in TRANSITIONS.items()
              for function in functions}
    assert listed == written


def _status_writers(module: ModuleType) -> set[str]:
    return {value for name, value in vars(module).items()
            if name.endswith("_SQL") and isinstance(value, str) and "SET status" in value}


def test_every_statement_that_sets_a_status_is_held_to_the_table() -> None:
    checked = {set_sql for pairs in STATEMENTS.values() for _, set_sql in pairs}
    for module in (execute, manage, submit):
        assert _status_writers(module) <= checked, module.__name__


def test_the_status_column_allows_exactly_the_enum() -> None:
    checks = [c for c in Job.__table__.constraints if c.name == "jobs_status_valid"]
    assert len(checks) == 1
    allowed = set(re.findall(r"'(\w+)'", str(checks[0].sqltext)))  # type: ignore[attr-defined]
    assert allowed == {s.value for s in JobStatus}
