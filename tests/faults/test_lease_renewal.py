"""Leases are renewed while a chunk runs: a long job never expires, a dead worker's soon do."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import Engine

from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.stack import BABELQ, WORKERS, Proc, Stack, babelq_env, wait_for
from tests.plugins import testkinds

pytestmark = pytest.mark.faults


def job(client: httpx.Client, job_id: int) -> dict[str, object]:
    """The job as the api shows it."""
    body: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
    return body


def trail(client: httpx.Client, job_id: int) -> list[str]:
    """The job's audit event types, in order."""
    return [e["type"] for e in client.get(f"/v1/jobs/{job_id}/audit").json()["events"]]


def test_a_job_longer_than_its_lease_runs_once(
    stack: Stack, client: httpx.Client, engine: Engine, since: int
) -> None:
    # The stack's lease is 5 s; the job takes 8. Without renewal it was handed out again
    # every 5 s, and after 3 attempts it was dead with LeaseExpired.
    r = client.post("/v1/jobs", json={"kind": "test_sleep", "params": {"seconds": 8}})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    checks.wait_terminal(engine, since)
    assert checks.assert_consistent(engine, since) == {"succeeded": 1}
    done = job(client, job_id)
    assert (done["status"], done["attempt"]) == ("succeeded", 1), done
    assert trail(client, job_id) == ["submitted", "started", "succeeded"]


def test_with_default_settings_a_killed_workers_job_runs_again_soon(
    stack: Stack, client: httpx.Client, engine: Engine, since: int, recovery: Recorder
) -> None:
    # A worker and a relay with every delivery setting at its default (lease 15 s, relay
    # interval 1 s): only the test kinds are switched on.
    env = {**babelq_env(home=str(stack.workdir / "home"), database_url=stack.database_url,
                        redis_url=stack.servers.redis_url), **testkinds.ENV}
    logs = stack.workdir / "logs"
    lone = Proc("wd", [BABELQ, "worker", "-Q", "encode", "-c", "1", "-n", "wd@%h",
                       "--loglevel", "info"], logs / "wd.log", b" ready.")
    relay = Proc("relay-defaults", [BABELQ, "relay"], logs / "relay-defaults.log")
    for name in (*WORKERS, "relay"):
        stack[name].stop()
    try:
        relay.start(env)
        lone.start(env)
        lone.wait_ready()
        r = client.post("/v1/jobs", json={"kind": "test_sleep", "params": {"seconds": 40}})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        wait_for("wd to run the job", lambda: job(client, job_id)["status"] == "running", 30,
                 0.05)
        for name in WORKERS:  # workers to run it again, started while wd holds it
            stack[name].start(stack.env())
        for name in WORKERS:
            stack[name].wait_ready()
        assert job(client, job_id)["attempt"] == 1  # wd still holds it, its lease renewed
        killed = time.monotonic()
        lone.kill()
        wait_for("the job to run again", lambda: job(client, job_id)["attempt"] == 2, 60, 0.05)
        again = time.monotonic()
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    finally:
        lone.stop()
        relay.stop()
        for name in WORKERS:  # one sleeps on in the cancelled job: the next test restarts them
            stack[name].kill()
    checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert trail(client, job_id)[:5] == ["submitted", "started", "lease_expired", "started",
                                         "cancelled"]
    recovery.record("worker SIGKILL mid-job, default settings: until it runs again", killed,
                    again, counts)
