"""Hostile and careless producers: no single request takes the api down.

Each case runs against `babelq api` in a subprocess (one for the module), and holds the
api's peak memory growth over the request under MEMORY_BOUND: the kernel's high-water mark
(VmHWM) is reset before the request, so the peak counts, not what was freed after it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.config import Settings
from app.jobs.keys import create_key
from app.ops.supervisor import free_port, stop_process
from app.store.db import get_engine, session_scope
from tests.faults.stack import sql_count, wait_for

pytestmark = pytest.mark.integration

#: Most a single request may grow the api's resident memory by, in MiB.
MEMORY_BOUND = 100
#: How the api's database sessions are named, to find them in pg_stat_activity.
APP_NAME = "babelq-hostile-api"
#: The api's settings here: a pool of two connections, quick to give up, and 5 s per block.
SERVER_ENV = {"BABELQ_DB_POOL_SIZE": "2", "BABELQ_DB_MAX_OVERFLOW": "0",
              "BABELQ_DB_POOL_TIMEOUT": "1", "BABELQ_BODY_TIMEOUT": "5", "PGAPPNAME": APP_NAME}
NDJSON = {"Content-Type": "application/x-ndjson"}


@dataclass
class Api:
    """The api subprocess: where it listens, its pid, a key of a tenant of this module."""

    url: str
    port: int
    pid: int
    key: str
    log: Path

    def client(self) -> httpx.Client:
        """An HTTP client with the key."""
        return httpx.Client(base_url=self.url, timeout=120,
                            headers={"Authorization": f"Bearer {self.key}"})


@pytest.fixture(scope="module")
def hostile_api(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`babelq api` on a free port, with SERVER_ENV."""
    with session_scope() as s:
        _, key = create_key(s, tenant=f"hostile-{secrets.token_hex(4)}")
    port, log = free_port(), tmp_path_factory.mktemp("hostile") / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port), "--log-level",
             "warning"], env={**os.environ, **SERVER_ENV}, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("the api to serve", lambda: _serving(url, process, log), 60, 0.2)
        yield Api(url, port, process.pid, key, log)
    finally:
        stop_process(process)


