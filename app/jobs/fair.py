"""Deficit round robin over the tenants of one lane: pure, no database.

Each tenant with queued work gets the turn in tenant-id order. Taking the turn adds
`quantum * weight` jobs to its deficit; it is served, a chunk at a time, while its next
chunk fits in its deficit, then the turn moves on and the rest carries over. Shares
are thus by jobs, not by messages, and proportional to weight; a tenant whose queue
empties loses its deficit, so idling banks no credit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: Turns pick() may hand out in one call before it serves the current tenant anyway: only
#: reached with weights so small that no chunk fits after thousands of turns.
MAX_TURNS = 10_000


@dataclass
class Round:
    """One lane's round: deficits (jobs) per tenant and who holds the turn."""

    quantum: float
    weights: dict[int, float] = field(default_factory=dict)
    deficits: dict[int, float] = field(default_factory=dict)
    turn: int | None = None

    def pick(self, active: Sequence[int], want: Callable[[int], int]) -> tuple[int, int]:
        """The tenant to serve next (of active, non-empty) and how many of its jobs.

        want(t) is the size of t's next chunk: what it would send if its deficit allows.
        """
        ordered = sorted(active)
        for _ in range(MAX_TURNS):
            if self.turn not in ordered:
                self._advance(ordered)
            assert self.turn is not None
            n = want(self.turn)
            if n <= self.deficits.get(self.turn, 0.0):
                return self.turn, n
            self._advance(ordered)
        assert self.turn is not None
        return self.turn, want(self.turn)

    def charge(self, tenant: int, jobs: int) -> None:
        """Count jobs sent for tenant against its deficit."""
        self.deficits[tenant] = self.deficits.get(tenant, 0.0) - jobs

    def forget(self, tenant: int) -> None:
        """tenant has nothing queued any more: its deficit goes (classic DRR).

        If it held the turn, the turn passes back to the tenant before it, so the next
        turn goes to the one after it; else the next pass would restart at the lowest id
        and give that tenant extra turns.
        """
        self.deficits.pop(tenant, None)
        if tenant == self.turn:
            rest = sorted(self.deficits)
            self.turn = max((t for t in rest if t < tenant), default=rest[-1] if rest else None)

    def _advance(self, ordered: list[int]) -> None:
        """Give the turn to the next tenant after the current one, topping up its deficit."""
        current = self.turn
        nxt = next((t for t in ordered if current is None or t > current), ordered[0])
        self.turn = nxt
        self.deficits[nxt] = self.deficits.get(nxt, 0.0) + self.quantum * self.weights.get(nxt, 1.0)
