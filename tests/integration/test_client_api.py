"""app.client.Client against the real api (uvicorn in its own process, keep-alive cut to
1 s): errors, long-polls, a connection the api closed, threads, over the lean transport."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.client import BabelqError, Client
from app.config import Settings
from app.ops.supervisor import free_port, stop_process
from tests.integration.conftest import make_key

pytestmark = pytest.mark.integration

#: Seconds uvicorn keeps an idle connection open (its default is 5).
KEEP_ALIVE = 1
#: Seconds the jobs here wait before they are due: none runs, whatever else the suite
#: has running (its relay sends a stored job's message again after requeue_after).
HELD = 3600


@pytest.fixture(scope="module")
def api_url(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`uvicorn app.api.main:create_app` on a free port, with a Redis database of its own."""
    base, _, db = str(settings.redis_url).rpartition("/")
    private = f"{base}/{(int(db) + 2) % 16 if db.isdigit() else 2}"
    with redis.Redis.from_url(private) as r:
        r.flushdb()
    port, log = free_port(), tmp_path_factory.mktemp("client-api") / "api.log"
    env = {**os.environ, "BABELQ_REDIS_URL": private}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.api.main:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
             "--timeout-keep-alive", str(KEEP_ALIVE)], env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield url
    finally:
        stop_process(process)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the api exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the api was not ready within 60 s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def key(settings: Settings) -> str:
    return make_key("client-lean")


@pytest.fixture
def bq(api_url: str, key: str) -> Iterator[Client]:
    with Client(api_url, key, timeout=5) as client:
        assert client._lean is not None  # the transport under test, not httpx
        yield client


def raised(call: Callable[[], Any]) -> tuple[int, str, str, Any]:
    with pytest.raises(BabelqError) as caught:
        call()
    e = caught.value
    return e.status, e.code, e.message, e.details


def test_api_errors_keep_status_code_message_and_details(bq: Client, api_url: str,
                                                         key: str) -> None:
    """Each as BabelqError.from_response makes it of the same answer through httpx."""
    headers = {"Authorization": f"Bearer {key}"}

    def via_httpx(method: str, path: str, **kwargs: Any) -> tuple[int, str, str, Any]:
        e = BabelqError.from_response(
            httpx.request(method, f"{api_url}{path}", headers=headers, **kwargs))
        return e.status, e.code, e.message, e.details

    missing = raised(lambda: bq.get(2**40))
    assert missing[:2] == (404, "not_found")
    assert missing == via_httpx("GET", f"/v1/jobs/{2**40}")

    invalid = raised(lambda: bq.submit("encode", {"text": 5}))
    assert invalid[:2] == (422, "invalid") and invalid[3]
    assert invalid == via_httpx("POST", "/v1/jobs", json={"kind": "encode", "params": {"text": 5}})

    job = bq.submit("encode", {"text": "cancelled twice"}, delay=HELD)
    bq.cancel(job["id"])
    conflict = raised(lambda: bq.cancel(job["id"]))
    assert conflict[0] == 409
    assert conflict == via_httpx("POST", f"/v1/jobs/{job['id']}/cancel")

    with Client(api_url, "not-a-key") as stranger:
        unauthorized = raised(lambda: stranger.get(job["id"]))
    assert unauthorized[:2] == (401, "unauthorized")


def test_a_connection_the_api_closed_when_idle_is_replaced(bq: Client) -> None:
    """uvicorn closes a connection idle past its keep-alive; the next submit (a POST,
    never sent twice) must not go out on it."""
    first = bq.submit("encode", {"text": "before idle"}, delay=HELD)
    time.sleep(KEEP_ALIVE + 0.5)
    second = bq.submit("encode", {"text": "after idle"}, delay=HELD)
    time.sleep(KEEP_ALIVE + 0.5)
    assert bq.get(second["id"])["status"] == "queued"
    time.sleep(KEEP_ALIVE + 0.5)
    for job in (first, second):
        assert bq.cancel(job["id"])["status"] == "cancelled"


def test_long_polls_outlast_the_timeout(api_url: str, key: str) -> None:
    """A long-poll's read may take its wait on top of the client's timeout."""
    with Client(api_url, key, timeout=1.0) as bq:
        started = time.monotonic()
        job = bq.submit("encode", {"text": "nobody runs it"}, delay=HELD, wait=1.5)
        assert job["status"] == "queued" and time.monotonic() - started >= 1.5
        started = time.monotonic()
        assert bq.get(job["id"], wait=1.5)["status"] == "queued"
        assert time.monotonic() - started >= 1.5
        assert bq.wait(job["id"], timeout=1.2)["status"] == "queued"
        bq.cancel(job["id"])


def test_threads_share_one_client(bq: Client) -> None:
    jobs = [bq.submit("encode", {"text": f"thread {i}"}, delay=HELD) for i in range(8)]

    def read(job: dict[str, Any]) -> list[int]:
        return [bq.get(job["id"])["id"] for _ in range(5)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(read, jobs)) == [[j["id"]] * 5 for j in jobs]
    listed = [j["id"] for j in bq.list_jobs(page_size=3, status="queued")]
    assert set(listed) >= {j["id"] for j in jobs} and len(listed) == len(set(listed))
    for job in jobs:
        bq.cancel(job["id"])
