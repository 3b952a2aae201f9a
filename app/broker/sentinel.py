"""Redis behind Sentinel: `BABELQ_REDIS_URL=sentinel://host1:26379;sentinel://host2:26379`.

The URL lists the sentinels in kombu's own form, so Celery's broker (kombu's sentinel
transport, given `master_name` in its transport options) and the app's own redis-py
clients (publish, notify, long-poll, rate limits, readiness, queue depths) read the same
value. Credentials and the database number come from the first entry, as kombu takes
them: they are the master's. The sentinels' own password, if they have one, is
BABELQ_REDIS_SENTINEL_PASSWORD. Every client asks the sentinels for the master when it
connects, so after a failover its next connection goes to the promoted replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SCHEME = "sentinel"
#: Sentinel's well-known port, used when an entry names none (as kombu does).
DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    """What a sentinel:// URL says: the sentinels, and how to log in to the master."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    db: int


def is_sentinel(url: str | None) -> bool:
    """Whether url lists sentinels rather than naming one Redis server."""
    return urlsplit(url or "").scheme == SCHEME


def parse(url: str) -> SentinelUrl:
    """The sentinels and master credentials of a `sentinel://…;sentinel://…` URL."""
    entries = [urlsplit(entry.strip()) for entry in url.split(";") if entry.strip()]
    wrong = [e.geturl() for e in entries if e.scheme != SCHEME or not e.hostname]
    if not entries or wrong:
        raise ValueError(f"not a list of sentinel://host:port entries: {wrong or url!r}")
    first = entries[0]
    path = first.path.strip("/")
    return SentinelUrl(
        nodes=tuple((e.hostname or "", e.port or DEFAULT_PORT) for e in entries),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        db=int(path) if path else 0,
    )


def _master_kwargs(parsed: SentinelUrl, options: dict[str, Any]) -> dict[str, Any]:
    return {"username": parsed.username, "password": parsed.password, "db": parsed.db,
            **options}


def _sentinel_kwargs(options: dict[str, Any], password: str | None) -> dict[str, Any]:
    """Options for the connections to the sentinels themselves (timeouts, their password)."""
    found = {k: v for k, v in options.items() if k.startswith("socket_")}
    return {**found, "password": password} if password else found


def master_client(
    url: str, master: str, sentinel_password: str | None = None, **options: Any
) -> redis.Redis:
    """A client of the current master, found through the sentinels at each connect."""
    parsed = parse(url)
    sentinel = Sentinel(list(parsed.nodes),
                        sentinel_kwargs=_sentinel_kwargs(options, sentinel_password),
                        **_master_kwargs(parsed, options))
    return sentinel.master_for(master)


def async_master_client(
    url: str, master: str, sentinel_password: str | None = None, **options: Any
) -> aioredis.Redis:
    """The asyncio counterpart of master_client, for the api's long-poll subscription."""
    parsed = parse(url)
    sentinel = AsyncSentinel(list(parsed.nodes),
                             sentinel_kwargs=_sentinel_kwargs(options, sentinel_password),
                             **_master_kwargs(parsed, options))
    return sentinel.master_for(master)


def broker_options(master: str, sentinel_password: str | None = None) -> dict[str, Any]:
    """kombu's sentinel transport options: the master's name and how to reach the sentinels."""
    options: dict[str, Any] = {"master_name": master}
    if sentinel_password:
        options["sentinel_kwargs"] = {"password": sentinel_password}
    return options
