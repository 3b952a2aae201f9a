"""A short-lived cache of live API keys in each api process: key hash -> principal.

Every request names its key; looking it up in PostgreSQL was a round trip and a hop to
the threadpool on every request, two per single job (submit and long-poll). A live key
found in PostgreSQL is kept here for `key_cache_seconds`; a key that is not live is never
kept, so a wrong or revoked key costs the lookup every time, as before. A key revoked
through this api process is dropped at once, and every other api process drops it when
the revocation's notice (app.notify.KEYS_CHANNEL) reaches its listener. A key revoked
with the database alone (e.g. `babelq keys revoke`) is refused within key_cache_seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.jobs.keys import Principal, hash_key

#: Keys kept at most; the cache is emptied when full (a key is looked up again, no more).
MAX_KEYS = 10_000


class KeyCache:
    """Principals of live keys by key hash, each until its deadline; one per api process.

    Used from the event loop only, so it needs no lock.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._entries: dict[str, tuple[Principal, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Principal | None:
        """The cached principal of this key, if it is still fresh."""
        entry = self._entries.get(hash_key(key))
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def due(self, key: str) -> bool:
        """Whether a kept key is past half its time: look it up again now, in the
        background, so that a steady stream of requests never waits for the lookup (one
        request in every key_cache_seconds did: a thread hop and a read on its path).
        Its deadline stands meanwhile, so a key revoked in the database alone is still
        refused within key_cache_seconds."""
        entry = self._entries.get(hash_key(key))
        return entry is not None and entry[1] - self._clock() < self.seconds / 2

    def put(self, key: str, principal: Principal) -> None:
        """Keep a live key's principal for `seconds` (nothing when caching is off)."""
        if self.seconds <= 0:
            return
        if len(self._entries) >= MAX_KEYS:
            self._entries.clear()
        self._entries[hash_key(key)] = (principal, self._clock() + self.seconds)

    def forget(self, key: str) -> None:
        """Forget this key (a lookup found it no longer live)."""
        self._entries.pop(hash_key(key), None)

    def drop(self, key_id: int) -> None:
        """Forget a key (it was revoked): its next request is looked up again."""
        for digest in [d for d, (p, _) in self._entries.items() if p.key_id == key_id]:
            del self._entries[digest]
