"""BABELQ_REDIS_URL in kombu's Sentinel form: what the app and the broker make of it."""

from __future__ import annotations

import pytest

from app.broker import sentinel
from app.config import Settings


def test_every_sentinel_is_listed_with_the_masters_login() -> None:
    """Credentials and db come from the first entry, as kombu takes them; ports default."""
    parsed = sentinel.parse("sentinel://:s%40cret@a.example:26380/2;sentinel://b.example")
    assert parsed.nodes == (("a.example", 26380), ("b.example", 26379))
    assert (parsed.username, parsed.password, parsed.db) == (None, "s@cret", 2)


@pytest.mark.parametrize("url", ["", "sentinel://", "sentinel://a:1;redis://b:6379"])
def test_a_url_that_is_not_all_sentinels_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sentinel://host:port"):
        sentinel.parse(url)


def test_plain_redis_urls_are_not_sentinel() -> None:
    assert not sentinel.is_sentinel("redis://127.0.0.1:6379/0")
    assert not sentinel.is_sentinel(None)
    assert sentinel.is_sentinel("sentinel://h:26379;sentinel://h2:26379")


def test_celery_uses_the_sentinel_transport_with_the_master_name() -> None:
    """kombu finds the master by name; the sentinels' own password goes to them only."""
    from app.broker.celery_app import celery_app, configure
    from app.broker.transport import SentinelChannel
    from app.config import get_settings

    url = "sentinel://:pw@s1:26379;sentinel://s2:26379"
    try:
        configure(Settings(redis_url=url, redis_sentinel_master="queue",
                           redis_sentinel_password="sentinel-secret"))
        conn = celery_app.connection_for_write()
        assert conn.transport.Channel is SentinelChannel
        assert conn.alt == ["sentinel://:pw@s1:26379", "sentinel://s2:26379"]
        assert conn.password == "pw"
        assert conn.transport_options["master_name"] == "queue"
        assert conn.transport_options["sentinel_kwargs"] == {"password": "sentinel-secret"}
    finally:
        configure(get_settings())
