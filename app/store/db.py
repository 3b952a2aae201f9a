"""Engines, sessions and migrations."""

from __future__ import annotations

import asyncio
import re
import select
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine, TextClause, create_engine, event
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app.config import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

#: Schemes we accept for PostgreSQL URLs; all become `postgresql+psycopg://`.
PG_SCHEMES = ("postgresql+psycopg", "postgresql", "postgres")


def normalize_url(url: str) -> str:
    """The `postgresql+psycopg://` form SQLAlchemy needs of any PostgreSQL URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in PG_SCHEMES:
        # Never echo the URL itself: it may carry a password.
        raise ValueError(f"not a PostgreSQL URL (scheme {scheme!r}); use postgresql://...")
    return f"postgresql+psycopg://{rest}"


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One pooled engine per URL per process; a checkout replaces a connection the server closed.

    Statements' parameters are clients' data (job params, idempotency keys): SQLAlchemy
    leaves them out of its error messages (hide_parameters), so no log line carries them.
    LIFO: work done one at a time runs on the connection used last, whose backend has
    the statements prepared and its caches warm; handed round the pool (FIFO), a single
    submission's insert took 1.3-1.5 ms against 1.1 (instrumented api, median of 300).
    Connections a burst opened then stay idle for the server to time out.
    """
    settings = get_settings()
    engine = create_engine(
        normalize_url(url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=1800,
        pool_use_lifo=True,
        hide_parameters=True,
        connect_args={"connect_timeout": 5},
    )
    event.listen(engine.pool, "checkout", _refuse_closed)
    return engine


def _refuse_closed(dbapi_connection: Any, record: ConnectionPoolEntry,
                   proxy: PoolProxiedConnection) -> None:
    """Swap a pooled connection the server has closed for a fresh one, with no round trip.

    An idle connection has nothing to read: we never LISTEN, and the server speaks only
    when asked. A restarted, stopped or terminating server closes the socket (after a
    FATAL message), which makes it readable. Raising DisconnectionError makes the pool
    reconnect this entry and try again. pool_pre_ping did the same with a SELECT, one
    round trip on every checkout; the rare false alarm here costs only a reconnect.
    """
    if dbapi_connection.closed or _readable(dbapi_connection.fileno()):
        raise DisconnectionError("the server closed this pooled connection")


def _readable(fd: int) -> bool:
    """Whether a socket has data or a hangup waiting, without blocking (poll: any fd)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def get_engine() -> Engine:
    """The engine of the configured database."""
    url = get_settings().database_url
    if not url:
        raise RuntimeError("BABELQ_DATABASE_URL is not set (or run `babelq up`)")
    return engine_for(url)


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine, autocommit: bool = False) -> sessionmaker[Session]:
    if autocommit:
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(engine, expire_on_commit=False)


def new_session(engine: Engine | None = None) -> Session:
    """A fresh session on the given (or configured) engine."""
    return _sessionmaker(engine or get_engine())()


@contextmanager
def autocommit(engine: Engine | None = None) -> Iterator[Session]:
    """A session whose statements each commit on their own (no transaction around them).

    A transaction costs two round trips of its own (psycopg sends BEGIN by itself, and
    the session ends it with COMMIT or ROLLBACK). Work that is one statement, a read that
    sees one snapshot or a write that must be atomic alone, needs neither. session.commit()
    sends nothing here, but still runs the after-commit hooks (the pending publish).
    """
    session = _sessionmaker(engine or get_engine(), True)()
    try:
        yield session
    finally:
        session.close()


def driver(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under a session, in its transaction (begun if need be)."""
    return session.connection().connection.driver_connection  # type: ignore[return-value]


def driver_rows(session: Session, sql: str, params: Any) -> list[Any]:
    """Run sql (driver_sql) on the session's psycopg connection: rows as namedtuples.

    psycopg's errors are raised as SQLAlchemy's, as session.execute would, so callers
    that ride out an outage (except OperationalError) or answer 503 see no difference.
    """
    return conn_rows(driver(session), sql, params)


def conn_rows(conn: psycopg.Connection[Any], sql: str, params: Any) -> list[Any]:
    """driver_rows on a psycopg connection itself (e.g. one of driver_autocommit)."""
    with sqlalchemy_errors(conn):
        return conn.cursor(row_factory=namedtuple_row).execute(sql, params).fetchall()


async def conn_rows_async(conn: psycopg.AsyncConnection[Any], sql: str, params: Any
                          ) -> list[Any]:
    """conn_rows on an async connection (AsyncPool's: its errors are already SQLAlchemy's)."""
    cursor = conn.cursor(row_factory=namedtuple_row)
    await cursor.execute(sql, params)
    return await cursor.fetchall()


@contextmanager
def sqlalchemy_errors(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None
                      ) -> Iterator[None]:
    """Raise psycopg's errors as SQLAlchemy's, as work through a session would.

    conn None: there is no connection yet (a pool checkout, which may have to connect).
    """
    try:
        yield
    except psycopg.Error as exc:
        # The parameters are clients' data: they stay out of messages and logs.
        raise DBAPIError.instance(None, None, exc, psycopg.Error, hide_parameters=True,
                                  connection_invalidated=conn is None or conn.closed) from exc


def array_literal(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of ints (or bools), to pass as text and CAST in SQL.

    psycopg dumps a list element by element in Python: for the five 500-element arrays
    of a chunk's finishing UPDATE, 1.7 ms of worker CPU against 0.25 ms for str.join.
    """
    return "{" + ",".join(map(str, values)) + "}"


def hex_array_literal(values: Iterable[str]) -> str:
    """array_literal of hex strings (hashes): checked, since any other text may need quoting."""
    items = list(values)
    joined = ",".join(items)
    # One scan of the joined text (36 us for 500 hashes), then no element may be empty
    # or have brought a comma of its own.
    if not _HEX_OR_COMMA.fullmatch(joined) or "" in items or joined.count(",") != max(
            len(items) - 1, 0):
        raise ValueError("hex_array_literal takes non-empty hex strings only")
    return "{" + joined + "}"


_HEX_OR_COMMA = re.compile(r"[0-9a-f,]*")


def driver_sql(statement: TextClause) -> str:
    """A text() statement in psycopg's own placeholders (%(name)s), for a driver connection."""
    return str(statement.compile(dialect=psycopg_dialect()))


@contextmanager
def driver_autocommit(engine: Engine | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A pooled psycopg connection in autocommit, without SQLAlchemy's execution layer.

    For the api's hottest one-statement reads, the key lookup of every request and a
    job's poll: a SELECT costs 76-117 µs of CPU this way against 345-447 µs through an
    autocommit session (measured here). The connection goes back to the pool as it came,
    out of autocommit; psycopg's errors are raised as SQLAlchemy's, as a session would.
    """
    with sqlalchemy_errors(None):  # raw_connection raises the driver's own error
        pooled = (engine or get_engine()).raw_connection()
    conn: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
    try:
        conn.autocommit = True
        with sqlalchemy_errors(conn):
            yield conn
    except DBAPIError as exc:
        if exc.connection_invalidated:
            pooled.invalidate(exc)
        raise
    finally:
        try:  # whatever happened: sessions after us expect transactions
            if not conn.closed:
                conn.autocommit = False
        except psycopg.Error as exc:  # left mid-transaction: not fit for the pool
            pooled.invalidate(exc)
        finally:
            pooled.close()


class AsyncPool:
    """psycopg AsyncConnections in autocommit, the one returned last handed out first.

    For the api's hottest write run in its event loop (a single submission, see
    app.jobs.submit.submit_now): no thread hop there and back, no SQLAlchemy layers; a
    checkout from the engine's pool through a session cost 0.2-0.3 ms alone on the
    bench machine. At most `size` connections, opened when needed; a checkout waits
    `timeout` seconds at most for one, then raises SQLAlchemy's pool TimeoutError (the
    api's 503), as the engine's pool does. A connection the server closed is replaced
    at checkout (see _refuse_closed); one that failed in use is closed, not kept.
    psycopg's errors are raised as SQLAlchemy's.
    """

    def __init__(self, url: str, size: int, timeout: float) -> None:
        self._conninfo = libpq_url(url)
        self._slots = asyncio.Semaphore(size)
        self._timeout = timeout
        self._idle: list[psycopg.AsyncConnection[Any]] = []

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection in autocommit for the block: each statement commits by itself."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self._timeout)
        except TimeoutError:
            raise PoolTimeout("no database connection free within the pool timeout") from None
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            conn = await self._checkout()
            with sqlalchemy_errors(conn):
                yield conn
            if conn.info.transaction_status == TransactionStatus.IDLE:
                self._idle.append(conn)
                conn = None
        finally:
            if conn is not None:
                await conn.close()
            self._slots.release()

    async def _checkout(self) -> psycopg.AsyncConnection[Any]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not _readable(conn.fileno()):
                return conn
            await conn.close()
        with sqlalchemy_errors(None):
            return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True,
                                                         connect_timeout=5)

    async def close(self) -> None:
        """Close the idle connections (those in use close as they come back)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def libpq_url(url: str) -> str:
    """A PostgreSQL URL as libpq takes it (postgresql://), from any form we accept."""
    return "postgresql://" + normalize_url(url).partition("://")[2]


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    session = new_session(engine)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    """Alembic configuration for the database at url (migrations shipped with the package)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def migrate(database_url: str) -> None:
    """Bring the database to the newest schema (alembic upgrade head)."""
    command.upgrade(alembic_config(database_url), "head")


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The newest migration this code knows (read once: the files do not change)."""
    script = ScriptDirectory.from_config(alembic_config("postgresql://x"))
    return script.get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
