"""What a /metrics scrape costs the database at 1,000 and at 1,000,000 stored jobs.

Run with `pytest tests/bench/test_metrics_bench.py --run-bench -s`. Jobs are written
with generate_series and counted as app.jobs.submit counts its inserts, a third of
them queued across nine lanes; the scrape's database part (fold, read the counts, the
oldest due job of each lane) is timed, and its plan must not scan jobs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from app.jobs import counts
from app.ops.embedded import create_database, drop_database
from app.store.db import migrate

pytestmark = pytest.mark.bench

#: Rows added per generate_series statement.
STEP = 250_000
_FILL = text(
    "INSERT INTO jobs (tenant_id, kind, params, priority, status, audit_head, created_at) "
    "SELECT 1, (ARRAY['encode', 'enumerate', 'evaluate'])[1 + i % 3], '{}', (i / 3) % 3, "
    "(ARRAY['queued', 'succeeded', 'succeeded', 'dead', 'queued', 'succeeded'])[1 + i % 6], "
    "'', now() - make_interval(secs => (:n - i) / 100.0) "
    "FROM generate_series(:start, :n - 1) AS i"
)


@pytest.fixture
def engine(pg_admin_url: str) -> Iterator[Engine]:
    url = create_database(pg_admin_url, "babelq_metrics_bench")
    migrate(url)
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        drop_database(pg_admin_url, "babelq_metrics_bench")


#: What app.jobs.submit counts when it inserts (here, of the rows just generated).
_COUNT_FILLED = text(
    "INSERT INTO job_count_deltas (kind, priority, status, n) "
    "SELECT kind, priority, status, count(*) FROM jobs WHERE id > :last GROUP BY 1, 2, 3")


def fill(engine: Engine, start: int, n: int) -> None:
    for lo in range(start, n, STEP):
        with engine.begin() as conn:
            last = conn.execute(text("SELECT coalesce(max(id), 0) FROM jobs")).scalar_one()
            conn.execute(_FILL, {"start": lo, "n": min(n, lo + STEP)})
            conn.execute(_COUNT_FILLED, {"last": last})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE jobs"))


def scrape(engine: Engine) -> float:
    """Seconds for the database part of one scrape."""
    start = time.perf_counter()
    with Session(engine) as session, session.begin():
        counts.fold(session)
    with Session(engine) as session:
        lanes = counts.read(session)
        counts.oldest_waiting(session, sorted({(c.kind, c.priority) for c in lanes}))
    return time.perf_counter() - start


def median_scrape(engine: Engine) -> float:
    scrape(engine)  # warm the connection and the plans
    return statistics.median(scrape(engine) for _ in range(20))


#: What a scrape ran before (one pass over every job, for counts and the latency histogram).
_OLD_SCAN = text(
    "SELECT kind, status, count(*), " + ", ".join(
        f"count(*) FILTER (WHERE finished_at - created_at <= make_interval(secs => {b}))"
        for b in (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))
    + ", coalesce(sum(extract(epoch FROM finished_at - created_at)), 0) "
    "FROM jobs GROUP BY kind, status")


def old_scan(engine: Engine) -> float:
    with engine.connect() as conn:
        start = time.perf_counter()
        conn.execute(_OLD_SCAN).all()
        return time.perf_counter() - start


def conn_count(session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM jobs")).scalar_one())


def plan_reads_no_jobs_table(engine: Engine) -> str:
    with engine.connect() as conn:
        lanes = {"kinds": ["encode"] * 3, "priorities": [0, 1, 2]}
        plan = "\n".join(r[0] for r in conn.execute(
            text("EXPLAIN " + str(counts._OLDEST)), lanes))
    assert "Seq Scan on jobs" not in plan and "jobs_queued_due" in plan, plan
    return plan


def test_scrape_cost_does_not_grow_with_jobs(engine: Engine) -> None:
    fill(engine, 0, 1_000)
    small = median_scrape(engine)
    fill(engine, 1_000, 1_000_000)
    large = median_scrape(engine)
    plan_reads_no_jobs_table(engine)
    with Session(engine) as session:
        stored = conn_count(session)
        kept = sum(c.n for c in counts.read(session))
    assert stored == kept == 1_000_000
    before = statistics.median(old_scan(engine) for _ in range(3))
    print(f"\nscrape (database part), median of 20: {small * 1000:.2f} ms at 1,000 jobs, "
          f"{large * 1000:.2f} ms at {stored:,} jobs ({large / small:.2f}x); the scan it "
          f"replaced: {before * 1000:.0f} ms at {stored:,} jobs")
