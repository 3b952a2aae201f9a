"""A chunk's lock reads its own jobs only, whatever the planner's statistics say; the relay
refreshes them after a big upload.

A fresh upload is a backlog the statistics have not seen: they still describe a table of
finished jobs, so every partial index on queued jobs looks empty. The statement that locks
a chunk's jobs must then still find each job by its key, not read the whole backlog on
every chunk (which made each chunk of a 200,000-job backlog cost 124 ms, and the cost
grow with the backlog: every tenant's jobs waited on it).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.orm import Session

from app.jobs.dispatch import STILL_QUEUED_SQL
from app.jobs.execute import LOCK_QUEUED_SQL
from app.jobs.manage import LOCK_CANCEL_BATCH_SQL
from app.ops.embedded import create_database, drop_database
from app.store import statistics
from app.store.db import array_literal, migrate, normalize_url

#: Finished jobs the statistics are taken over, and the backlog added after them.
FINISHED, BACKLOG, CHUNK = 2_000, 40_000, 500
#: Buffers one job's lookup may touch (index descent and heap page): far below a read of
#: the backlog, which costs thousands of buffers per chunk.
BUFFERS_PER_JOB = 10


@pytest.fixture()
def stale(pg_admin_url: str) -> Iterator[Connection]:
    """A database of its own whose statistics saw only finished jobs, then a backlog."""
    name = f"babelq_plan_{secrets.token_hex(4)}"
    url = create_database(pg_admin_url, name)
    engine = create_engine(normalize_url(url))
    try:
        migrate(url)
        with engine.connect() as conn:
            conn.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
            tenant = conn.execute(text(
                "INSERT INTO tenants (name) VALUES ('plan') RETURNING id")).scalar_one()
            conn.execute(text(
                "INSERT INTO jobs (tenant_id, kind, params, status) SELECT :t, 'encode', "
                "jsonb_build_object('text', 'done ' || g), 'succeeded' "
                "FROM generate_series(1, :n) g"), {"t": tenant, "n": FINISHED})
            conn.execute(text("ANALYZE jobs"))
            conn.execute(text(
                "INSERT INTO jobs (tenant_id, kind, params, published_at) SELECT :t, "
                "'encode', jsonb_build_object('text', 'new ' || g), now() "
                "FROM generate_series(1, :n) g"), {"t": tenant, "n": BACKLOG})
            conn.commit()
            yield conn
    finally:
        engine.dispose()
        drop_database(pg_admin_url, name)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _plan(conn: Connection, sql: str, params: dict[str, Any], options: str) -> dict[str, Any]:
    """The statement's plan (EXPLAIN with these options, JSON), rolled back after."""
    explained = conn.execute(text(f"EXPLAIN ({options}, FORMAT JSON) {sql}"),
                             params).scalar_one()
    conn.rollback()
    return (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]


def _index_scans(plan: dict[str, Any]) -> set[str | None]:
    return {n.get("Index Name") for n in _nodes(plan) if n.get("Relation Name") == "jobs"}


def _assert_read_by_key(conn: Connection, sql: str, params: dict[str, Any], rows: int,
                        buffers_per_job: int) -> None:
    """Run the statement: it must read jobs through the primary key alone, its rows only."""
    plan = _plan(conn, sql, params, "ANALYZE, BUFFERS")
    assert _index_scans(plan) == {"jobs_pkey"}, f"jobs read through {_index_scans(plan)}"
    assert plan["Actual Rows"] == rows
    buffers = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    assert buffers <= buffers_per_job * rows, f"{buffers} buffers for {rows} jobs"


def test_a_chunk_is_locked_by_key_under_stale_statistics(stale: Connection) -> None:
    ids = list(stale.execute(text(
        "SELECT id FROM jobs WHERE status = 'queued' ORDER BY id OFFSET 10000 LIMIT :n"),
        {"n": CHUNK}).scalars())
    # Unsorted and with a repeat, as a redelivered message's ids may be: each job once.
    shuffled = ids[::-1] + ids[:3]
    params = {"ids": array_literal(shuffled), "idle": "60s", "dispatch": None}
    _assert_read_by_key(stale, LOCK_QUEUED_SQL, params, CHUNK, BUFFERS_PER_JOB)
    locked = stale.execute(text(LOCK_QUEUED_SQL), params).all()
    assert [r.id for r in locked] == ids  # in id order, each once
    stale.rollback()


def test_the_lock_takes_the_message_s_dispatch_row_with_it(stale: Connection) -> None:
    """The worker's statement settles the message: its dispatch row goes (else the relay
    would send it again after requeue_after), only if the lock commits."""
    ids = list(stale.execute(text(
        "SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 3")).scalars())
    row = stale.execute(text(
        "INSERT INTO dispatches (tenant_id, kind, priority, ids) SELECT tenant_id, kind, "
        "priority, CAST(:ids AS bigint[]) FROM jobs WHERE id = :id RETURNING id"),
        {"ids": array_literal(ids), "id": ids[0]}).scalar_one()
    stale.commit()
    params = {"ids": array_literal(ids), "idle": "60s", "dispatch": row}
    assert len(stale.execute(text(LOCK_QUEUED_SQL), params).all()) == 3
    stale.rollback()  # a run cut off: the message stays to be sent again
    left = text("SELECT count(*) FROM dispatches WHERE id = :d")
    assert stale.execute(left, {"d": row}).scalar_one() == 1
    stale.execute(text(LOCK_QUEUED_SQL), params).all()
    stale.commit()
    assert stale.execute(left, {"d": row}).scalar_one() == 0


def test_a_lost_message_s_jobs_are_found_by_key_under_stale_statistics(
    stale: Connection,
) -> None:
    """The relay's resend of a lost message reads its jobs by key, not the backlog."""
    ids = list(stale.execute(text(
        "SELECT id FROM jobs WHERE status = 'queued' ORDER BY id OFFSET 30000 LIMIT :n"),
        {"n": CHUNK}).scalars())
    # Read twice by key: once to test each job, once to lock the ones that pass.
    _assert_read_by_key(stale, STILL_QUEUED_SQL, {"ids": array_literal(ids)}, CHUNK,
                        2 * BUFFERS_PER_JOB)


def test_the_relay_refreshes_stale_statistics_and_a_batch_cancel_reads_its_own_jobs(
    stale: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a big upload the relay's pass analyzes jobs (once), and plans that depend on
    the statistics, such as a batch cancel's slice, stop reading the whole backlog."""
    stale.execute(text("UPDATE jobs SET batch_id = 7, line = id WHERE status = 'queued'"))
    stale.commit()

    def slice_scans() -> set[str | None]:
        return _index_scans(_plan(stale, LOCK_CANCEL_BATCH_SQL, {"id": 7, "limit": 5000},
                                  "COSTS"))

    assert "jobs_console_queued" in slice_scans()  # the trap, as the statistics stand
    monkeypatch.setattr(statistics, "MIN_INTERVAL", 0.0)  # the fixture analyzed just now
    with Session(stale.engine) as session:
        # The server's activity counters lag their transactions by up to a second.
        deadline = time.monotonic() + 10
        while not statistics.refresh_jobs(session) and time.monotonic() < deadline:
            session.rollback()
            time.sleep(0.2)
        session.commit()
    assert time.monotonic() < deadline, "the relay's refresh never analyzed"
    assert slice_scans() <= {"jobs_pkey", "jobs_batch_line"}
    with Session(stale.engine) as session:
        assert not statistics.refresh_jobs(session)  # fresh now: nothing to do
