"""PostgreSQL restarts mid-batch: the api says 503 and stores nothing, everyone reconnects."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import Engine

from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.stack import Stack, encode_lines, sql_count, submit_batch, wait_progress

pytestmark = pytest.mark.faults

BATCH = 5000


def test_postgres_restart_mid_batch(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    pids = {name: p.popen.pid for name, p in stack.procs.items() if p.popen}
    submit_batch(client, encode_lines(BATCH, "pg-restart"))
    wait_progress(engine, since, BATCH // 10)
    injected = time.monotonic()
    stack.servers.stop_postgres()

    refused = []
    for i in range(5):
        r = client.post("/v1/jobs", json={"kind": "encode", "params": {"text": f"outage {i}"},
                                          "ref": f"outage-{i}"})
        refused.append((r.status_code, r.json()["error"]["code"]))
    batch = client.post("/v1/batches", json={"jobs": encode_lines(3, "outage-batch")})
    poll = client.get("/v1/jobs/1", params={"wait": 1})
    stack.servers.start_postgres()

    assert refused == [(503, "unavailable")] * 5
    assert batch.status_code == 503, batch.text
    assert (poll.status_code, poll.json()["error"]["code"]) == (503, "unavailable")
    after = client.post("/v1/jobs", json={"kind": "encode", "params": {"text": "after"}})
    assert after.status_code == 201, after.text
    recovered = checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": BATCH + 1}
    assert sql_count(engine, "SELECT count(*) FROM jobs WHERE ref LIKE 'outage%' OR "
                     "params->>'text' LIKE 'outage%'") == 0, "a refused job was stored"
    assert {name: p.popen.pid for name, p in stack.procs.items() if p.alive and p.popen} == pids
    recovery.record("PostgreSQL restart mid-batch (5k encode)", injected, recovered, counts)
