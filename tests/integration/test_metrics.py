"""/metrics answers an operator's questions, counted once per committed transition.

Jobs here run in the `low` lane (which other tests leave alone), so each counter's
change is exactly what this test did, whatever the session ran before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from app import jobs
from app.api import metrics as api_metrics
from app.broker import sums
from app.config import Settings
from app.jobs import counts, metrics
from app.store.db import session_scope
from tests.faults.stack import BABELQ, Proc, babelq_env, wait_for
from tests.integration.conftest import auth, make_key
from tests.integration.test_batches import NDJSON, ndjson, paused, wait_done
from tests.integration.test_jobs_api import EVALUATE_RISK, submit_and_wait
from tests.integration.test_webhooks import finished, receiver, register, settled  # noqa: F401
from tests.integration.test_webhooks import submit as submit_job

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(api: TestClient, admin_key: str) -> Samples:
    """Every sample of /metrics, by name and sorted labels."""
    response = api.get("/metrics", headers=auth(admin_key))
    assert response.status_code == 200, response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a sample changed between two scrapes."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def fresh_scrapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every scrape in the test reads the stores anew."""
    monkeypatch.setattr(api_metrics, "CACHE_SECONDS", 0.0)


def test_outcomes_times_and_requests_are_counted_once(
    api: TestClient, admin_key: str, key_a: str, fresh_scrapes: None,
) -> None:
    before = scrape(api, admin_key)
    for i in range(3):
        assert submit_and_wait(api, key_a, {"kind": "encode", "priority": "low",
                                            "params": {"text": f"metered {i}"}})["status"] \
            == "succeeded"
    decided = submit_and_wait(api, key_a, {"kind": "evaluate", "priority": "low",
                                           "params": EVALUATE_RISK})
    poison = submit_and_wait(api, key_a, {"kind": "test_fail", "priority": "low",
                                          "max_attempts": 2, "params": {}})
    assert poison["status"] == "dead"
    with session_scope() as session:  # stored and cancelled before any worker sees it
        job, _ = jobs.submit(session, tenant_id=1, kind="encode", params={"text": "x"},
                             actor="test", priority="low")
        assert jobs.cancel(session, job.id, actor="test")
    sums.flush()
    after = scrape(api, admin_key)

    def change(name: str, **labels: str) -> float:
        return grew(before, after, name, **labels)

    assert change("babelq_jobs_submitted_total", kind="encode", priority="low") == 4
    assert change("babelq_jobs_submitted_total", kind="evaluate", priority="low") == 1
    assert change("babelq_job_outcomes_total", kind="encode", outcome="succeeded") >= 3
    assert change("babelq_job_outcomes_total", kind="encode", outcome="cancelled") == 1
    assert change("babelq_job_outcomes_total", kind="test_fail", outcome="failed_attempt") == 1
    assert change("babelq_job_outcomes_total", kind="test_fail", outcome="dead") == 1
    assert change("babelq_job_retries_scheduled_total", kind="test_fail", cause="error") == 1
    assert change("babelq_job_run_seconds_count", kind="test_fail") == 2  # both attempts
    assert change("babelq_job_queue_wait_seconds_count", kind="encode", priority="low") == 3
    assert change("babelq_job_queue_wait_seconds_count", kind="test_fail", priority="low") == 1
    assert change("babelq_job_latency_seconds_count", kind="evaluate") >= 1
    assert change("babelq_job_latency_seconds_sum", kind="evaluate") > 0
    result = decided["result"]
    assert change("babelq_governor_decisions_total", decision=result["decision"],
                  stop_reason=result["stop_reason"] or "") >= 1
    assert change("babelq_governor_final_risk_count") >= 1
    assert change("babelq_api_requests_total", method="POST", route="/v1/jobs",
                  status="201") == 5
    assert change("babelq_api_request_duration_seconds_count", method="GET",
                  route="/v1/jobs/{job_id}") >= 5
    assert change("babelq_api_requests_total", method="GET", route="unmatched", status="404") == 0
    api.get("/no/such/page", headers=auth(admin_key))
    sums.flush()
    assert grew(after, scrape(api, admin_key), "babelq_api_requests_total", method="GET",
                route="unmatched", status="404") == 1


