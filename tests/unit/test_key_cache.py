"""The api's key cache: a live key is trusted for a few seconds, then looked up again."""

from __future__ import annotations

from app.api.keycache import MAX_KEYS, KeyCache
from app.jobs.keys import Principal

ALICE = Principal(key_id=1, tenant_id=10, tenant="alice", is_admin=False)
BOB = Principal(key_id=2, tenant_id=20, tenant="bob", is_admin=False)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_live_key_is_kept_until_its_deadline_then_asked_for_again() -> None:
    clock = Clock()
    cache = KeyCache(2.0, clock)
    cache.put("bq_alice", ALICE)
    clock.now += 1.9
    assert cache.get("bq_alice") == ALICE
    clock.now += 0.1
    assert cache.get("bq_alice") is None


def test_keys_are_told_apart_and_unknown_keys_are_not_found() -> None:
    cache = KeyCache(2.0, Clock())
    cache.put("bq_alice", ALICE)
    cache.put("bq_bob", BOB)
    assert (cache.get("bq_alice"), cache.get("bq_bob"), cache.get("bq_eve")) == (ALICE, BOB, None)


def test_a_revoked_key_is_dropped_at_once() -> None:
    cache = KeyCache(60.0, Clock())
    cache.put("bq_alice", ALICE)
    cache.put("bq_bob", BOB)
    cache.drop(ALICE.key_id)
    assert (cache.get("bq_alice"), cache.get("bq_bob")) == (None, BOB)


def test_zero_seconds_keeps_nothing() -> None:
    cache = KeyCache(0.0, Clock())
    cache.put("bq_alice", ALICE)
    assert cache.get("bq_alice") is None


def test_the_cache_never_holds_more_than_its_bound() -> None:
    cache = KeyCache(60.0, Clock())
    for i in range(MAX_KEYS + 5):
        cache.put(f"bq_{i}", ALICE)
    assert len(cache) <= MAX_KEYS


def test_a_key_is_due_for_a_lookup_past_half_its_time() -> None:
    clock = Clock()
    cache = KeyCache(2.0, clock)
    cache.put("bq_alice", ALICE)
    assert not cache.due("bq_alice") and not cache.due("bq_bob")
    clock.now += 1.1
    assert cache.due("bq_alice") and cache.get("bq_alice") == ALICE  # still answered
    cache.forget("bq_alice")
    assert cache.get("bq_alice") is None
