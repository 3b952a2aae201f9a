"""The relay's cadence: every pass expires and publishes; prunes and stale checks are rarer.

relay_pass is replaced and the relay's clock advances only in stop.wait, so the schedule
is exact and nothing here touches a server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

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


#: What a pass does, given its number and whether it was asked to look for stale jobs:
#: by default it finds an empty queue and looks.
Behaviour = Callable[[int, bool], relay.PassReport]


def run_passes(monkeypatch: pytest.MonkeyPatch, passes: int,
               behave: Behaviour = lambda _, stale: relay.PassReport(stale_checked=stale),
               ) -> list[tuple[bool, bool]]:
    """(prune, stale) asked of each of `passes` relay passes, one second apart."""
    clock = Clock()
    seen: list[tuple[bool, bool]] = []

    def fake_pass(actor: str, prune: bool = True, stale: bool = True) -> relay.PassReport:
        seen.append((prune, stale))
        if len(seen) == passes:
            clock.set()
        return behave(len(seen) - 1, stale)

    monkeypatch.setattr(relay, "relay_pass", fake_pass)
    monkeypatch.setattr(relay, "time", SimpleNamespace(monotonic=lambda: clock.now))
    monkeypatch.setattr(get_settings(), "requeue_after", 30.0)
    relay.run(clock, interval=1.0)
    return seen


def stale_passes(seen: list[tuple[bool, bool]]) -> list[int]:
    return [i for i, (_, stale) in enumerate(seen) if stale]


def test_stale_check_runs_three_times_per_requeue_after(monkeypatch: pytest.MonkeyPatch) -> None:
    assert stale_passes(run_passes(monkeypatch, passes=31)) == [0, 10, 20, 30]


def test_stale_check_stays_due_until_a_queue_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    # Passes 0-4 find every queue busy, so none of them looks; pass 5 does.
    def behave(i: int, stale: bool) -> relay.PassReport:
        return relay.PassReport(stale_checked=stale and i >= 5)

    assert stale_passes(run_passes(monkeypatch, passes=16, behave=behave)) == [0, 1, 2, 3, 4,
                                                                                5, 15]


def test_a_failed_pass_leaves_the_stale_check_due(monkeypatch: pytest.MonkeyPatch) -> None:
    def behave(i: int, stale: bool) -> relay.PassReport:
        if i == 0:
            raise OperationalError("SELECT", {}, Exception("database away"))
        return relay.PassReport(stale_checked=stale)

    assert stale_passes(run_passes(monkeypatch, passes=12, behave=behave)) == [0, 1, 11]


def test_prune_runs_once_per_prune_every(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = run_passes(monkeypatch, passes=121)
    assert [i for i, (prune, _) in enumerate(seen) if prune] == [0, 60, 120]