def test_histograms_are_cumulative_with_an_inf_bucket(
    api: TestClient, admin_key: str, key_a: str, fresh_scrapes: None,
) -> None:
    submit_and_wait(api, key_a, {"kind": "encode", "priority": "low", "params": {"text": "h"}})
    sums.flush()
    samples = scrape(api, admin_key)
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                     if name == "babelq_job_run_seconds_bucket" and ("kind", "encode") in labels)
    assert len(buckets) == len(metrics.RUN_BUCKETS) + 1 and buckets[-1][0] == float("inf")
    values = [v for _, v in buckets]
    assert values == sorted(values)
    assert values[-1] == samples[("babelq_job_run_seconds_count", (("kind", "encode"),))]


#: The lanes compared below: every job in them was stored by app.jobs (some other tests
#: insert rows by hand, which nothing counts).
def real_counts() -> dict[tuple[str, str, str], float]:
    names = {0: "high", 1: "normal", 2: "low"}
    with session_scope() as session:
        rows = session.execute(text(
            "SELECT kind, priority, status, count(*) FROM jobs "
            "WHERE (kind, priority) IN (('encode', 2), ('enumerate', 0)) GROUP BY 1, 2, 3")).all()
    return {(k, names[p], s): float(n) for k, p, s, n in rows}


def gauge(samples: Samples) -> dict[tuple[str, str, str], float]:
    lanes = {("encode", "low"), ("enumerate", "high")}
    return {(d["kind"], d["priority"], d["status"]): v for (name, labels), v in samples.items()
            if name == "babelq_jobs" for d in [dict(labels)] if v
            and (d["kind"], d["priority"]) in lanes}


def test_job_counts_match_the_jobs_table_through_every_path(
    api: TestClient, admin_key: str, key_a: str, fresh_scrapes: None,
) -> None:
    """Single jobs, a COPYed batch, claims, results, cancels, failures of this module's
    lanes: the kept counts equal a count of the table."""
    lines = [{"kind": "encode", "priority": "low", "params": {"text": f"b{i}"}}
             for i in range(40)]
    batch = api.post("/v1/batches", content=ndjson(lines), headers={**auth(key_a), **NDJSON})
    assert batch.status_code == 202, batch.text
    wait_done(api, key_a, batch.json()["id"])
    submit_and_wait(api, key_a, {"kind": "enumerate", "priority": "high",
                                 "params": {"query": "counted", "max_results": 2}})
    last: dict[str, Any] = {}

    def agree() -> bool:  # jobs of earlier tests may still be moving
        last["kept"], last["real"] = gauge(scrape(api, admin_key)), real_counts()
        return last["kept"] == last["real"]

    wait_for(f"kept counts to equal the table: {last}", agree, 30, every=0.3)
    assert sum(last["kept"].values()) >= 41


def test_backlog_and_oldest_waiting_job_per_lane(
    api: TestClient, admin_key: str, fresh_scrapes: None,
) -> None:
    """Queued jobs of a lane nobody serves: counted, and their wait grows from submission."""
    with session_scope() as session:
        # published: the relay leaves them alone (no worker serves this kind's queue)
        session.execute(text(
            "INSERT INTO jobs (tenant_id, kind, params, priority, audit_head, published_at, "
            "created_at) VALUES (1, 'unserved', '{}', 0, '', now(), now() - interval '1 hour'), "
            "(1, 'unserved', '{}', 0, '', now(), now())"))
        counts.added(session, {("unserved", 0): 2})  # as app.jobs.submit counts its inserts
    samples = scrape(api, admin_key)
    lane = (("kind", "unserved"), ("priority", "high"))
    assert samples[("babelq_queue_backlog", lane)] == 2
    assert 3600 <= samples[("babelq_queue_oldest_seconds", lane)] < 3600 + 600
    with session_scope() as session:
        session.execute(text("UPDATE jobs SET status = 'cancelled' WHERE kind = 'unserved'"))
    samples = scrape(api, admin_key)
    assert samples[("babelq_queue_backlog", lane)] == 0
    assert samples[("babelq_queue_oldest_seconds", lane)] == 0
    assert samples[("babelq_jobs", (*lane, ("status", "cancelled")))] == 2
    with session_scope() as session:
        session.execute(text("DELETE FROM jobs WHERE kind = 'unserved'"))
    assert ("babelq_jobs", (*lane, ("status", "cancelled"))) not in scrape(api, admin_key)


