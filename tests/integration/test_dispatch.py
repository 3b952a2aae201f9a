"""The dispatcher against real PostgreSQL: shares by weight, caps, once-only, due jobs only.

The broker here is a fixed window (so what is sent depends on the dispatcher alone);
tests/faults/test_fairness.py runs the same on the real stack.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.orm import Session

from app import jobs
from app.config import Settings
from app.jobs import dispatch
from app.jobs.keys import ensure_tenant
from app.store.db import normalize_url, session_scope

#: Jobs per message in these tests.
SIZE = 50
#: These tests' own lane: no other test's jobs are pending in it.
KIND = "dispatch_test"


class Window:
    """A broker whose every lane takes `messages` messages of SIZE jobs per pass."""

    def __init__(self, messages: int) -> None:
        self.messages = messages

    def room(self, kind: str, priority: int) -> int:
        return self.messages

    def chunk_size(self, kind: str) -> int:
        return SIZE


@pytest.fixture
def tenants(settings: Settings) -> Iterator[dict[str, int]]:
    """Tenants c, d and e of this module (ids), their jobs and dispatch state removed after."""
    with session_scope() as session:
        ids = {name: ensure_tenant(session, f"dispatch-{name}").id for name in "cde"}
    yield ids
    with session_scope() as session:
        for table in ("jobs", "pending_jobs", "dispatches", "fair_deficits"):
            session.execute(text(f"DELETE FROM {table} WHERE tenant_id = ANY(:t)"),
                            {"t": list(ids.values())})
        session.execute(text("UPDATE tenants SET weight = 1, max_running = NULL "
                             "WHERE id = ANY(:t)"), {"t": list(ids.values())})


def queue_jobs(tenant: int, n: int, run_after: str = "NULL") -> list[int]:
    """n queued encode jobs of the tenant, made pending as an upload makes them."""
    with session_scope() as session:
        ids = list(session.execute(text(
            "INSERT INTO jobs (tenant_id, kind, params, published_at, run_after) "
            f"SELECT :t, '{KIND}', '{{}}', now(), {run_after} "
            "FROM generate_series(1, :n) RETURNING id"), {"t": tenant, "n": n}).scalars())
        dispatch.pend(session, tenant, KIND, 1, sorted(ids))
    return sorted(ids)


#: The connection that holds the dispatch lock for a test (see sole_dispatcher).
_SOLE: list[Connection] = []


@pytest.fixture(autouse=True)
def sole_dispatcher(settings: Settings) -> Iterator[None]:
    """This test's passes are the only ones: another suite's relay may be running, and its
    passes would send these tenants' jobs. The lock is held on one connection, where the
    test's passes run (a session-level advisory lock is re-entrant there)."""
    engine = create_engine(normalize_url(settings.database_url or ""))
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": dispatch.DISPATCH_LOCK})
        conn.commit()
        _SOLE.append(conn)
        yield
        _SOLE.clear()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": dispatch.DISPATCH_LOCK})
        conn.commit()
    engine.dispose()


def fill(messages: int) -> list[dispatch.Sent]:
    """A dispatch pass on the lock holder's connection (or, without it, its own)."""
    if not _SOLE or threading.current_thread() is not threading.main_thread():
        with session_scope() as session:
            return dispatch.fill(session, Window(messages))
    with Session(bind=_SOLE[0]) as session:
        sent = dispatch.fill(session, Window(messages))
        session.commit()
    return sent


def jobs_per_tenant(sent: list[dispatch.Sent]) -> Counter[int]:
    with session_scope() as session:
        rows = session.execute(text("SELECT tenant_id, count(*) FROM jobs "
                                    "WHERE id = ANY(:ids) GROUP BY tenant_id"),
                               {"ids": [i for s in sent for i in s.ids]}).all()
    return Counter({t: n for t, n in rows})


def pending(tenants: dict[str, int]) -> int:
    """Jobs of these tenants still waiting to be sent."""
    with session_scope() as session:
        return int(session.execute(text(
            "SELECT coalesce(sum(size - taken), 0) FROM pending_jobs WHERE tenant_id = ANY(:t)"),
            {"t": list(tenants.values())}).scalar_one())


