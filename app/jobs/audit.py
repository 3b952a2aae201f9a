"""Hash-chained audit events: building links and verifying chains."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.store import pgcopy
from app.store.models import AuditEvent

#: prev_hash of the first event of every chain.
GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class Link:
    """One audit event ready to insert."""

    job_id: int
    seq: int
    event_type: str
    actor: str
    created_at: datetime
    details: dict[str, Any]
    prev_hash: str
    hash: str


def timestamp(at: datetime) -> str:
    """The form of an event's time that its hash covers (UTC, microseconds)."""
    return at.astimezone(UTC).isoformat()


def event_body(
    job_id: int, seq: int, event_type: str, actor: str, at: str, details: dict[str, Any]
) -> dict[str, Any]:
    """What the hash covers: everything about the event except its own hashes."""
    return {
        "job_id": job_id,
        "seq": seq,
        "type": event_type,
        "actor": actor,
        "at": at,
        "details": details,
    }


def canonical(body: dict[str, Any]) -> bytes:
    """Canonical JSON of an event: sorted keys, compact, UTF-8, no NaN (orjson, for speed).

    Writers and verifiers both use this one function, so the bytes hashed are the same.
    """
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """sha256(prev_hash ‖ canonical JSON of the event)."""
    return hashlib.sha256(prev_hash.encode() + canonical(body)).hexdigest()


def link(
    job_id: int,
    prev_seq: int,
    prev_hash: str,
    event_type: str,
    actor: str,
    details: dict[str, Any],
    at: datetime | None = None,
) -> Link:
    """The next link of a job's chain, after the event numbered prev_seq."""
    at = at or datetime.now(UTC)
    return link_at(job_id, prev_seq, prev_hash, event_type, actor, details, at, timestamp(at))


def link_at(
    job_id: int, prev_seq: int, prev_hash: str, event_type: str, actor: str,
    details: dict[str, Any], at: datetime, stamp: str,
) -> Link:
    """link() with the timestamp already formatted, for many events of one moment."""
    prev = prev_hash or GENESIS
    seq = prev_seq + 1
    body = event_body(job_id, seq, event_type, actor, stamp, details)
    return Link(job_id, seq, event_type, actor, at, details, prev, chain_hash(prev, body))


@dataclass(frozen=True, slots=True)
class FirstLink:
    """A job's "submitted" event before its id is known, so the id can come from the insert.

    Its canonical JSON has the job id between everything sorted before it (actor, at,
    details) and after it (seq, type): the statement that takes the id from the sequence
    hashes prefix ‖ id ‖ suffix itself (sha256 in SQL), saving the round trip of
    reserving the id first (a test holds that split to link()).
    """

    actor: str
    created_at: datetime
    details: dict[str, Any]
    prefix: bytes
    suffix: bytes


def first_link(actor: str, details: dict[str, Any], at: datetime | None = None) -> FirstLink:
    """A job's first link ("submitted", seq 1, after GENESIS), its id left open."""
    at = at or datetime.now(UTC)
    before = canonical({"actor": actor, "at": timestamp(at), "details": details})
    prefix = GENESIS.encode() + before[:-1] + b',"job_id":'
    return FirstLink(actor, at, details, prefix, b',"seq":1,"type":"submitted"}')