def _serving(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    assert process.poll() is None, log.read_text()
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def peak_growth(api: Api, request: Callable[[], Any]) -> tuple[Any, float]:
    """request()'s answer, and how far (MiB) the api's peak RSS rose above its RSS before."""
    Path(f"/proc/{api.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kb(api.pid, "VmRSS")
    answer = request()
    return answer, (_status_kb(api.pid, "VmHWM") - before) / 1024


def cancel(client: httpx.Client, batch_id: int) -> None:
    """Cancel what is left of a test batch: the session's worker need not run it."""
    assert client.post(f"/v1/batches/{batch_id}/cancel").status_code == 200


# --- memory --------------------------------------------------------------------------


def test_a_json_batch_over_its_limit_is_413_naming_it(hostile_api: Api) -> None:
    with hostile_api.client() as client:
        r = client.post("/v1/batches", content=b'{"jobs": [' + b" " * 10_485_760 + b"]}",
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "exceeds 10485760 bytes" in r.text and "NDJSON" in r.text


def test_a_json_batch_of_empty_lists_is_refused_in_bounded_memory(hostile_api: Api) -> None:
    # 2 MiB of [] items: 700,000 "lines" (it once grew the api by 2.9 GB).
    body = b'{"jobs": [' + b",".join([b"[]"] * 700_000) + b"]}"
    with hostile_api.client() as client:
        r, grew = peak_growth(hostile_api, lambda: client.post(
            "/v1/batches", content=body, headers={"Content-Type": "application/json"}))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["rejected"] == 700_000
    assert grew < MEMORY_BOUND, f"api grew by {grew:.0f} MiB"


def test_a_big_json_batch_is_taken_in_bounded_memory(hostile_api: Api) -> None:
    jobs = [{"kind": "encode", "params": {"text": f"json batch line {i}"}} for i in range(60_000)]
    body = json.dumps({"jobs": jobs}).encode()
    with hostile_api.client() as client:
        r, grew = peak_growth(hostile_api, lambda: client.post(
            "/v1/batches", content=body, headers={"Content-Type": "application/json"}))
        assert r.status_code == 202, r.text
        cancel(client, r.json()["id"])
    assert (r.json()["accepted"], r.json()["rejected"]) == (60_000, 0)
    assert grew < MEMORY_BOUND, f"api grew by {grew:.0f} MiB"


def long_line(i: int) -> bytes:
    """A valid evaluate job of about 240 KB (6 cycles of two 20,000-character texts)."""
    text_ = f"w{i} " * 5000
    side = {"text": text_[:20_000], "confidence": 0.5}
    return json.dumps({"kind": "evaluate", "params": {
        "cycles": [{"left": side, "right": side}] * 6}}).encode() + b"\n"


def test_long_ndjson_lines_are_taken_in_bounded_memory(hostile_api: Api) -> None:
    body = b"".join(long_line(i) for i in range(280))  # 64 MiB: blocks bound bytes too
    with hostile_api.client() as client:
        r, grew = peak_growth(hostile_api, lambda: client.post("/v1/batches", content=body,
                                                               headers=NDJSON))
        assert r.status_code == 202, r.text
        cancel(client, r.json()["id"])
    assert (r.json()["accepted"], r.json()["rejected"]) == (280, 0)
    assert grew < MEMORY_BOUND, f"api grew by {grew:.0f} MiB"


def test_a_results_page_streams_in_bounded_memory(hostile_api: Api) -> None:
    lines = b"".join(b'{"kind": "encode", "params": {"text": "page %d"}}\n' % i
                     for i in range(10_000))
    with hostile_api.client() as client:
        made = client.post("/v1/batches", content=lines, headers=NDJSON).json()
        cancel(client, made["id"])
        with session_scope() as s:  # results of 9.6 KB for the jobs the cancel caught
            s.execute(text(
                "INSERT INTO results (job_id, result, result_sha256) SELECT id, "
                "jsonb_build_object('pad', repeat(md5(id::text), 300)), '' FROM jobs "
                "WHERE batch_id = :b AND status = 'cancelled'"), {"b": made["id"]})
            padded = s.execute(text(
                "SELECT min(line) FROM jobs WHERE batch_id = :b AND status = 'cancelled'"),
                {"b": made["id"]}).scalar_one()

        def read_page() -> int:
            with client.stream("GET", f"/v1/batches/{made['id']}/results",
                               params={"limit": 100_000}) as r:
                assert r.status_code == 200 and "x-next-cursor" not in r.headers
                return sum(1 for _ in r.iter_lines())

        count, grew = peak_growth(hostile_api, read_page)
        first = client.get(f"/v1/batches/{made['id']}/results", params={"limit": 2})
        last = client.get(f"/v1/batches/{made['id']}/results", params={"cursor": 9_998})
        # A job the cancel caught, wherever it sits (fair dispatch may have run the first ones).
        big = client.get(f"/v1/batches/{made['id']}/results",
                         params={"cursor": padded - 1, "limit": 1})
    assert count == 10_000
    assert grew < MEMORY_BOUND, f"api grew by {grew:.0f} MiB"
    assert first.headers["x-next-cursor"] == "2" and "x-next-cursor" not in last.headers
    page = [json.loads(line) for line in (first.text + last.text).splitlines()]
    assert [p["line"] for p in page] == [1, 2, 9_999, 10_000]
    assert len(json.loads(big.text)["result"]["pad"]) == 9600


def test_a_big_batch_is_cancelled_in_bounded_memory(hostile_api: Api) -> None:
    lines = b"".join(b'{"kind": "encode", "params": {"text": "cancel %d"}}\n' % i
                     for i in range(100_000))
    with hostile_api.client() as client:
        made = client.post("/v1/batches", content=lines, headers=NDJSON).json()
        r, grew = peak_growth(hostile_api, lambda: client.post(
            f"/v1/batches/{made['id']}/cancel"))
    assert r.status_code == 200, r.text
    counts = r.json()["counts"]
    assert counts["queued"] == counts["running"] == 0
    assert sum(counts.values()) == 100_000 and counts["cancelled"] > 90_000
    assert grew < MEMORY_BOUND, f"api grew by {grew:.0f} MiB"


# --- slow clients --------------------------------------------------------------------


def open_transactions() -> int:
    """The api's sessions that sit idle inside a transaction."""
    return sql_count(get_engine(), "SELECT count(*) FROM pg_stat_activity WHERE "
                                   "application_name = :a AND state = 'idle in transaction'",
                     a=APP_NAME)


def start_upload(api: Api, first: bytes) -> socket.socket:
    """An NDJSON upload that sends its head and `first`, then nothing more."""
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    sock.sendall(f"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key}\r\n"
                 f"Content-Type: application/x-ndjson\r\nContent-Length: 100000000\r\n\r\n"
                 .encode() + first)
    return sock


def answer(sock: socket.socket) -> bytes:
    """What the server answered, up to the end of its JSON body."""
    got = b""
    while not got.rstrip().endswith(b"}"):
        part = sock.recv(65536)
        if not part:
            break
        got += part
    sock.close()
    return got


def test_a_trickling_upload_holds_no_transaction_and_times_out(hostile_api: Api) -> None:
    # A request before may still be closing its session (after its answer was sent).
    wait_for("the api's earlier sessions to end", lambda: open_transactions() == 0, 10, 0.05)
    sock = start_upload(hostile_api, b'{"kind": "encode", "params": {"text": "slow"}}\n')
    done: list[bytes] = []
    reader = threading.Thread(target=lambda: done.append(answer(sock)))
    reader.start()
    while not done:  # until the api gives up on it, it holds no transaction
        assert open_transactions() == 0
        time.sleep(0.1)
    reader.join()
    assert done[0].startswith(b"HTTP/1.1 408"), done[0]
    assert b"within 5 s" in done[0]


def feed(sock: socket.socket, block: bytes, stop: threading.Event) -> None:
    """Send block every second until stop is set (never more than 60 s)."""
    for _ in range(60):
        if stop.wait(1):
            return
        sock.sendall(block)


def test_an_exhausted_pool_is_503_with_retry_after(hostile_api: Api) -> None:
    # An upload that sends a block (5,000 lines) a second: it holds its transaction (one
    # of the api's two connections) for as long as it goes on.
    block = b'{"kind": "encode", "params": {"text": "held"}}\n' * 5000
    held = start_upload(hostile_api, block)
    refused_yet = threading.Event()
    feeder = threading.Thread(target=feed, args=(held, block, refused_yet))
    feeder.start()
    wait_for("the upload to hold a transaction", lambda: open_transactions() == 1, 30, 0.05)
    # A second one takes the other connection, and its block waits for a third in vain.
    second = start_upload(hostile_api, block)
    refused = answer(second)
    refused_yet.set()  # the first upload now falls silent, and times out
    feeder.join()
    assert refused.startswith(b"HTTP/1.1 503"), refused
    assert b"retry-after: 2" in refused.lower()
    assert answer(held).startswith(b"HTTP/1.1 408")
    with hostile_api.client() as client:  # and the api serves again
        assert client.get("/v1/jobs", params={"limit": 1}).status_code == 200
