"""/v1/tenants: admins read and change weight and max_running; tenant keys get 403."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.integration.conftest import auth


def test_an_admin_sets_weight_and_max_running(api: TestClient, admin_key: str,
                                              key_a: str) -> None:
    r = api.patch("/v1/tenants/alpha", json={"weight": 2.5, "max_running": 40},
                  headers=auth(admin_key))
    assert r.status_code == 200, r.text
    assert (r.json()["weight"], r.json()["max_running"]) == (2.5, 40)
    listed = {t["name"]: t for t in api.get("/v1/tenants", headers=auth(admin_key)).json()}
    assert (listed["alpha"]["weight"], listed["alpha"]["max_running"]) == (2.5, 40)
    r = api.patch("/v1/tenants/alpha", json={"weight": 1, "max_running": None},
                  headers=auth(admin_key))
    assert (r.json()["weight"], r.json()["max_running"]) == (1.0, None)


def test_tenant_keys_cannot_read_or_change_them(api: TestClient, key_a: str) -> None:
    assert api.get("/v1/tenants", headers=auth(key_a)).status_code == 403
    r = api.patch("/v1/tenants/alpha", json={"weight": 100}, headers=auth(key_a))
    assert r.status_code == 403


def test_bad_values_and_unknown_tenants(api: TestClient, admin_key: str, key_a: str) -> None:
    for body in ({"weight": 0}, {"max_running": 0}, {"weight": "x"}, {"priority": 1}):
        r = api.patch("/v1/tenants/alpha", json=body, headers=auth(admin_key))
        assert r.status_code == 422, body
    r = api.patch("/v1/tenants/nobody-here", json={"weight": 2}, headers=auth(admin_key))
    assert r.status_code == 404
