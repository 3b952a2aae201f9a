"""Bulk batches: streamed NDJSON, rejected lines, counters, results in line order, cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from app.store.db import session_scope
from app.store.models import Batch, Job
from tests.integration.conftest import auth

# Every test here needs the test worker and the relay running.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

NDJSON = {"Content-Type": "application/x-ndjson"}


def ndjson(items: list[Any]) -> bytes:
    return b"".join((json.dumps(i) if not isinstance(i, str) else i).encode() + b"\n"
                    for i in items)


def wait_done(api: TestClient, key: str, batch_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = api.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
        if batch["done"]:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} not done: {batch}")


def real_counts(batch_id: int) -> dict[str, int]:
    with session_scope() as s:
        rows = s.execute(select(Job.status, func.count()).where(Job.batch_id == batch_id)
                         .group_by(Job.status)).all()
    return {status: n for status, n in rows}


@contextmanager
def paused(celery_app: Any, worker: Any, queue: str) -> Iterator[None]:
    """The test worker takes no message from queue inside the block (remote control)."""
    where = {"destination": [worker.hostname], "reply": True, "timeout": 10}
    assert celery_app.control.cancel_consumer(queue, **where), "the worker did not answer"
    try:
        yield
    finally:
        assert celery_app.control.add_consumer(queue, **where), "the worker did not answer"


def test_mixed_upload_reports_bad_lines_and_runs_good_ones(api: TestClient, key_a: str) -> None:
    body = ndjson([
        {"kind": "encode", "params": {"text": "hello world"}},
        "{not json",
        {"kind": "encode", "params": {"text": ""}},
        "",
        {"kind": "enumerate", "params": {"query": "hello world", "max_results": 5}},
        {"kind": "nope", "params": {}},
        {"kind": "encode", "params": {"text": "   ", "codec": "babel"}, "ref": "blank-page"},
        [1, 2],
    ])
    r = api.post("/v1/batches", content=body, headers={**auth(key_a), **NDJSON})
    assert r.status_code == 202, r.text
    out = r.json()
    assert (out["accepted"], out["rejected"]) == (3, 4)
    reasons = {e["line"]: e["reason"] for e in out["rejected_lines"]}
    assert set(reasons) == {2, 3, 6, 8}
    assert "JSON" in reasons[2]
    assert "params.text" in reasons[3]
    assert "kind" in reasons[6]
    batch = wait_done(api, key_a, out["id"])
    assert batch["counts"]["succeeded"] == 3
    assert batch["progress"] == 1.0
    lines = [json.loads(x) for x in api.get(f"/v1/batches/{out['id']}/results",
                                            headers=auth(key_a)).text.splitlines()]
    assert [x["line"] for x in lines] == [1, 5, 7]
    assert lines[0]["result"]["address"].startswith("107310278aacfa5c75fa01d37b96036c")
    assert lines[1]["result"]["candidates"][0]["ngram"] == "hello"
    assert lines[2]["result"]["address"] == "0"


def test_a_chunk_of_inline_and_claimed_jobs_keeps_its_batch_counters(
    api: TestClient, key_a: str
) -> None:
    # Short texts run inside the locking transaction, hd texts over INLINE_TEXT are
    # claimed first: one chunk moves the batch's counters both ways in one transaction.
    from app.jobs.execute import INLINE_TEXT, runs_inline

    long = "the quick brown fox " * (INLINE_TEXT // 20 + 1)
    items = [{"kind": "encode", "params": {"text": f"short {i}"}} if i % 2 else
             {"kind": "encode", "params": {"text": f"{long}{i}", "codec": "hd"}}
             for i in range(10)]
    inline = [runs_inline(i["kind"], i["params"]) for i in items]
    assert inline == [bool(i % 2) for i in range(10)]
    r = api.post("/v1/batches", content=ndjson(items), headers={**auth(key_a), **NDJSON})
    assert r.status_code == 202, r.text
    batch = wait_done(api, key_a, r.json()["id"])
    assert batch["counts"] == {**batch["counts"], "succeeded": 10, "queued": 0, "running": 0}
    assert real_counts(batch["id"]) == {"succeeded": 10}
    assert batch["started_at"] and batch["finished_at"]


def test_results_are_cursor_paged_in_line_order(api: TestClient, key_a: str) -> None:
    body = ndjson([{"kind": "encode", "params": {"text": f"line {i}"}} for i in range(1, 26)])
    batch_id = api.post("/v1/batches", content=body, headers={**auth(key_a), **NDJSON}).json()["id"]
    wait_done(api, key_a, batch_id)
    seen, cursor = [], 0
    while True:
        r = api.get(f"/v1/batches/{batch_id}/results", params={"cursor": cursor, "limit": 10},
                    headers=auth(key_a))
        seen += [json.loads(x)["line"] for x in r.text.splitlines()]
        if "x-next-cursor" not in r.headers:
            break
        cursor = int(r.headers["x-next-cursor"])
    assert seen == list(range(1, 26))


def test_json_batch_and_counters_match_rows(api: TestClient, key_a: str) -> None:
    jobs = [{"kind": "encode", "params": {"text": f"t{i}"}} for i in range(300)]
    r = api.post("/v1/batches", json={"jobs": jobs}, headers=auth(key_a))
    assert r.status_code == 202
    batch = wait_done(api, key_a, r.json()["id"])
    assert batch["counts"]["succeeded"] == 300 == real_counts(batch["id"])["succeeded"]


@pytest.mark.parametrize("body", [b"", b"\n\n", b'{"kind": "x"}\n[]\n'])
def test_empty_or_all_invalid_is_422_and_stores_nothing(
    api: TestClient, key_a: str, body: bytes
) -> None:
    with session_scope() as s:
        before = s.scalar(select(func.count()).select_from(Batch))
    r = api.post("/v1/batches", content=body, headers={**auth(key_a), **NDJSON})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid"
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == before


def test_idempotency_keys_in_a_batch(api: TestClient, key_a: str) -> None:
    body = ndjson([
        {"kind": "encode", "params": {"text": "a"}, "idempotency_key": "bk-1"},
        {"kind": "encode", "params": {"text": "a"}, "idempotency_key": "bk-1"},
    ])
    out = api.post("/v1/batches", content=body, headers={**auth(key_a), **NDJSON}).json()
    assert (out["accepted"], out["rejected"]) == (1, 1)
    assert "bk-1" in out["rejected_lines"][0]["reason"]


def test_finished_batch_reports_its_timing(api: TestClient, key_a: str) -> None:
    # Encode jobs run inline (queued → succeeded, never `running`); the batch still starts.
    body = ndjson([{"kind": "encode", "params": {"text": f"t{i}"}} for i in range(300)])
    batch_id = api.post("/v1/batches", content=body, headers={**auth(key_a), **NDJSON}).json()["id"]
    batch = wait_done(api, key_a, batch_id)
    assert batch["counts"]["succeeded"] == 300 and batch["progress"] == 1.0
    assert batch["started_at"] is not None and batch["finished_at"] is not None
    assert batch["started_at"] <= batch["finished_at"]
    assert batch["jobs_per_second"] > 0 and batch["eta_seconds"] == 0.0


def test_cancel_batch_counts_add_up(api: TestClient, key_a: str, worker: Any,
                                   celery_app: Any) -> None:
    # The worker stops taking encode messages while the batch is uploaded and cancelled,
    # so the cancel finds it all waiting however fast this machine runs it.
    n = 3000
    body = ndjson([{"kind": "encode", "params": {"text": f"c{i}"}} for i in range(n)])
    with paused(celery_app, worker, "encode"):
        batch_id = api.post("/v1/batches", content=body,
                            headers={**auth(key_a), **NDJSON}).json()["id"]
        r = api.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_a))
    assert r.status_code == 200
    batch = wait_done(api, key_a, batch_id)
    counts = batch["counts"]
    assert counts["cancelled"] == n and counts["succeeded"] == 0
    assert {k: v for k, v in counts.items() if v} == real_counts(batch_id)
    # The cancel's own answer already counts what it cancelled (nothing cancels later).
    assert r.json()["counts"]["cancelled"] == counts["cancelled"]


def test_other_tenant_cannot_see_batch(api: TestClient, key_a: str, key_b: str) -> None:
    body = ndjson([{"kind": "encode", "params": {"text": "mine"}}])
    batch_id = api.post("/v1/batches", content=body, headers={**auth(key_a), **NDJSON}).json()["id"]
    for path in ("", "/results"):
        assert api.get(f"/v1/batches/{batch_id}{path}", headers=auth(key_b)).status_code == 404
    assert api.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_b)).status_code == 404


def test_high_priority_job_overtakes_queued_batch(api: TestClient, key_a: str) -> None:
    """A high job submitted behind a large normal batch finishes while the batch waits."""
    n = 30_000
    body = ndjson([{"kind": "encode", "params": {"text": f"backlog {i}"}} for i in range(n)])
    batch_id = api.post("/v1/batches", content=body, headers={**auth(key_a), **NDJSON},
                        params={"priority": "normal"}).json()["id"]
    job = api.post("/v1/jobs", json={"kind": "encode", "params": {"text": "urgent"},
                                     "priority": "high"}, headers=auth(key_a)).json()
    done = api.get(f"/v1/jobs/{job['id']}", params={"wait": 30}, headers=auth(key_a)).json()
    assert done["status"] == "succeeded"
    with session_scope() as s:
        behind = s.execute(text("SELECT count(*) FROM jobs WHERE batch_id = :b AND "
                                "(finished_at IS NULL OR finished_at > :t)"),
                           {"b": batch_id, "t": done["finished_at"]}).scalar_one()
    # Most of the batch was still waiting when the urgent job finished.
    assert behind > n // 2
    api.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_a))


def unpublished_batch(n: int) -> tuple[int, list[int]]:
    """A batch of n queued encode jobs, stored but never published (no worker sees it)."""
    from datetime import UTC, datetime

    from app import core, jobs
    from app.jobs.keys import ensure_tenant

    with session_scope() as s:
        tenant = ensure_tenant(s, "cancelling")
        batch_id = s.execute(text("INSERT INTO batches (tenant_id, total, queued) "
                                  "VALUES (:t, :n, :n) RETURNING id"),
                             {"t": tenant.id, "n": n}).scalar_one()
        rows = [jobs.NewJob(i + 1, "encode", core.validate("encode", {"text": f"c {i}"}), 1, 3)
                for i in range(n)]
        block = jobs.prepare_rows(rows, jobs.reserve_ids(s, n), tenant_id=tenant.id,
                                  batch_id=batch_id, actor="cancel-test", now=datetime.now(UTC))
        inserted, _ = jobs.store_rows(s, block, tenant_id=tenant.id, batch_id=batch_id)
    return batch_id, [job_id for _, job_id in inserted]


def test_no_job_of_a_batch_being_cancelled_starts() -> None:
    from app import jobs
    from workers.relay import finish_cancels

    batch_id, ids = unpublished_batch(12)
    with session_scope() as s:
        jobs.mark_cancelling(s, batch_id)
    # A worker handed its chunk now (a message already in Redis) starts none of it.
    with session_scope() as s:
        assert jobs.lock_queued(s, ids, worker="cancel-test") == ([], [])
        assert jobs.lock_queued(s, ids, worker="cancel-test", inline_ok=False) == ([], [])
    # Slices of 5, each its own transaction; the last one clears the mark.
    with session_scope() as s:
        assert jobs.cancel_batch(s, batch_id, actor="cancel-test", limit=5) == 5
    with session_scope() as s:
        assert jobs.cancelling_batches(s) == [batch_id]
    assert finish_cancels("relay-test") == 7  # a cancel that stopped half way: the relay
    with session_scope() as s:
        assert jobs.cancelling_batches(s) == []
        batch = s.get(Batch, batch_id)
        assert batch is not None and (batch.queued, batch.cancelled) == (0, 12)
