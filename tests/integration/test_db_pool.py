"""Pooled connections: one the server closed is replaced at checkout, with no error."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from app import pgcopy
from app.config import Settings
from app.db import (
    driver,
    driver_autocommit,
    driver_rows,
    engine_for,
    new_session,
    session_scope,
)

pytestmark = pytest.mark.integration


def backend_alive(settings: Settings, pid: int) -> bool:
    with engine_for(settings.database_url or "").connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                 {"p": pid}).scalar_one())


def test_checkout_replaces_a_connection_the_server_closed(settings: Settings) -> None:
    # An engine of its own (another URL), so its pool holds exactly one connection.
    url = make_url(settings.database_url or "").update_query_dict(
        {"application_name": "babelq-pool-test"}).render_as_string(hide_password=False)
    engine = engine_for(url)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with engine_for(settings.database_url or "").connect() as admin:
        assert admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    deadline = time.monotonic() + 10
    while backend_alive(settings, pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not backend_alive(settings, pid), "the backend did not end"
    # The pooled connection is dead; the checkout sees its closed socket and reconnects.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    assert engine.pool.checkedout() == 0
    engine.dispose()


def test_a_driver_connection_goes_back_to_the_pool_out_of_autocommit(settings: Settings) -> None:
    # An engine of its own, so the failed connection is the one the session gets next.
    url = make_url(settings.database_url or "").update_query_dict(
        {"application_name": "babelq-driver-test"}).render_as_string(hide_password=False)
    engine = engine_for(url)
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
    url = make_url(settings.database_url or "").update_query_dict(
        {"application_name": f"babelq-driver-lost-{work}"}).render_as_string(hide_password=False)
    engine = engine_for(url)
    session = new_session(engine)
    pid = driver_rows(session, "SELECT pg_backend_pid()", ())[0][0]
    with engine_for(settings.database_url or "").connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    deadline = time.monotonic() + 10
    while backend_alive(settings, pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Caught at once: a rollback after it would raise sqlalchemy's error by itself.
    with pytest.raises(OperationalError) as caught:
        DRIVER_WORK[work](session)
    assert caught.value.connection_invalidated
    with contextlib.suppress(DBAPIError):
        session.close()
    engine.dispose()
