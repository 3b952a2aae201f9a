"""The pure parts of webhooks, delays and schedules: sealing, address checks, cron times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.exceptions import InvalidTag

from app.jobs import delayed, schedules
from app.webhooks import secrets
from app.webhooks.urls import UnsafeUrl, check_syntax, is_public


def test_a_sealed_secret_opens_only_with_its_key() -> None:
    secret = secrets.new_secret()
    sealed = secrets.seal(secret, "key one")
    assert secret not in sealed and sealed.startswith(secrets.SEALED)
    assert secrets.unseal(sealed, "key one") == secret
    with pytest.raises(InvalidTag):
        secrets.unseal(sealed, "key two")
    with pytest.raises(secrets.SecretKeyMissing):
        secrets.unseal(sealed, None)
    assert secrets.unseal(secrets.seal(secret, None), None) == secret


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False),
    ("10.0.0.8", False), ("172.16.3.4", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("::1", False), ("fe80::1", False),
    ("fc00::1", False), ("::ffff:127.0.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
])
def test_only_globally_routable_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_https_is_required_when_asked() -> None:
    assert check_syntax("https://example.com/h", require_https=True) == ("https", "example.com",
                                                                         443)
    with pytest.raises(UnsafeUrl):
        check_syntax("http://example.com/h", require_https=True)


def test_missed_fires_collapse_into_the_latest() -> None:
    # Down from 02:30 to 06:10 Paris time: the 03:00 .. 06:00 fires collapse into 06:00.
    at = datetime(2026, 3, 10, 5, 10, tzinfo=UTC)  # 06:10 in Paris
    assert schedules.last_fire("0 * * * *", "Europe/Paris", at) == datetime(
        2026, 3, 10, 5, 0, tzinfo=UTC)
    assert schedules.next_fire("0 * * * *", "Europe/Paris", at) == datetime(
        2026, 3, 10, 6, 0, tzinfo=UTC)


def test_a_daily_schedule_follows_its_time_zone_across_dst() -> None:
    before = datetime(2026, 3, 27, 12, tzinfo=UTC)  # Paris moves to CEST on the 29th
    first = schedules.next_fire("0 9 * * *", "Europe/Paris", before)
    second = schedules.next_fire("0 9 * * *", "Europe/Paris", first)
    assert (first.hour, second.hour) == (8, 7)  # 09:00 CET, then 09:00 CEST


def test_bad_schedules_and_delays_are_refused() -> None:
    with pytest.raises(schedules.BadSchedule):
        schedules.check("every day", "UTC")
    with pytest.raises(schedules.BadSchedule):
        schedules.check("0 3 * * *", "Mars/Olympus")
    with pytest.raises(delayed.BadDelay):
        delayed.run_after(datetime.now(UTC), 5)
    with pytest.raises(delayed.BadDelay):
        delayed.run_after(datetime(2030, 1, 1), None)  # no time zone
    assert delayed.run_after(None, 0) is None  # due now: no hold
    assert delayed.run_after(datetime.now(UTC) - timedelta(hours=1), None) is None
