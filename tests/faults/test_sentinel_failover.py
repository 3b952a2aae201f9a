"""Redis behind Sentinel: the master dies mid-batch, the replica is promoted, no job is lost.

The stack (api, two workers, relay) is given only `sentinel://` and the master's name,
as on Kubernetes with a Sentinel-managed Redis. It runs on a database of its own, so
the suite's other stack (on a plain Redis) never touches these jobs.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from app.ops.embedded import create_database
from app.ops.supervisor import free_port, stop_process
from app.store.db import migrate, normalize_url
from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.sentinel_cluster import MASTER_NAME, SentinelCluster
from tests.faults.stack import (
    BABELQ,
    Servers,
    Stack,
    babelq_env,
    encode_lines,
    submit_batch,
    wait_for,
    wait_progress,
)

pytestmark = pytest.mark.faults

BATCH = 5000


class SentinelStack(Stack):
    """The fault suite's stack, pointed at Redis through the sentinel."""

    def __init__(self, cluster: SentinelCluster, servers: Servers, database_url: str,
                 workdir: Path) -> None:
        self.cluster = cluster
        super().__init__(servers, database_url, workdir)

    def env(self) -> dict[str, str]:
        """Only the sentinel's URL and the master's name: nothing names the master itself."""
        return {**super().env(), "BABELQ_REDIS_URL": self.cluster.url,
                "BABELQ_REDIS_SENTINEL_MASTER": MASTER_NAME}


@pytest.fixture(scope="module")
def cluster() -> Iterator[SentinelCluster]:
    """A master, a replica and a sentinel of this module alone."""
    base = Path(tempfile.mkdtemp(prefix="babelq-sentinel-"))
    cluster = SentinelCluster(base)
    try:
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def sentinel_engine(servers: Servers) -> Iterator[tuple[str, Engine]]:
    """A database of its own on the suite's PostgreSQL, and an engine on it."""
    url = create_database(servers.pg_url, "babelq_sentinel")
    migrate(url)
    engine = create_engine(normalize_url(url), pool_pre_ping=True)
    yield url, engine
    engine.dispose()


@pytest.fixture(scope="module")
def sentinel_stack(cluster: SentinelCluster, servers: Servers,
                   sentinel_engine: tuple[str, Engine]) -> Iterator[SentinelStack]:
    """api, two workers and the relay on the sentinel URL."""
    workdir = Path(tempfile.mkdtemp(prefix="babelq-sentinel-logs-"))
    stack = SentinelStack(cluster, servers, sentinel_engine[0], workdir)
    try:
        stack.ensure()
        yield stack
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def sentinel_key(sentinel_engine: tuple[str, Engine]) -> str:
    """A key of tenant "sentinel"."""
    from app.jobs.keys import create_key

    with Session(sentinel_engine[1]) as session:
        _, secret = create_key(session, tenant="sentinel")
        session.commit()
    return secret


def test_master_killed_mid_batch_nothing_lost(
    cluster: SentinelCluster, sentinel_stack: SentinelStack, sentinel_engine: tuple[str, Engine],
    sentinel_key: str, recovery: Recorder,
) -> None:
    engine, stack = sentinel_engine[1], sentinel_stack
    ours = {name: stack[name].popen for name in ("api", "relay")}
    with stack.client(sentinel_key) as client:
        submit_batch(client, encode_lines(BATCH, "sentinel"))
        wait_progress(engine, 0, BATCH // 10)
        injected = time.monotonic()
        old = cluster.kill_master()
        cluster.wait_promoted(old)
        promoted = time.monotonic()
        # After the failover a new job goes through the promoted master, end to end.
        recovered, counts, died = checks.ride_out_failover(stack, engine, client, BATCH)
    assert cluster.master_port() != old
    assert {name: stack[name].popen for name in ours} == ours, "api or relay restarted"
    assert all(stack[name].alive for name in ours), stack.tails()
    if died:
        warnings.warn(f"worker(s) {', '.join(died)} died at the failover (upstream "
                      "celery/kombu bug) and were restarted", stacklevel=1)
    recovery.note("Sentinel: master SIGKILL → replica promoted", promoted - injected)
    recovery.record("Sentinel failover mid-batch (5k encode)"
                    + (f", {'+'.join(died)} restarted" if died else ""), injected, recovered,
                    counts)


def test_flower_reads_queue_lengths_through_the_sentinel(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    """Flower's Broker page finds the master by name (kombu's own sentinel transport)."""
    port, login = free_port(), ("ops", "a-long-flower-password")
    env = babelq_env(redis_url=cluster.url, redis_sentinel_master=MASTER_NAME,
                     flower_user=login[0], flower_password=login[1], home=str(tmp_path))
    with (tmp_path / "flower.log").open("wb") as log:
        flower = subprocess.Popen([BABELQ, "flower", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/queues/length"
        wait_for("Flower to answer", lambda: _answers(url, login), 60)
        queues = httpx.get(url, auth=login, timeout=10).json()["active_queues"]
        assert {q["name"] for q in queues} == {"encode", "enumerate", "evaluate"}
    finally:
        stop_process(flower, 10)


def _answers(url: str, login: tuple[str, str]) -> bool:
    try:
        return httpx.get(url, auth=login, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_long_poll_subscription_hears_the_master(
    cluster: SentinelCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The api's asyncio subscriber and the workers' publisher meet on the same master."""
    from app.broker.notify import CHANNEL, async_redis_client, redis_client
    from app.config import get_settings

    monkeypatch.setenv("BABELQ_REDIS_SENTINEL_MASTER", MASTER_NAME)
    get_settings.cache_clear()

    async def hear() -> bytes:
        client = async_redis_client(cluster.url)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                await pubsub.get_message(timeout=1)  # the subscribe confirmation
                redis_client(cluster.url).publish(CHANNEL, "[7]")
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=5)
                    if message:
                        return bytes(message["data"])
        finally:
            await client.aclose()

    try:
        assert asyncio.run(asyncio.wait_for(hear(), 30)) == b"[7]"
    finally:
        get_settings.cache_clear()
