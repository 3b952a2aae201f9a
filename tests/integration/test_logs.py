"""Structured logs: job lines carry the job's fields; BABELQ_LOG_FORMAT=json gives JSON lines."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.observe.logs import JOB_FIELDS, ConsoleFormatter, JsonFormatter
from app.ops.supervisor import free_port
from tests.faults.stack import BABELQ, Proc, babelq_env, wait_for
from tests.integration.conftest import auth
from tests.integration.test_jobs_api import submit_and_wait

pytestmark = pytest.mark.integration


@pytest.mark.usefixtures("worker", "relay")
def test_every_line_about_a_job_names_it(
    api: TestClient, key_a: str, caplog: pytest.LogCaptureFixture,
) -> None:
    tenant = api.get("/v1/jobs", headers=auth(key_a))  # any request: the key's tenant exists
    assert tenant.status_code == 200
    with caplog.at_level(logging.INFO):
        job = submit_and_wait(api, key_a, {"kind": "test_fail", "max_attempts": 2,
                                           "params": {"message": "secret-param"}})
    assert job["status"] == "dead"
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records
             if getattr(r, "job_id", None) == job["id"]]
    assert [(line["level"], line["attempt"]) for line in lines] == [("warning", 1), ("error", 2)]
    for line in lines:
        assert set(JOB_FIELDS) <= set(line)
        assert line["kind"] == "test_fail" and line["batch_id"] is None
        assert isinstance(line["tenant"], int)
        assert "secret-param" not in json.dumps(line)  # params never reach a log
    console = ConsoleFormatter().format(next(r for r in caplog.records
                                             if getattr(r, "job_id", None) == job["id"]))
    assert f"job_id={job['id']}" in console and "kind=test_fail" in console


def json_lines_of(settings: Settings, name: str, args: list[str], path: str, seen: str,
                  **env: str) -> list[dict[str, object]]:
    """Run `babelq NAME ARGS --port P` with BABELQ_LOG_FORMAT=json until `path` answers 200
    and its log holds `seen`; every line it wrote, each parsed as a JSON object."""
    logs = Path(tempfile.mkdtemp(prefix="bq-logs-"))
    port = free_port()
    proc = Proc(name, [BABELQ, name, *args, "--port", str(port)], logs / f"{name}.log")
    proc.start(babelq_env(database_url=str(settings.database_url),
                          redis_url=str(settings.redis_url), log_format="json", **env))

    def answers() -> bool:
        assert proc.alive, proc.tail()
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(f"{name} to answer", answers, 60, every=0.2)
        wait_for(f"{seen!r} in its log", lambda: seen in proc.log.read_text(), 10)
    finally:
        proc.stop()
    text = proc.log.read_text()
    shutil.rmtree(logs, ignore_errors=True)
    lines = [json.loads(line) for line in text.splitlines()
             if line.strip() and not line.startswith("===")]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    return lines


def test_api_writes_json_lines(settings: Settings) -> None:
    """`babelq api` with BABELQ_LOG_FORMAT=json: uvicorn's own lines and access log too."""
    lines = json_lines_of(settings, "api", [], "/health", "/health")
    access = [line for line in lines if line["logger"] == "babelq.access"]
    assert any(a["path"] == "/health" and a["status"] == 200 and a["method"] == "GET"
               and float(str(a["duration_ms"])) >= 0
               for a in access), access


def test_flower_writes_json_lines(settings: Settings) -> None:
    """`babelq flower` with BABELQ_LOG_FORMAT=json: Flower's and tornado's lines too."""
    lines = json_lines_of(settings, "flower", [], "/healthcheck", "flower",
                          flower_user="ops", flower_password="a-long-flower-password")
    assert any(str(line["logger"]).startswith("flower") for line in lines), lines
