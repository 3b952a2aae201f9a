"""Redis loses every message mid-batch; PostgreSQL still has every job, the relay republishes."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import Engine

from tests.faults import checks
from tests.faults.conftest import Recorder
from tests.faults.stack import Stack, encode_lines, submit_batch, wait_progress

pytestmark = pytest.mark.faults

BATCH = 5000


def test_flushall_mid_batch(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    submit_batch(client, encode_lines(BATCH, "flushall"))
    wait_progress(engine, since, BATCH // 10)
    injected = time.monotonic()
    stack.servers.flushall()

    recovered = checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": BATCH}
    assert all(p.alive for p in stack.procs.values()), stack.tails()
    recovery.record("Redis FLUSHALL mid-batch (5k encode)", injected, recovered, counts)


def test_redis_restart_without_persistence_mid_batch(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    pids = {name: p.popen.pid for name, p in stack.procs.items() if p.popen}
    submit_batch(client, encode_lines(BATCH, "redis-crash"))
    wait_progress(engine, since, BATCH // 10)
    injected = time.monotonic()
    stack.servers.crash_redis()
    time.sleep(1)  # a moment of broker outage, then an empty Redis
    stack.servers.start_redis()

    recovered = checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": BATCH}
    # Nobody was restarted: every process rode out the outage on its own.
    assert {name: p.popen.pid for name, p in stack.procs.items() if p.alive and p.popen} == pids
    recovery.record("Redis SIGKILL + restart empty mid-batch (5k encode)", injected, recovered,
                    counts)
