"""Redis loses every message mid-batch; PostgreSQL still has every job, the relay republishes."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine

from tests.faults import checks
from tests.faults.recovery import Recorder
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


@pytest.fixture
def fresh_workers(stack: Stack) -> Iterator[None]:
    """Restart the workers after the test: after a broker restart a Celery 5.7 worker now
    and then stops taking messages for up to a minute, which would upset later tests."""
    yield
    stack.restart_workers()


@pytest.mark.usefixtures("fresh_workers")
def test_redis_restart_without_persistence_mid_batch(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    ours = {name: stack[name].popen for name in ("api", "relay")}
    submit_batch(client, encode_lines(BATCH, "redis-crash"))
    wait_progress(engine, since, BATCH // 10)
    injected = time.monotonic()
    stack.servers.crash_redis()
    time.sleep(1)  # a moment of broker outage, then an empty Redis
    stack.servers.start_redis()
    # Celery 5.7 / kombu 5.7 workers sometimes die when the broker connection drops
    # (AttributeError in kombu's Channel._connparams while restoring unacked messages, after
    # the transport is closed). Restart them as a supervisor (restart: unless-stopped) does.
    died: list[str] = []
    recovered = checks.wait_terminal(engine, since,
                                     every=lambda: died.extend(stack.revive_workers()))
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": BATCH}
    # The api and the relay rode out the outage on their own, without a restart.
    assert {name: stack[name].popen for name in ours} == ours
    assert all(stack[name].alive for name in ours), stack.tails()
    if died:
        warnings.warn(f"worker(s) {', '.join(died)} died when Redis went away (upstream "
                      "celery/kombu bug) and were restarted", stacklevel=1)
    recovery.record("Redis SIGKILL + restart empty mid-batch (5k encode)"
                    + (f", {'+'.join(died)} restarted" if died else ""), injected, recovered,
                    counts)
