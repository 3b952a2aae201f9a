"""/docs and /redoc work without internet: their HTML names nothing outside the app, and a
real headless chromium, cut off from every host but the api's, renders the operations."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.ops.supervisor import free_port
from tests.faults.stack import BABELQ, Proc, babelq_env, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Attributes through which a page makes the browser fetch something.
FETCHED = re.compile(r"""(?:src|href|spec-url|url)\s*[:=]\s*['"]([^'"]+)['"]""")


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_html_names_no_url_outside_the_app(api: TestClient, path: str) -> None:
    html = api.get(path).text
    assert not re.findall(r"(?:https?:)?//[\w.-]+", html.replace("<!--", "").replace("-->", ""))
    fetched = FETCHED.findall(html)
    assert any(url.endswith(".js") for url in fetched), fetched
    for url in fetched:
        assert url.startswith("/"), f"{path} loads {url} from elsewhere"
        assert api.get(url).status_code == 200, f"{path} loads {url}, which the app lacks"


@pytest.fixture(scope="module")
def api_server(settings: Settings) -> Iterator[str]:
    """`babelq api` on a free port: the real server a browser talks to."""
    logs = Path(tempfile.mkdtemp(prefix="bq-docs-"))
    port = free_port()
    proc = Proc("api", [BABELQ, "api", "--port", str(port)], logs / "api.log")
    proc.start(babelq_env(database_url=str(settings.database_url),
                          redis_url=str(settings.redis_url)))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.alive, proc.tail()
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("the api to answer", up, 60, every=0.2)
        yield url
    finally:
        proc.stop()
        shutil.rmtree(logs, ignore_errors=True)


def rendered(url: str) -> str:
    """The DOM headless chromium built for url, with every other host unreachable."""
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it: apt-get install "
                    "chromium)")
    profile = tempfile.mkdtemp(prefix="bq-chromium-")
    try:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}",
             # Any host but the api's fails to resolve: an offline machine.
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--virtual-time-budget=20000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_swagger_page_lists_the_operations_in_a_real_browser(api_server: str) -> None:
    dom = rendered(f"{api_server}/docs")
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/batches", "/metrics"} <= paths, paths
    assert "Read Job" in dom or "read_job" in dom or "/v1/jobs/{job_id}" in dom


def test_redoc_page_renders_in_a_real_browser(api_server: str) -> None:
    dom = rendered(f"{api_server}/redoc")
    assert "/v1/jobs/{job_id}" in dom and "Babel Queue" in dom
