"""Deficit round robin (app.jobs.fair): shares by jobs and weight, newcomers served next."""

from __future__ import annotations

from collections import Counter

from app.jobs.fair import Round


def serve(fair: Round, backlog: dict[int, int], size: int, picks: int) -> Counter[int]:
    """Jobs sent per tenant over `picks` messages of at most `size` jobs."""
    sent: Counter[int] = Counter()
    for _ in range(picks):
        active = [t for t, n in backlog.items() if n > 0]
        tenant, n = fair.pick(active, lambda t: min(size, backlog[t]))
        backlog[tenant] -= n
        fair.charge(tenant, n)
        sent[tenant] += n
    return sent


def test_backlogged_tenants_share_by_weight() -> None:
    fair = Round(quantum=100, weights={1: 1.0, 2: 3.0})
    sent = serve(fair, {1: 10**6, 2: 10**6}, size=100, picks=400)
    assert sent == {1: 10_000, 2: 30_000}


def test_shares_are_by_jobs_not_messages() -> None:
    # Tenant 2's jobs come one per message (its backlog refilled one at a time would look
    # the same): it still gets no more jobs than tenant 1 over a round.
    fair = Round(quantum=10, weights={1: 1.0, 2: 1.0})
    backlog = {1: 10**6, 2: 10**6}
    sent: Counter[int] = Counter()
    for _ in range(220):
        tenant, n = fair.pick([1, 2], lambda t: 10 if t == 1 else 1)
        backlog[tenant] -= n
        fair.charge(tenant, n)
        sent[tenant] += n
    assert abs(sent[1] - sent[2]) <= 10


def test_a_newcomer_is_served_at_the_next_turn() -> None:
    fair = Round(quantum=500, weights={})
    backlog = {1: 10**6}
    serve(fair, backlog, size=500, picks=7)
    backlog[2] = 1
    tenant, n = fair.pick([1, 2], lambda t: min(500, backlog[t]))
    assert (tenant, n) == (2, 1)


def test_a_small_weight_still_gets_its_share() -> None:
    fair = Round(quantum=100, weights={1: 1.0, 2: 0.25})
    sent = serve(fair, {1: 10**6, 2: 10**6}, size=100, picks=500)
    assert sent[2] * 4 == sent[1]


def test_a_tenant_leaving_passes_the_turn_on() -> None:
    # Tenant 2 takes its turn, then empties: the next turn is 3's, not 1's again.
    fair = Round(quantum=100, weights={}, deficits={1: 0.0, 2: 0.0, 3: 0.0}, turn=1)
    assert fair.pick([1, 2, 3], lambda t: 100 if t != 2 else 5)[0] == 2
    fair.charge(2, 5)
    fair.forget(2)
    assert fair.pick([1, 3], lambda t: 100)[0] == 3
