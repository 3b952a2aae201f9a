"""Keys are cached by each api process for a moment; revocation still gets through."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.keycache import KeyCache
from app.broker import notify
from app.jobs import keys
from app.store.db import session_scope
from tests.integration.conftest import auth

pytestmark = pytest.mark.integration

#: Seconds a test waits for a refusal that must come (it comes in far less).
PATIENCE = 15.0


def refused_in_the_end(api: TestClient, key: str) -> bool:
    """Whether requests with key are refused with 401 before PATIENCE runs out."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if api.get("/v1/jobs", headers=auth(key)).status_code == 401:
            return True
        time.sleep(0.05)
    return False


def key_cache(api: TestClient) -> KeyCache:
    """The api's key cache."""
    return api.app.state.keys  # type: ignore[attr-defined,no-any-return]


def cached_key(api: TestClient, admin_key: str, tenant: str) -> dict[str, Any]:
    """A new key, used once so that the api now holds it in its cache."""
    made = api.post("/v1/keys", json={"tenant": tenant}, headers=auth(admin_key)).json()
    assert api.get("/v1/jobs", headers=auth(made["key"])).status_code == 200
    return made


def revoke_in_database(key_id: int) -> None:
    """Revoke as `babelq keys revoke` or another api process does: not through this api."""
    with session_scope() as s:
        assert keys.revoke_key(s, key_id)


def test_a_key_revoked_by_another_api_process_is_refused_once_it_says_so(
    api: TestClient, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_cache(api), "seconds", 600.0)
    made = cached_key(api, admin_key, "cache-told")
    revoke_in_database(made["id"])
    notify.key_revoked(made["id"])
    assert refused_in_the_end(api, made["key"])


def test_a_key_revoked_in_the_database_alone_is_refused_within_the_cache_time(
    api: TestClient, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_cache(api), "seconds", 1.0)
    made = cached_key(api, admin_key, "cache-silent")
    revoke_in_database(made["id"])
    assert refused_in_the_end(api, made["key"])


def test_a_wrong_key_is_refused_every_time(api: TestClient, admin_key: str) -> None:
    for _ in range(2):
        assert api.get("/v1/jobs", headers=auth(admin_key + "x")).status_code == 401


def test_a_kept_key_is_looked_up_again_ahead_of_its_deadline(
    api: TestClient, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past half its time, a request answers from the cache and the key is looked up again
    behind it: a key revoked in the database alone is then refused before its deadline,
    and no request of a steady stream waits for a lookup."""
    monkeypatch.setattr(key_cache(api), "seconds", 8.0)
    made = cached_key(api, admin_key, "cache-ahead")
    revoke_in_database(made["id"])
    time.sleep(4.5)  # past half of the 8 s
    assert api.get("/v1/jobs", headers=auth(made["key"])).status_code == 200  # from the cache
    deadline = time.monotonic() + 2.0  # well before the entry's own deadline (3.5 s away)
    while api.get("/v1/jobs", headers=auth(made["key"])).status_code != 401:
        assert time.monotonic() < deadline, "the lookup ahead of time never ran"
        time.sleep(0.05)
