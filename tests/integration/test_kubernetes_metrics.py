"""The metric KEDA scales the workers on is one the api really exports, with its labels."""

from __future__ import annotations

import re
import time

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import auth
from tests.kubernetes_manifests import all_builds, of_kind, trigger_metrics


def _selected_labels() -> set[str]:
    """Label names the triggers' queries select on (kind, status)."""
    return {label for resources in all_builds().values()
            for scaled in of_kind(resources, "ScaledObject").values()
            for trigger in scaled["spec"]["triggers"]
            for label in re.findall(r"(\w+)\s*=~?\s*\"", trigger["metadata"]["query"])}


def _scrape(api: TestClient, admin_key: str) -> dict[str, list[dict[str, str]]]:
    """Metric name -> the label sets of its samples, from GET /metrics."""
    r = api.get("/metrics", headers=auth(admin_key))
    assert r.status_code == 200, r.text
    return {f.name: [s.labels for s in f.samples] for f in text_string_to_metric_families(r.text)}


def test_keda_trigger_metrics_are_exported(api: TestClient, admin_key: str) -> None:
    r = api.post("/v1/jobs", headers=auth(admin_key),
                 json={"kind": "encode", "params": {"text": "scale me"}})
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 30  # the collector caches a scrape for 5 s
    exported = _scrape(api, admin_key)
    while not exported.get("babelq_jobs") and time.monotonic() < deadline:
        time.sleep(1)
        exported = _scrape(api, admin_key)
    for name in trigger_metrics():
        assert exported.get(name), f"{name} is not exported by /metrics"
        for labels in exported[name]:
            assert _selected_labels() <= set(labels), f"{name} lacks labels: {labels}"
    kinds = {labels["kind"] for labels in exported["babelq_jobs"]}
    assert "encode" in kinds