class SubmittedEvents:
    """The first event ("submitted") of many batch jobs of one moment, built from a template.

    Its canonical JSON differs from job to job only in the job id, kind and line, so the
    bytes are spliced together instead of serialising a dict per job: the same bytes as
    canonical(event_body(...)) (a test holds it to that), in a third of the time.
    """

    def __init__(self, actor: str, stamp: str, batch_id: int) -> None:
        self.actor = pgcopy.text_value(actor)
        self.stamp = stamp
        self.batch_id = batch_id
        self._head = (b'{"actor":' + orjson.dumps(actor) + b',"at":' + orjson.dumps(stamp)
                      + b',"details":{"batch_id":' + str(batch_id).encode() + b',"kind":')
        self._genesis = GENESIS.encode()

    def details(self, kind: str, line: int) -> dict[str, Any]:
        """The event's details."""
        return {"kind": kind, "batch_id": self.batch_id, "line": line}

    def hash(self, job_id: int, kind: str, line: int) -> str:
        """sha256(GENESIS ‖ canonical JSON) of the job's submitted event."""
        body = b"%s%s,\"line\":%d},\"job_id\":%d,\"seq\":1,\"type\":\"submitted\"}" % (
            self._head, orjson.dumps(kind), line, job_id)
        return hashlib.sha256(self._genesis + body).hexdigest()

    def copy_line(self, job_id: int, kind: str, line: int, hash_: str) -> str:
        """The event as a line of COPY audit_events (columns in COLUMNS order)."""
        details = f'{{"kind":"{kind}","batch_id":{self.batch_id},"line":{line}}}'
        return (f"{job_id}\t1\tsubmitted\t{self.actor}\t{self.stamp}\t{details}\t"
                f"{GENESIS}\t{hash_}\n")


#: The columns of an audit_events COPY line, in order.
COLUMNS = ("job_id", "seq", "event_type", "actor", "created_at", "details", "prev_hash", "hash")


#: Events given as one array per column (see arrays()); a statement may JOIN on e.
EVENTS_FROM_ARRAYS = """
INSERT INTO audit_events (job_id, seq, event_type, actor, created_at, details, prev_hash, hash)
SELECT e.* FROM unnest(CAST(:e_job_id AS bigint[]), CAST(:e_seq AS int[]),
       CAST(:e_event_type AS text[]), CAST(:e_actor AS text[]),
       CAST(:e_created_at AS timestamptz[]), CAST(:e_details AS jsonb[]),
       CAST(:e_prev_hash AS text[]), CAST(:e_hash AS text[]))
     AS e(job_id, seq, event_type, actor, created_at, details, prev_hash, hash)
"""

_EVENTS_FROM_ARRAYS = text(EVENTS_FROM_ARRAYS)

#: Up to this many events go in one INSERT (one round trip); more by COPY (two, but
#: far less work per row).
FEW_EVENTS = 16


def arrays(links: Sequence[Link]) -> dict[str, list[Any]]:
    """The parameters of EVENTS_FROM_ARRAYS."""
    return {
        "e_job_id": [lk.job_id for lk in links], "e_seq": [lk.seq for lk in links],
        "e_event_type": [lk.event_type for lk in links], "e_actor": [lk.actor for lk in links],
        "e_created_at": [lk.created_at for lk in links],
        "e_details": [orjson.dumps(lk.details).decode() for lk in links],
        "e_prev_hash": [lk.prev_hash for lk in links], "e_hash": [lk.hash for lk in links],
    }


def insert_links(session: Session, links: Sequence[Link]) -> None:
    """Append events: a few with one INSERT, many with one COPY."""
    if not links:
        return
    if len(links) <= FEW_EVENTS:
        session.execute(_EVENTS_FROM_ARRAYS, arrays(links))
        return
    stamps: dict[datetime, str] = {}
    pgcopy.copy_rows(session, "audit_events", COLUMNS, (
        f"{lk.job_id}\t{lk.seq}\t{pgcopy.text_value(lk.event_type)}\t"
        f"{pgcopy.text_value(lk.actor)}\t"
        f"{stamps.get(lk.created_at) or stamps.setdefault(lk.created_at, timestamp(lk.created_at))}"
        f"\t{pgcopy.json_value(lk.details)}\t{lk.prev_hash}\t{lk.hash}\n"
        for lk in links
    ))


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Whether a job's chain verifies, and where it first breaks."""

    job_id: int
    events: int
    ok: bool
    broken_seq: int | None = None
    reason: str | None = None


def verify_events(job_id: int, events: Iterable[AuditEvent]) -> ChainReport:
    """Recompute every link of one job's chain, in seq order."""
    prev, count = GENESIS, 0
    for count, ev in enumerate(events, start=1):
        if ev.seq != count:
            return ChainReport(job_id, count, False, ev.seq, f"expected seq {count}")
        if ev.prev_hash != prev:
            return ChainReport(job_id, count, False, ev.seq, "prev_hash does not match")
        body = event_body(job_id, ev.seq, ev.event_type, ev.actor, timestamp(ev.created_at),
                          ev.details)
        if chain_hash(prev, body) != ev.hash:
            return ChainReport(job_id, count, False, ev.seq, "hash does not match contents")
        prev = ev.hash
    return ChainReport(job_id, count, True)


