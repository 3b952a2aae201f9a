"""The planner's statistics of `jobs`, refreshed soon after big changes.

Right after a big upload the statistics still describe the table before it: every
partial index on queued jobs looks empty, so the planner takes it for statements it
serves badly. A batch cancel's slice read and sorted all queued jobs through one: 95 ms
per 5,000-job slice at 200,000 queued, 6 ms once analyzed. Autovacuum analyzes within
its naptime (a minute by default); the relay asks every pass (refresh_jobs) and analyzes
when enough of the table changed since, at most every MIN_INTERVAL. The hot statements
do not depend on it (they find jobs by key: app.jobs.execute, app.jobs.dispatch).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

#: Rows changed since the last analyze, absolute and as a share of the table, beyond which
#: the statistics are refreshed; and seconds between two refreshes at least.
STALE_ROWS, STALE_SHARE, MIN_INTERVAL = 10_000, 0.05, 10.0
#: Key of the advisory lock one refresh holds (several relays: one analyzes, the others skip).
ANALYZE_LOCK = 0x62716173  # "bqas"

_STALE = text(
    "SELECT n_mod_since_analyze >= greatest(:rows, :share * n_live_tup) "
    "AND coalesce(greatest(last_analyze, last_autoanalyze) "
    "< now() - make_interval(secs => :interval), true) "
    "FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass"
)
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
_ANALYZE = text("ANALYZE jobs")


def refresh_jobs(session: Session) -> bool:
    """ANALYZE jobs if it changed enough since its statistics were taken; whether it did.

    Without the table's ownership PostgreSQL skips the ANALYZE with a warning: autovacuum
    then remains the only refresh.
    """
    stale = session.execute(_STALE, {"rows": STALE_ROWS, "share": STALE_SHARE,
                                     "interval": MIN_INTERVAL}).scalar()
    if not stale or not session.execute(_TRY_LOCK, {"key": ANALYZE_LOCK}).scalar_one():
        return False
    session.execute(_ANALYZE)
    return True
