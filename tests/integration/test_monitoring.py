"""deploy/prometheus and deploy/grafana against a real scrape of /metrics.

promtool (Debian's `prometheus` package) checks the config, the rules and the scrape
itself; every metric a rule or a dashboard query names must be in that scrape.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.broker import sums
from tests.integration.conftest import auth
from tests.integration.test_jobs_api import EVALUATE_RISK, submit_and_wait

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")
#: Series Prometheus makes itself, not the app.
SYNTHETIC = {"up"}
#: A metric name as PromQL reads one: followed by a selector, a range or a closing paren.
NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=[{\[)]|$|\s*[/><=!]|\s+(?:and|or)\b)")
FUNCTIONS = {"sum", "max", "min", "rate", "increase", "deriv", "histogram_quantile", "clamp_min",
             "by", "and", "or", "without", "avg", "count"}


@pytest.fixture(scope="module")
def scrape(api: TestClient, admin_key: str, key_a: str) -> str:
    """/metrics after one job of each kind ran, as Prometheus would read it."""
    for body in ({"kind": "encode", "params": {"text": "scraped"}},
                 {"kind": "enumerate", "params": {"query": "scraped", "max_results": 2}},
                 {"kind": "evaluate", "params": EVALUATE_RISK}):
        assert submit_and_wait(api, key_a, body)["status"] == "succeeded"
    sums.flush()
    response = api.get("/metrics", headers=auth(admin_key))
    assert response.status_code == 200
    return response.text


def sample_names(scrape: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(scrape) for s in f.samples}


def named_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords and labels left out)."""
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\$__\w+|\[[^\]]*\]", "[]", expr)  # ranges
    return {m for m in NAME.findall(expr) if m not in FUNCTIONS and not m[0].isdigit()}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus package)")
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def rule_exprs() -> list[str]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "babelq.json").read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_promtool_accepts_the_config_and_rules() -> None:
    done = promtool("check", "config", "--syntax-only",
                    str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    done = promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 rules found" in done.stdout


def test_promtool_accepts_a_real_scrape(scrape: str) -> None:
    done = promtool("check", "metrics", stdin=scrape)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_a_rule_names_is_in_the_scrape(scrape: str) -> None:
    exported = sample_names(scrape) | SYNTHETIC
    named = set().union(*map(named_metrics, rule_exprs()))
    assert {"babelq_queue_backlog", "babelq_lease_expiries_total", "babelq_workers_live"} <= named
    assert named <= exported, f"rules name metrics /metrics lacks: {named - exported}"


def test_every_dashboard_query_names_only_exported_metrics(scrape: str) -> None:
    exported = sample_names(scrape)
    named = set().union(*map(named_metrics, dashboard_exprs()))
    assert len(named) >= 15
    assert named <= exported, f"the dashboard queries metrics /metrics lacks: {named - exported}"
