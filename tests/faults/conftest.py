"""Fault fixtures: the suite's own servers and processes, and a recovery-time summary."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from app.ops.embedded import create_database
from app.store.db import migrate, normalize_url
from tests.faults import checks
from tests.faults.recovery import RECOVERIES, Recorder
from tests.faults.stack import Servers, Stack


def pytest_configure(config: pytest.Config) -> None:
    """A place for the recovery times of this run."""
    config.stash[RECOVERIES] = []


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print each fault's recovery time: injection to every job terminal."""
    recoveries = config.stash.get(RECOVERIES, [])
    if not recoveries:
        return
    terminalreporter.write_sep("=", "fault recovery times (fault injected → all jobs terminal)")
    for r in recoveries:
        jobs = f"{r.jobs:>6} jobs  {r.outcome}" if r.jobs else ""
        terminalreporter.write_line(f"{r.fault:<66} {r.seconds:7.2f} s  {jobs}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """PostgreSQL and Redis of the fault suite alone, in a temporary directory."""
    # Under /tmp: the PostgreSQL unix socket path must stay short.
    base = Path(tempfile.mkdtemp(prefix="babelq-faults-"))
    servers = Servers(base)
    try:
        yield servers
    finally:
        servers.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def fault_db(servers: Servers) -> str:
    """A migrated database on the suite's PostgreSQL."""
    url = create_database(servers.pg_url, "babelq_faults")
    migrate(url)
    return url


@pytest.fixture(scope="session")
def engine(fault_db: str) -> Iterator[Engine]:
    """The test's own connection pool (pre-ping: it outlives a database restart)."""
    engine = create_engine(normalize_url(fault_db), pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def running_stack(servers: Servers, fault_db: str) -> Iterator[Stack]:
    """api, workers w1 and w2, relay: started once, restarted by tests that kill them.

    Process logs are kept (and their directory named) when a fault test failed.
    """
    workdir = Path(tempfile.mkdtemp(prefix="babelq-faults-logs-"))
    stack = Stack(servers, fault_db, workdir)
    try:
        stack.ensure()
        yield stack
    finally:
        stack.close()
        if stack.keep_logs:
            print(f"\nfault suite process logs kept in {workdir / 'logs'}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def stack(running_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The stack, every process running; process logs are shown when the test fails."""
    running_stack.ensure()
    yield running_stack
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        running_stack.keep_logs = True
        print(running_stack.tails())


@pytest.fixture(scope="session")
def api_key(engine: Engine) -> str:
    """A key of tenant "faults"."""
    from app.jobs.keys import create_key

    with Session(engine) as session:
        _, secret = create_key(session, tenant="faults")
        session.commit()
    return secret


@pytest.fixture
def client(stack: Stack, api_key: str) -> Iterator[httpx.Client]:
    """HTTP client of the stack's api."""
    with stack.client(api_key) as c:
        yield c


@pytest.fixture
def since(engine: Engine) -> int:
    """Jobs this test creates have ids above this."""
    return checks.last_job_id(engine)


@pytest.fixture
def recovery(request: pytest.FixtureRequest) -> Recorder:
    """Records recovery times for the terminal summary."""
    return Recorder(request.config)
