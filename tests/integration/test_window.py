"""Each lane's window grows with the live pool processes consuming its queue."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from app.broker import window
from app.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]


def _wait_registered(client: redis.Redis, field: str, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = client.hget(window.CONSUMERS, field)
        if value is not None:
            return bytes(value)
        time.sleep(0.05)
    raise AssertionError(f"{field} never registered")


def test_a_worker_announces_its_pool_and_the_window_follows(
    worker: Any, settings: Settings
) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    # The test worker: a pool of 2 on every queue.
    value = _wait_registered(client, f"{worker.hostname}|encode")
    assert value.decode().split(" ")[0] == "2"
    floor = settings.dispatch_window
    assert window.RedisWindow().window_of("encode") == max(floor, window.PER_PROCESS * 2)
    try:
        # A second worker of 10 processes on encode only: encode's lanes take 24.
        window.register_consumer("big@host", ["encode"], 10)
        lanes = window.RedisWindow()
        assert lanes.window_of("encode") == window.PER_PROCESS * 12
        assert lanes.window_of("evaluate") == max(floor, window.PER_PROCESS * 2)
        assert lanes.room("encode", 1) == window.PER_PROCESS * 12 - lanes.waiting[("encode", 1)]
    finally:
        window.unregister_consumer("big@host", ["encode"])
    assert window.RedisWindow().window_of("encode") == max(floor, window.PER_PROCESS * 2)


def test_a_killed_worker_stops_counting_when_its_announcement_expires(
    settings: Settings,
) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    # As a worker killed 31 s ago left it: never renewed, never taken back.
    client.hset(window.CONSUMERS, "dead@host|enumerate", f"40 {time.time() - 1:.0f}")
    assert window.RedisWindow().window_of("enumerate") < window.PER_PROCESS * 40
    window.register_consumer("alive@host", ["enumerate"], 1)  # any renewal prunes it
    assert client.hget(window.CONSUMERS, "dead@host|enumerate") is None
    window.unregister_consumer("alive@host", ["enumerate"])


def test_a_cold_shutdown_takes_the_announcement_back(celery_app: Any, settings: Settings) -> None:
    """A worker stopped cold (a second Ctrl-C, SIGQUIT) stops announcing its pool at once,
    as a warm stop does: its processes no longer count toward the lanes' windows."""
    from workers.consumers import ConsumersStep

    client = redis.Redis.from_url(settings.redis_url or "")
    worker = SimpleNamespace(app=celery_app, hostname="cold@host", concurrency=3)
    step = ConsumersStep(worker)
    step.create(worker)
    step.start(worker)
    _wait_registered(client, "cold@host|encode")
    step.terminate(worker)
    assert step.thread is not None and not step.thread.is_alive()
    assert client.hget(window.CONSUMERS, "cold@host|encode") is None
