"""`babelq migrate --wait`: what a pod's init container runs while the migrate Job works."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ops.embedded import create_database, drop_database
from app.store.db import current_revision, engine_for, head_revision, migrate

BABELQ = str(Path(sys.executable).with_name("babelq"))


def run_wait(url: str, seconds: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "BABELQ_DATABASE_URL": url, "BABELQ_HOME": "/nonexistent"}
    return subprocess.run([BABELQ, "migrate", "--wait", seconds], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def empty_db(pg_admin_url: str) -> Iterator[str]:
    """A database no migration has touched."""
    name = f"babelq_wait_{secrets.token_hex(4)}"
    url = create_database(pg_admin_url, name)
    yield url
    engine_for(url).dispose()
    drop_database(pg_admin_url, name)


def test_an_unmigrated_database_keeps_new_pods_waiting(empty_db: str) -> None:
    """Exit 1 with the revision it found: the pod does not start on an old schema."""
    done = run_wait(empty_db, "0")
    assert done.returncode == 1
    assert f"not at {head_revision()}" in done.stderr
    assert current_revision(engine_for(empty_db)) is None, "--wait must never migrate"


def test_pods_start_once_the_migration_has_run(empty_db: str) -> None:
    """The wait ends when another process (the Job) brings the schema to head."""
    migrating = threading.Timer(1.0, migrate, args=(empty_db,))
    migrating.start()
    done = run_wait(empty_db, "90")
    migrating.join()
    assert done.returncode == 0, done.stderr
    assert f"database at revision {head_revision()}" in done.stdout


def test_an_unreachable_database_keeps_waiting_then_fails_the_pod() -> None:
    """A database failing over is waited for, not a crash with a traceback."""
    done = run_wait("postgresql://babelq:pw@127.0.0.1:1/babelq", "0")
    assert done.returncode == 1
    assert "database at unreachable" in done.stderr
    assert "Traceback" not in done.stderr
