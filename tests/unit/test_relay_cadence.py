"""The relay's cadence: every pass expires and publishes; prunes and stale checks are rarer.

relay_pass is replaced and the clock advances only in stop.wait, so the schedule is
exact and nothing here touches a server.
"""

from __future__ import annotations

import threading

import pytest

from app.config import get_settings
from workers import relay


class Clock(threading.Event):
    """A stop event whose wait() moves a fake monotonic clock instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def wait(self, timeout: float | None = None) -> bool:
        self.now += timeout or 0.0
        return self.is_set()


def run_passes(monkeypatch: pytest.MonkeyPatch, passes: int, interval: float
               ) -> list[tuple[bool, bool]]:
    """(prune, stale) of each of `passes` relay passes, `interval` seconds apart."""
    clock = Clock()
    seen: list[tuple[bool, bool]] = []

    def fake_pass(actor: str, prune: bool = True, stale: bool = True) -> relay.PassReport:
        seen.append((prune, stale))
        if len(seen) == passes:
            clock.set()
        return relay.PassReport()

    monkeypatch.setattr(relay, "relay_pass", fake_pass)
    monkeypatch.setattr(relay.time, "monotonic", lambda: clock.now)
    relay.run(clock, interval=interval)
    return seen


def test_stale_check_runs_three_times_per_requeue_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "requeue_after", 30.0)
    seen = run_passes(monkeypatch, passes=31, interval=1.0)
    assert [i for i, (_, stale) in enumerate(seen) if stale] == [0, 10, 20, 30]


def test_prune_runs_once_per_prune_every(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = run_passes(monkeypatch, passes=121, interval=1.0)
    assert [i for i, (prune, _) in enumerate(seen) if prune] == [0, 60, 120]
