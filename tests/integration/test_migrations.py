"""Migrations: the models and the migrated schema agree; downgrade and upgrade round-trip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from app.ops.embedded import create_database, drop_database
from app.store.db import alembic_config, head_revision, migrate
from app.store.models import Base


@pytest.fixture
def fresh_db(pg_admin_url: str) -> Iterator[str]:
    """An empty database of its own, dropped afterwards."""
    url = create_database(pg_admin_url, "babelq_migrations_test")
    try:
        yield url
    finally:
        drop_database(pg_admin_url, "babelq_migrations_test")


def test_models_match_migrated_schema(fresh_db: str) -> None:
    migrate(fresh_db)
    engine = create_engine(fresh_db)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_downgrade_then_upgrade_round_trips(fresh_db: str) -> None:
    migrate(fresh_db)
    cfg = alembic_config(fresh_db)
    command.downgrade(cfg, "base")
    engine = create_engine(fresh_db)
    try:
        with engine.connect() as conn:
            tables = conn.execute(text(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_name <> 'alembic_version'")).scalar_one()
            assert tables == 0
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head_revision()
            trigger = conn.execute(text(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'audit_events_append_only'"
            )).scalar_one()
            assert trigger == 1
    finally:
        engine.dispose()