def test_live_workers_per_queue(api: TestClient, admin_key: str, fresh_scrapes: None) -> None:
    samples = scrape(api, admin_key)
    for queue in ("encode", "enumerate", "evaluate"):
        assert samples[("babelq_workers_live", (("queue", queue),))] >= 1


def test_counts_of_several_worker_processes_add_up(
    api: TestClient, admin_key: str, key_a: str, celery_app: Any, worker: Any,
    settings: Settings, fresh_scrapes: None,
) -> None:
    """A real prefork worker (two pool processes) runs every job: its counts reach /metrics."""
    logs = Path(tempfile.mkdtemp(prefix="bq-metrics-"))
    node = f"metered-{os.getpid()}@localhost"
    proc = Proc("worker", [BABELQ, "worker", "-Q", "enumerate", "-c", "2", "-n", node],
                logs / "worker.log", ready_line=b"ready.")
    proc.start(babelq_env(database_url=str(settings.database_url),
                          redis_url=str(settings.redis_url)))
    try:
        proc.wait_ready(90)
        before = scrape(api, admin_key)
        with paused(celery_app, worker, "enumerate"):
            ids = [api.post("/v1/jobs", headers=auth(key_a), json={
                "kind": "enumerate", "priority": "low",
                "params": {"query": f"processes {i}", "max_results": 2}}).json()["id"]
                for i in range(12)]
            for job_id in ids:
                assert _wait(api, key_a, job_id)["status"] == "succeeded"
        with session_scope() as session:
            ran_by = set(session.execute(text("SELECT DISTINCT worker FROM jobs WHERE id = "
                                              "ANY(:ids)"), {"ids": ids}).scalars())
        assert ran_by == {node}
        last: dict[str, Samples] = {}

        def counted() -> bool:  # each pool process flushes within a second
            last["after"] = scrape(api, admin_key)
            return grew(before, last["after"], "babelq_job_outcomes_total",
                        kind="enumerate", outcome="succeeded") >= len(ids)

        wait_for("the worker processes' counts", counted, 20, every=0.5)
        after = last["after"]
        assert grew(before, after, "babelq_job_outcomes_total", kind="enumerate",
                    outcome="succeeded") == len(ids)
        assert grew(before, after, "babelq_job_run_seconds_count", kind="enumerate") == len(ids)
        assert grew(before, after, "babelq_job_queue_wait_seconds_count", kind="enumerate",
                    priority="low") == len(ids)
        assert after[("babelq_workers_live", (("queue", "enumerate"),))] >= 2  # both nodes
    finally:
        proc.stop()
        shutil.rmtree(logs, ignore_errors=True)


def _wait(api: TestClient, key: str, job_id: int) -> dict[str, Any]:
    for _ in range(30):
        job = api.get(f"/v1/jobs/{job_id}", params={"wait": 10}, headers=auth(key)).json()
        if job["status"] in ("succeeded", "dead", "cancelled"):
            return dict(job)
    raise AssertionError(f"job {job_id} did not finish")


def test_webhook_delivery_attempts_are_counted(
    api: TestClient, admin_key: str, receiver: Any, fresh_scrapes: None,  # noqa: F811
) -> None:
    """A receiver that fails once: one failed attempt, then one delivery, of job.succeeded."""
    key = make_key("hooks-metered")
    hook = register(api, key, receiver.url("/metered"), ["job.succeeded"])
    receiver.listen("/metered", hook["secret"], answer=lambda n: 500 if n <= 1 else 200)
    before = scrape(api, admin_key)
    finished(api, key, submit_job(api, key)["id"])
    wait_for("the delivery", lambda: settled(api, key, hook["id"]), 30)
    sums.flush()
    after = scrape(api, admin_key)
    for outcome in ("failed_attempt", "delivered"):
        assert grew(before, after, "babelq_webhook_deliveries_total", event="job.succeeded",
                    outcome=outcome) == 1
