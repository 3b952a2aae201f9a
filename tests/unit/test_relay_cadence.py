"""The relay's cadence: every pass expires, dispatches and resends; prunes are rarer.

relay_pass is replaced and the relay's clock advances only in stop.wait, so the schedule
is exact and nothing here touches a server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from workers import relay


class Clock(threading.Event):
    """A stop event whose wait() moves a fake monotonic clock instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def wait(self, timeout: float | None = None) -> bool:
        self.now += timeout or 0.0
        return self.is_set()


def run_passes(monkeypatch: pytest.MonkeyPatch, passes: int,
               fail: Callable[[int], bool] = lambda _: False) -> list[bool]:
    """Whether each of `passes` relay passes, one second apart, was asked to prune."""
    clock = Clock()
    seen: list[bool] = []

    def fake_pass(actor: str, prune: bool = True) -> relay.PassReport:
        seen.append(prune)
        if len(seen) == passes:
            clock.set()
        if fail(len(seen) - 1):
            raise OperationalError("SELECT", {}, Exception("database away"))
        return relay.PassReport()

    monkeypatch.setattr(relay, "relay_pass", fake_pass)
    monkeypatch.setattr(relay, "time", SimpleNamespace(monotonic=lambda: clock.now))
    relay.run(clock, interval=1.0)
    return seen


def test_prune_runs_once_per_prune_every(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = run_passes(monkeypatch, passes=121)
    assert [i for i, prune in enumerate(seen) if prune] == [0, 60, 120]


def test_a_failed_pass_leaves_the_prune_due(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = run_passes(monkeypatch, passes=5, fail=lambda i: i < 2)
    assert [i for i, prune in enumerate(seen) if prune] == [0, 1, 2]
