"""Recovery times of the faults of a run, kept for the terminal summary."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Recovery:
    """How long one fault kept its jobs from all being terminal."""

    fault: str
    seconds: float
    jobs: int
    outcome: str


RECOVERIES = pytest.StashKey[list[Recovery]]()


class Recorder:
    """Times a fault: from injection to every job of the test terminal."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def record(self, fault: str, injected: float, recovered: float, counts: dict[str, int]
               ) -> None:
        """Keep the recovery time (time.monotonic() readings) for the summary."""
        self.note(fault, recovered - injected, counts)

    def note(self, what: str, seconds: float, counts: dict[str, int] | None = None) -> None:
        """Keep a measurement for the summary."""
        counts = counts or {}
        outcome = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        self.config.stash[RECOVERIES].append(
            Recovery(what, seconds, sum(counts.values()), outcome))
        print(f"\n{what}: {seconds:.2f}s {outcome}")