def job_events(session: Session, job_id: int) -> list[AuditEvent]:
    """A job's audit trail in order."""
    stmt = select(AuditEvent).where(AuditEvent.job_id == job_id).order_by(AuditEvent.seq)
    return list(session.scalars(stmt))


#: (seq, hash) of a chain's newest link as its job row records it.
Head = tuple[int, str]

_HEADS = text("SELECT id, audit_seq, audit_head FROM jobs WHERE id = ANY(CAST(:ids AS bigint[]))")

#: Jobs whose row records events but which have none at all: their chain was deleted.
_MISSING = text(
    "SELECT j.id, j.audit_seq FROM jobs j WHERE j.audit_seq > 0 "
    "AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.job_id = j.id) ORDER BY j.id"
)


def job_head(session: Session, job_id: int) -> Head | None:
    """The head the job's row records, None if there is no such job."""
    row = session.execute(_HEADS, {"ids": [job_id]}).first()
    return None if row is None else (row.audit_seq, row.audit_head)


def verify_job(
    session: Session, job_id: int, events: Sequence[AuditEvent] | None = None,
    head: Head | None = None,
) -> ChainReport:
    """Verify one job's chain, and that it reaches the head recorded on the job's row.

    head: the row's head if the caller has read it; events: the job's trail if the caller
    has read it (job_events), after the head: events only ever grow, so a head read first
    is always within an intact chain, while one read after the events may be newer.
    """
    if head is None:
        head = job_head(session, job_id)
    if events is None:
        events = job_events(session, job_id)
    return against_head(verify_events(job_id, events), events, head)


def against_head(report: ChainReport, events: Sequence[AuditEvent], head: Head | None
                 ) -> ChainReport:
    """report, or a broken one if the chain stops short of (or differs at) the row's head."""
    if not report.ok or head is None or head[0] <= 0:
        return report
    seq, hash_ = head
    if not events:
        return ChainReport(report.job_id, 0, False, 1, f"chain is missing ({seq} events recorded)")
    if len(events) < seq or events[seq - 1].hash != hash_:
        return ChainReport(report.job_id, report.events, False, events[-1].seq,
                           "chain was truncated")
    return report


def verify_all(session: Session, batch_size: int = 5000) -> Iterable[ChainReport]:
    """Verify every chain, streaming events in (job_id, seq) order.

    Each chain must also reach the head its job row recorded, so a chain cut short at its
    end is found too, and so is a job whose whole chain is gone. One snapshot (repeatable
    read) for all of it: rows and events then agree while workers keep appending.
    """
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    stmt = (
        select(AuditEvent)
        .order_by(AuditEvent.job_id, AuditEvent.seq)
        .execution_options(yield_per=batch_size)
    )
    pending: list[tuple[ChainReport, list[AuditEvent]]] = []
    current: list[AuditEvent] = []
    for ev in session.scalars(stmt):
        if current and ev.job_id != current[0].job_id:
            pending.append((verify_events(current[0].job_id, current), current))
            current = []
            if len(pending) >= batch_size:
                yield from _against_heads(session, pending)
                pending = []
        current.append(ev)
    if current:
        pending.append((verify_events(current[0].job_id, current), current))
    yield from _against_heads(session, pending)
    for row in session.execute(_MISSING):
        yield against_head(ChainReport(row.id, 0, True), [], (row.audit_seq, ""))


def _against_heads(
    session: Session, pending: list[tuple[ChainReport, list[AuditEvent]]]
) -> Iterable[ChainReport]:
    heads = {r.id: (r.audit_seq, r.audit_head) for r in session.execute(
        _HEADS, {"ids": [rep.job_id for rep, _ in pending]})}
    for report, events in pending:
        yield against_head(report, events, heads.get(report.job_id))
