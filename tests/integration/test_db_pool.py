"""Pooled connections: one the server closed is replaced at checkout, with no error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from app.config import Settings
from app.store import pgcopy
from app.store.db import (
    driver,
    driver_autocommit,
    driver_rows,
    engine_for,
    new_session,
    session_scope,
)
from tests.faults.stack import sql_count, wait_for

pytestmark = pytest.mark.integration


def own_engine(settings: Settings, name: str) -> Engine:
    """An engine with a pool of its own (another URL: application_name), so a test knows
    which connection its next checkout gets."""
    url = make_url(settings.database_url or "").update_query_dict({"application_name": name})
    return engine_for(url.render_as_string(hide_password=False))


def terminate(settings: Settings, pid: int) -> None:
    """End a backend from another connection and wait until it is gone."""
    admin = engine_for(settings.database_url or "")
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    wait_for("the backend to end", lambda: not sql_count(
        admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = :p", p=pid), 10, 0.05)


def test_checkout_replaces_a_connection_the_server_closed(settings: Settings) -> None:
    engine = own_engine(settings, "babelq-pool-test")  # its pool holds one connection
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    terminate(settings, pid)
    # The pooled connection is dead; the checkout sees its closed socket and reconnects.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    assert engine.pool.checkedout() == 0
    engine.dispose()


def test_a_driver_connection_goes_back_to_the_pool_out_of_autocommit(settings: Settings) -> None:
    # The failed connection is the one the session gets next.
    engine = own_engine(settings, "babelq-driver-test")
    with pytest.raises(ProgrammingError, match="nope"), driver_autocommit(engine) as conn:
        conn.execute("SELECT nope")
    assert engine.pool.checkedout() == 0
    # A session on that same connection must still get a real transaction.
    with session_scope(engine) as session:
        session.execute(text("CREATE TEMP TABLE t (x int)"))
        assert session.execute(text("SELECT to_regclass('pg_temp.t')")).scalar_one() is not None
        assert not driver(session).autocommit
        session.rollback()
        assert session.execute(text("SELECT to_regclass('pg_temp.t')")).scalar_one() is None
    engine.dispose()


#: Work on a session's psycopg connection that must fail as the session's own would.
DRIVER_WORK: dict[str, Callable[[Session], object]] = {
    "statement": lambda session: driver_rows(session, "SELECT 1", ()),
    "copy": lambda session: pgcopy.copy_bytes(session, "tenants", ("name",), b"lost\n"),
}


@pytest.mark.parametrize("work", DRIVER_WORK)
def test_driver_work_on_a_lost_connection_raises_sqlalchemys_error(
    settings: Settings, work: str
) -> None:
    # Workers ride out an outage on sqlalchemy's OperationalError (tasks._persist, the
    # task's autoretry), and the api answers it with 503: driver statements and COPY
    # raise it too.
    engine = own_engine(settings, f"babelq-driver-lost-{work}")
    session = new_session(engine)
    terminate(settings, driver_rows(session, "SELECT pg_backend_pid()", ())[0][0])
    # Caught at once: a rollback after it would raise sqlalchemy's error by itself.
    with pytest.raises(OperationalError) as caught:
        DRIVER_WORK[work](session)
    assert caught.value.connection_invalidated
    with contextlib.suppress(DBAPIError):
        session.close()
    engine.dispose()


def test_database_errors_leave_the_parameters_out(settings: Settings) -> None:
    # Parameters are clients' data (job params, idempotency keys): an error message, and so
    # any log line made of it, must not carry them.
    engine = own_engine(settings, "babelq-hidden-parameters")
    with pytest.raises(DBAPIError) as caught, engine.connect() as conn:
        conn.execute(text("SELECT CAST(:key AS text), 1 / 0"), {"key": "idem-secret-7"})
    assert "division by zero" in str(caught.value)
    assert "idem-secret-7" not in str(caught.value)
    engine.dispose()


def test_the_pool_hands_out_the_connection_last_returned(settings: Settings) -> None:
    """LIFO: after a burst, one job at a time runs on the same warm connection (its
    backend's caches and prepared statements), and the rest stay idle, not rotated."""
    engine = own_engine(settings, "babelq-lifo-test")
    with contextlib.ExitStack() as burst:
        pids = [burst.enter_context(driver_autocommit(engine)).info.backend_pid
                for _ in range(3)]
    assert len(set(pids)) == 3
    after = []
    for _ in range(4):
        with driver_autocommit(engine) as conn:
            after.append(conn.info.backend_pid)
    assert after == [pids[0]] * 4  # the burst returned its connections last-in first


def test_the_async_pool_replaces_closed_connections_and_bounds_its_waits(
    settings: Settings,
) -> None:
    """AsyncPool (single submissions in the api's event loop): a connection the server
    closed is replaced at checkout, and a checkout waits at most its timeout."""
    import asyncio

    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from app.store.db import AsyncPool

    async def scenario() -> None:
        pool = AsyncPool(settings.database_url or "", 1, 0.2)
        async with pool.connection() as conn:
            first = conn.info.backend_pid
        terminate(settings, first)
        async with pool.connection() as conn:
            assert conn.info.backend_pid != first
            assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
            with pytest.raises(PoolTimeout):  # its one connection is taken: no second
                async with pool.connection():
                    pass
        async with pool.connection() as conn:  # given back: free again
            assert not conn.closed
        await pool.close()

    asyncio.run(scenario())
