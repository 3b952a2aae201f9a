"""A finished job announced by its worker passes the same tenant check as a read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.api.errors import ApiError
from app.api.routes.jobs import _finished
from app.jobs.keys import Principal

OWNER = Principal(key_id=1, tenant_id=10, tenant="owner", is_admin=False)
OTHER = Principal(key_id=2, tenant_id=20, tenant="other", is_admin=False)
ADMIN = Principal(key_id=3, tenant_id=30, tenant="ops", is_admin=True)


def announced(job_id: int = 7) -> dict[str, Any]:
    """A job as notify.finished carries it."""
    at = datetime(2026, 12, 5, 23, 0, tzinfo=UTC).isoformat()
    return {"id": job_id, "batch_id": None, "tenant_id": OWNER.tenant_id, "line": None,
            "kind": "encode", "params": {"text": "x", "codec": "babel"}, "priority": 1,
            "status": "succeeded", "attempt": 1, "max_attempts": 3, "run_after": None,
            "worker": "w", "error": None, "idempotency_key": None, "ref": None,
            "created_at": at, "started_at": at, "finished_at": at,
            "result": {"address": "abc"}, "result_sha256": "f" * 64}


def test_the_owner_and_admins_get_the_announced_job() -> None:
    for principal in (OWNER, ADMIN):
        job = _finished(principal, 7, announced())
        assert (job.id, job.status, job.result) == (7, "succeeded", {"address": "abc"})


def test_another_tenant_gets_404_as_for_a_read() -> None:
    with pytest.raises(ApiError) as refused:
        _finished(OTHER, 7, announced())
    assert refused.value.status == 404
