"""PostgreSQL fails over mid-batch: the primary dies, the standby is promoted behind the
same address, and the stack carries on by itself.

As on Kubernetes with CloudNativePG or a managed database: the app knows one address
(here a proxy standing in for the `-rw` Service), not the servers behind it. The standby
is synchronous, as the README recommends: every job the api accepted is on it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from app.ops.embedded import EmbeddedRedis, create_database, start_redis
from app.store.db import migrate, normalize_url
from tests.faults import checks
from tests.faults.pg_standby import PrimaryStandby
from tests.faults.recovery import Recorder
from tests.faults.stack import Stack, encode_lines, submit_batch, wait_for, wait_progress

pytestmark = pytest.mark.faults

BATCH = 5000
DATABASE = "babelq_failover"


@dataclass
class RedisOnly:
    """What Stack needs of its servers: a Redis of this module alone."""

    redis: EmbeddedRedis

    @property
    def redis_url(self) -> str:
        return self.redis.url


@pytest.fixture(scope="module")
def pair() -> Iterator[PrimaryStandby]:
    """Primary with the stack's database migrated, then a synchronous standby of it."""
    base = Path(tempfile.mkdtemp(prefix="babelq-pgfail-"))
    pair = PrimaryStandby(base, synchronous=True)
    try:
        create_database(pair.url(), DATABASE)
        migrate(pair.url(DATABASE))
        pair.start_standby()
        wait_for("the standby to stream synchronously", pair.replicating, 60)
        yield pair
    finally:
        pair.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def failover_stack(pair: PrimaryStandby) -> Iterator[tuple[Stack, Engine]]:
    """api, two workers and the relay on the one address; a Redis of their own."""
    base = Path(tempfile.mkdtemp(prefix="babelq-pgfail-stack-"))
    redis = start_redis(base / "redis")
    stack = Stack(RedisOnly(redis), pair.url(DATABASE), base)  # type: ignore[arg-type]
    engine = create_engine(normalize_url(pair.url(DATABASE)), pool_pre_ping=True)
    try:
        stack.ensure()
        yield stack, engine
    finally:
        stack.close()
        engine.dispose()
        redis.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_primary_killed_mid_batch_nothing_lost(
    pair: PrimaryStandby, failover_stack: tuple[Stack, Engine], recovery: Recorder
) -> None:
    from app.jobs.keys import create_key

    stack, engine = failover_stack
    with Session(engine) as session:
        _, key = create_key(session, tenant="failover")
        session.commit()
    ours = {name: stack[name].popen for name in ("api", "relay")}
    with stack.client(key) as client:
        submit_batch(client, encode_lines(BATCH, "failover"))
        wait_progress(engine, 0, BATCH // 10)
        injected = time.monotonic()
        pair.fail_over()
        promoted = time.monotonic()
        recovered, counts, died = checks.ride_out_failover(stack, engine, client, BATCH)
    assert {name: stack[name].popen for name in ours} == ours, "api or relay restarted"
    assert not died, f"workers died at the failover: {died}\n{stack.tails()}"
    recovery.note("PostgreSQL: primary SIGKILL → standby promoted", promoted - injected)
    recovery.record("PostgreSQL failover mid-batch (5k encode, synchronous standby)",
                    injected, recovered, counts)