def set_tenant(tenant: int, **values: object) -> None:
    with session_scope() as session:
        for column, value in values.items():
            session.execute(text(f"UPDATE tenants SET {column} = :v WHERE id = :t"),
                            {"v": value, "t": tenant})


def test_shares_follow_weights_and_a_change_applies_at_once(tenants: dict[str, int]) -> None:
    c, d = tenants["c"], tenants["d"]
    queue_jobs(c, 3000)
    queue_jobs(d, 3000)
    set_tenant(c, weight=3)
    shares = jobs_per_tenant(fill(40))  # and one message ahead for each newcomer
    assert shares[c] + shares[d] == 42 * SIZE
    assert shares[c] == pytest.approx(3 * shares[d], abs=2 * SIZE)
    set_tenant(c, weight=1)
    shares = jobs_per_tenant(fill(20))
    assert shares[c] == pytest.approx(shares[d], abs=SIZE)


def test_a_newcomer_waits_one_turn_not_the_backlog(tenants: dict[str, int]) -> None:
    c, d = tenants["c"], tenants["d"]
    queue_jobs(c, 5000)
    fill(10)
    mine = queue_jobs(d, 1)
    sent = fill(2)
    assert [s.ids for s in sent if s.ahead] == [mine]  # before what the window holds


def test_single_jobs_of_a_tenant_share_a_message(tenants: dict[str, int]) -> None:
    singles = [i for _ in range(5) for i in queue_jobs(tenants["d"], 1)]
    assert [s.ids for s in fill(3)] == [singles]


def test_max_running_caps_what_is_in_flight(tenants: dict[str, int]) -> None:
    e = tenants["e"]
    set_tenant(e, max_running=120)
    queue_jobs(e, 1000)
    assert sum(len(s.ids) for s in fill(10)) == 120
    assert fill(10) == []  # nothing taken by a worker yet: still 120 in flight
    with session_scope() as session:  # a worker takes one message of 50
        first = session.execute(text("SELECT min(id) FROM dispatches WHERE tenant_id = :t"),
                                {"t": e}).scalar_one()
        message = session.execute(text("SELECT ids FROM dispatches WHERE id = :d"),
                                  {"d": first}).scalar_one()
        jobs.lock_queued(session, message, worker="test", dispatch=first)
        session.execute(text("UPDATE jobs SET status = 'succeeded' WHERE id = ANY(:ids)"),
                        {"ids": list(message)})
    assert sum(len(s.ids) for s in fill(10)) == SIZE


def test_concurrent_dispatchers_send_each_job_once(tenants: dict[str, int]) -> None:
    ids = queue_jobs(tenants["c"], 2000) + queue_jobs(tenants["d"], 1500)
    _SOLE[0].execute(text("SELECT pg_advisory_unlock(:k)"), {"k": dispatch.DISPATCH_LOCK})
    _SOLE[0].commit()
    _SOLE.clear()  # the threads compete for the lock (with any relay that is running)
    sent: list[int] = []
    lock = threading.Lock()

    def dispatcher() -> None:
        while pending(tenants) > 0:  # a pass that finds the lock taken sends nothing
            got = fill(3)
            with lock:
                sent.extend(i for s in got for i in s.ids)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Sent once: by these dispatchers (or, in a full run, a relay beside them, whose
    # messages go to Redis and workers: the fault suite counts those runs).
    assert len(sent) == len(set(sent)) and set(sent) <= set(ids)
    assert pending(tenants) == 0


def test_a_job_due_later_is_not_sent(tenants: dict[str, int]) -> None:
    later = queue_jobs(tenants["c"], 3, run_after="now() + interval '1 hour'")
    now = queue_jobs(tenants["c"], 2)
    sent = [i for s in fill(5) for i in s.ids]
    assert sent == now
    with session_scope() as session:
        unpublished = session.execute(text(
            "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND published_at IS NULL"),
            {"ids": later}).scalar_one()
    assert unpublished == 3  # the relay makes them pending once due
