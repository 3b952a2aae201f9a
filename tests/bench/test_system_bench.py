"""The system benchmark runs the real stack and counts right; timings are never asserted."""

from __future__ import annotations

import json

import pytest

from app.ops.bench.cli import main, run_memory_check

pytestmark = pytest.mark.bench


def test_small_run_finishes_every_job_of_both_systems(
    pg_admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """2,000 jobs through our stack and 300 through the naive baseline, all succeeded."""
    # Redis stays embedded and private: a shared one may have other workers on our queues.
    code = main(["-n", "2000", "--naive-n", "300", "--latency-samples", "10", "--json",
                 "--database-url", pg_admin_url])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    e2e = report["end_to_end"]
    assert report["ingestion"]["jobs"] == 2000
    assert (e2e["jobs"], e2e["succeeded"], e2e["results"]) == (2000, 2000, 2000)
    assert report["naive"]["succeeded"] == 300
    assert report["latency_ms"]["samples"] == 10
    assert report["naive_latency_ms"]["samples"] == 10
    assert report["ratios"]["latency_p50"] > 0
    assert report["ratios"]["ingestion"] > 0 and report["ratios"]["end_to_end"] > 0
    assert report["memory_mb"]["api_peak"] > 0 and report["memory_mb"]["worker_peak"] > 0
    redis_mb = report["memory_mb"]["redis_peak_over_batch"]
    assert 0 < report["memory_mb"]["redis_before_upload"] <= redis_mb
    assert report["checkpointed"] is True  # the admin URL may run CHECKPOINT


def test_memory_check_ingests_every_line(pg_admin_url: str) -> None:
    """The memory check uploads all its lines and measures the api."""
    report = run_memory_check(lines=5000, as_json=True, database_url=pg_admin_url)
    assert report["ingestion"]["jobs"] == 5000
    assert report["api_peak_mb"] > 0


def test_latency_only_measures_ours_beside_a_bare_celery_task(
    pg_admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--latency-only: as many samples of each system, the ratio and our stages."""
    code = main(["--latency-only", "--latency-samples", "5", "--json",
                 "--database-url", pg_admin_url])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["latency_ms"]["samples"] == report["naive_latency_ms"]["samples"] == 5
    assert report["latency_ms"]["one_request"]["samples"] == 5  # POST ?wait, in turn
    assert report["ratios"]["latency_p50"] > 0
    assert set(report["latency_ms"]["median_stages"]) == {
        "submit_to_created", "created_to_started", "started_to_finished", "finished_to_seen"}
    assert {t["metric"] for t in report["targets"]} == {"ratios.latency_p50", "latency_ms.p99"}
