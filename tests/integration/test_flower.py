"""Flower, every page, fetched as a browser does: basic auth, the HTML, then its assets.

Flower and a worker run as real `babelq flower` / `babelq worker` processes on a Redis
of this module alone, so the queue lengths the Broker page shows are exactly the
messages this test left there (the session's worker, if running, consumes elsewhere).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import redis

from app.broker.celery_app import chunk_message
from app.broker.queues import queue_keys
from app.config import Settings
from app.ops.embedded import EmbeddedRedis, start_redis
from app.ops.supervisor import free_port
from tests.faults.stack import BABELQ, Proc, babelq_env, wait_for

#: Messages left in each queue before any worker runs: (normal lane, high lane).
WAITING = {"encode": (2, 1), "enumerate": (2, 0), "evaluate": (1, 0)}
#: Job ids no database holds: the worker runs these chunks as no-ops.
NO_JOB = 10**15
WORKER = "flowertest@localhost"


@dataclass
class FlowerSite:
    """A running Flower: where it is, its login, and the Redis it watches."""

    url: str
    login: tuple[str, str]
    redis_url: str
    env: dict[str, str]
    logs: Path


class Assets(HTMLParser):
    """The same-origin scripts and stylesheets a browser would load for a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        url = {"script": values.get("src"), "link": values.get("href")}.get(tag)
        if url and url.startswith("/"):
            self.urls.append(url)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[EmbeddedRedis]:
    """A Redis no other test consumes from."""
    base = Path(tempfile.mkdtemp(prefix="bq-flower-"))
    server = start_redis(base)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def flower(settings: Settings, private_redis: EmbeddedRedis) -> Iterator[FlowerSite]:
    """`babelq flower` on a free port, as `babelq up` and compose start it."""
    logs = Path(tempfile.mkdtemp(prefix="bq-flower-logs-"))
    port = free_port()
    env = babelq_env(database_url=str(settings.database_url), redis_url=private_redis.url,
                     flower_user=str(settings.flower_user),
                     flower_password=str(settings.flower_password))
    proc = Proc("flower", [BABELQ, "flower", "--port", str(port)], logs / "flower.log")
    proc.start(env)
    site = FlowerSite(f"http://127.0.0.1:{port}",
                      (str(settings.flower_user), str(settings.flower_password)),
                      private_redis.url, env, logs)
    try:
        wait_for("Flower to answer", lambda: _answers(site, proc), 60, every=0.3)
        yield site
    finally:
        proc.stop()
        shutil.rmtree(logs, ignore_errors=True)


def _answers(site: FlowerSite, proc: Proc) -> bool:
    assert proc.alive, proc.tail()
    try:
        return httpx.get(f"{site.url}/", auth=site.login, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def page(site: FlowerSite, path: str) -> str:
    """A page as a browser gets it: HTML with basic auth, then every same-origin asset."""
    with httpx.Client(base_url=site.url, auth=site.login, timeout=20,
                      headers={"Accept": "text/html"}) as client:
        response = client.get(path)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
        parser = Assets()
        parser.feed(response.text)
        for url in parser.urls:
            assert client.get(url).status_code == 200, f"{path} loads {url}, which fails"
    return response.text


def queue_rows(html: str) -> dict[str, int]:
    """Queue name -> messages, from the Broker page's table."""
    rows = re.findall(r'<tr id="([^"]+)">\s*<td>\1</td>\s*<td[^>]*>\s*(\d+)', html)
    return {name: int(count) for name, count in rows}


def test_every_flower_page_works(flower: FlowerSite) -> None:
    assert httpx.get(f"{flower.url}/broker", timeout=5).status_code == 401
    client = redis.Redis.from_url(flower.redis_url)
    for queue, (normal, high) in WAITING.items():
        keys = queue_keys(queue)
        for lane, count in ((1, normal), (0, high)):
            for i in range(count):
                client.lpush(keys[lane], chunk_message([NO_JOB + i], lane, queue))
    assert queue_rows(page(flower, "/broker")) == {q: n + h for q, (n, h) in WAITING.items()}

    worker = Proc("worker", [BABELQ, "worker", "--pool", "threads", "-c", "1", "-n", WORKER],
                  flower.logs / "worker.log")
    worker.start(flower.env)
    try:
        tasks = _wait_for_tasks(flower, sum(n + h for n, h in WAITING.values()), worker)
        assert queue_rows(page(flower, "/broker")) == dict.fromkeys(WAITING, 0)
        for path in ("/", "/workers"):
            assert WORKER in page(flower, path), f"{path} does not list the worker"
        assert "encode" in page(flower, f"/worker/{WORKER}")  # its active queues
        assert 'id="tasks-table"' in page(flower, "/tasks")  # rows come from the datatable
        listed = _datatable(flower)
        assert set(tasks) <= listed
        detail = page(flower, f"/task/{tasks[0]}")
        assert "babelq.run_chunk" in detail and str(NO_JOB) in detail and "SUCCESS" in detail
    finally:
        worker.stop()


def _wait_for_tasks(flower: FlowerSite, count: int, worker: Proc) -> list[str]:
    """Task ids Flower saw succeed, once it saw them all."""
    done: list[str] = []

    def seen() -> bool:
        assert worker.alive, worker.tail()
        tasks = httpx.get(f"{flower.url}/api/tasks", auth=flower.login, timeout=10).json()
        done[:] = [tid for tid, t in tasks.items() if t.get("state") == "SUCCESS"]
        return len(done) >= count

    wait_for("Flower to see every chunk succeed", seen, 90, every=0.5)
    return done


def _datatable(flower: FlowerSite) -> set[str]:
    """Task ids in the Tasks page's table, fetched as its DataTables script does."""
    params = {"draw": "1", "start": "0", "length": "50", "search[value]": "",
              "order[0][column]": "0", "order[0][dir]": "desc", "columns[0][data]": "name"}
    response = httpx.get(f"{flower.url}/tasks/datatable", params=params, auth=flower.login,
                         timeout=20, headers={"X-Requested-With": "XMLHttpRequest"})
    assert response.status_code == 200, response.text[:300]
    return {row["uuid"] for row in response.json()["data"]}
