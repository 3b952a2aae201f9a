"""The batch fast path of the first audit event hashes exactly what verification recomputes."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from app.jobs import audit
from app.store import pgcopy


@settings(max_examples=200, deadline=None)
@given(
    actor=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
    batch_id=st.integers(1, 2**63 - 1),
    job_id=st.integers(1, 2**63 - 1),
    line=st.integers(1, 10**7),
    kind=st.sampled_from(["encode", "enumerate", "evaluate", "test_sleep"]),
    at=st.datetimes(timezones=st.just(UTC)),
)
def test_submitted_template_equals_the_generic_link(
    actor: str, batch_id: int, job_id: int, line: int, kind: str, at: datetime
) -> None:
    stamp = audit.timestamp(at)
    events = audit.SubmittedEvents(actor, stamp, batch_id)
    generic = audit.link_at(job_id, 0, "", "submitted", actor, events.details(kind, line),
                            at, stamp)
    assert events.hash(job_id, kind, line) == generic.hash
    # The COPY line stores the same details, so verification recomputes the same hash.
    fields = events.copy_line(job_id, kind, line, generic.hash).rstrip("\n").split("\t")
    assert fields[0] == str(job_id) and fields[-2:] == [audit.GENESIS, generic.hash]
    assert len(fields) == len(audit.COLUMNS)
    assert fields[1:5] == ["1", "submitted", pgcopy.text_value(actor), stamp]
    assert json.loads(fields[5]) == generic.details


@settings(max_examples=200, deadline=None)
@given(
    actor=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
    job_id=st.integers(1, 2**63 - 1),
    kind=st.sampled_from(["encode", "enumerate", "evaluate", "test_sleep"]),
    priority=st.sampled_from(["high", "normal", "low"]),
    attempts=st.integers(1, 100),
    at=st.datetimes(timezones=st.just(UTC)),
)
def test_first_link_hashed_around_its_id_equals_the_generic_link(
    actor: str, job_id: int, kind: str, priority: str, attempts: int, at: datetime
) -> None:
    # A single submission's statement hashes prefix ‖ id ‖ suffix in SQL (sha256 of the
    # id's decimal text): the same bytes as the event's canonical JSON after GENESIS.
    details = {"kind": kind, "priority": priority, "max_attempts": attempts}
    first = audit.first_link(actor, details, at)
    generic = audit.link(job_id, 0, "", "submitted", actor, details, at)
    in_sql = first.prefix + str(job_id).encode() + first.suffix  # as INSERT_ONE_SQL splices
    assert hashlib.sha256(in_sql).hexdigest() == generic.hash
    assert first.prefix.startswith(audit.GENESIS.encode())
