"""The relay starts its webhook sender again when it stopped on an error.

The sender runs in a thread of the relay; before, one unforeseen error stopped webhooks
until the relay was restarted, while the relay's own loop (and liveness file) went on.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.faults.stack import wait_for
from workers import relay, webhooks

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("celery_app")]


def test_a_sender_that_stopped_on_an_error_is_started_again(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []

    async def flaky_run(self: webhooks.Sender, stop: threading.Event) -> None:
        runs.append("started")
        if len(runs) == 1:
            raise RuntimeError("something nobody foresaw")
        while not stop.is_set():  # a sender that works: runs until the relay stops
            await asyncio.sleep(0.05)

    monkeypatch.setattr(webhooks.Sender, "run", flaky_run)
    monkeypatch.setattr(relay, "SENDER_RESTART_AFTER", 0.2)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        wait_for("the sender to be started again", lambda: len(runs) >= 2, 30)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    # Once working, it is left alone: not started again and again.
    assert runs == ["started", "started"]
