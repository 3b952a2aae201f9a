"""Alembic environment: one advisory lock, bounded lock waits, URL from settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from app.store.models import Base

#: Any constant works; it only has to be the same for every migrating process.
MIGRATION_LOCK_ID = 0x6261_6265_6C71


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        from app.config import get_settings
        from app.store.db import normalize_url

        configured = get_settings().database_url
        if not configured:
            raise SystemExit("BABELQ_DATABASE_URL is not set")
        url = normalize_url(configured)
    return url


def run_migrations_online() -> None:
    """Migrate under an advisory lock so concurrent `babelq migrate` runs queue up."""
    engine = create_engine(_url())
    with engine.connect() as connection:
        connection.execute(text("SET lock_timeout = '10s'"))
        connection.execute(text("SET statement_timeout = '600s'"))
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=Base.metadata)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID})
            connection.commit()
    engine.dispose()


run_migrations_online()
