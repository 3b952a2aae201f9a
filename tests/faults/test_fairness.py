"""Fair dispatch on the real stack: tenants take turns, caps hold, lost messages come back.

Jobs are test_sleep jobs, so a batch takes seconds on the stack's four worker processes
and the order in which tenants are served shows in PostgreSQL.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.faults import checks
from tests.faults.recovery import Recorder
from tests.faults.stack import Stack, sql_count, submit_batch, wait_for

pytestmark = pytest.mark.faults


def sleepers(n: int, seconds: float) -> list[dict[str, object]]:
    """n test_sleep jobs."""
    return [{"kind": "test_sleep", "params": {"seconds": seconds}} for _ in range(n)]


def tenant_client(stack: Stack, engine: Engine, tenant: str, admin: bool = False
                  ) -> httpx.Client:
    """A client with a new key of this tenant (created if new)."""
    from app.jobs.keys import create_key

    with Session(engine) as session:
        _, secret = create_key(session, tenant=tenant, admin=admin)
        session.commit()
    return stack.client(secret)


@pytest.fixture
def admin(stack: Stack, engine: Engine) -> Iterator[httpx.Client]:
    """An admin client (tenant "fair-ops")."""
    with tenant_client(stack, engine, "fair-ops", admin=True) as c:
        yield c


def done_of(engine: Engine, batch_id: int) -> int:
    """Jobs of a batch that finished."""
    return sql_count(engine, "SELECT count(*) FROM jobs WHERE batch_id = :b "
                             "AND status = 'succeeded'", b=batch_id)


def test_a_single_job_finishes_while_most_of_a_batch_waits(
    stack: Stack, engine: Engine, since: int
) -> None:
    with tenant_client(stack, engine, "fair-a") as a, tenant_client(stack, engine, "fair-b") as b:
        batch = submit_batch(a, sleepers(1000, 0.02))  # 20 s of work for 4 processes
        wait_for("A's batch to start", lambda: done_of(engine, batch["id"]) > 0, 30, 0.02)
        r = b.post("/v1/jobs", json={"kind": "test_sleep", "params": {"seconds": 0.02}})
        assert r.status_code == 201, r.text
        job = b.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 30}).json()
        while job["status"] in ("queued", "running"):
            job = b.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
        a_done = done_of(engine, batch["id"])
    assert job["status"] == "succeeded"
    assert a_done < 500, f"B waited for {a_done} of A's 1000 jobs"
    checks.wait_terminal(engine, since)
    assert checks.assert_consistent(engine, since) == {"succeeded": 1001}


def test_max_running_is_never_exceeded(
    stack: Stack, engine: Engine, admin: httpx.Client, since: int
) -> None:
    with tenant_client(stack, engine, "fair-capped") as capped:
        r = admin.patch("/v1/tenants/fair-capped", json={"max_running": 3})
        assert r.status_code == 200, r.text
        assert r.json()["max_running"] == 3
        submit_batch(capped, sleepers(120, 0.02))
        r = capped.post("/v1/jobs", json={"kind": "test_sleep", "params": {"seconds": 0.02}})
        assert r.status_code == 201, r.text
        peak = 0
        sql = ("SELECT count(*) FROM jobs j JOIN tenants t ON t.id = j.tenant_id "
               "WHERE t.name = 'fair-capped' AND j.status = 'running'")
        while checks.status_counts(engine, since).get("queued", 0) or peak == 0:
            peak = max(peak, sql_count(engine, sql))
            time.sleep(0.005)
    checks.wait_terminal(engine, since)
    assert checks.assert_consistent(engine, since) == {"succeeded": 121}
    assert 1 <= peak <= 3


def test_a_weight_change_changes_the_split(
    stack: Stack, engine: Engine, admin: httpx.Client, since: int
) -> None:
    with (tenant_client(stack, engine, "fair-c") as c,
          tenant_client(stack, engine, "fair-d") as d):
        bc = submit_batch(c, sleepers(1500, 0.005))["id"]
        bd = submit_batch(d, sleepers(1500, 0.005))["id"]
        wait_for("both batches under way", lambda: done_of(engine, bc) + done_of(engine, bd)
                 >= 300, 60, 0.02)
        r = admin.patch("/v1/tenants/fair-c", json={"weight": 4})
        assert r.status_code == 200, r.text
        # Let what was sent before the change drain (the window, the messages at its head
        # and the running chunks: up to ~10 chunks of 50).
        base = done_of(engine, bc) + done_of(engine, bd)
        wait_for("the change to reach the workers", lambda: done_of(engine, bc)
                 + done_of(engine, bd) >= base + 600, 120, 0.02)
        c0, d0 = done_of(engine, bc), done_of(engine, bd)
        wait_for("600 more jobs", lambda: done_of(engine, bc) + done_of(engine, bd)
                 >= c0 + d0 + 600, 120, 0.02)
        c1, d1 = done_of(engine, bc), done_of(engine, bd)
    assert c1 - c0 >= 2 * (d1 - d0), (c0, d0, c1, d1)
    checks.wait_terminal(engine, since)


def test_a_lost_message_under_a_backlog_is_sent_again(
    stack: Stack, engine: Engine, since: int, recovery: Recorder
) -> None:
    with tenant_client(stack, engine, "fair-lost") as a:
        batch = submit_batch(a, sleepers(1200, 0.02))
        lost: list[int] = []

        def take_one() -> bool:  # the next message a worker would take, if one waits
            waiting = stack.queued_chunks()
            if waiting and stack.withdraw(waiting[-1][2]) == 1:
                lost.extend(waiting[-1][2])
            return bool(lost)

        wait_for("a message taken from Redis", take_one, 30, 0.01)
        injected = time.monotonic()
        sql = "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status = 'succeeded'"
        wait_for("the lost message's jobs", lambda: sql_count(engine, sql, ids=lost)
                 == len(lost), 60, 0.05)
        recovered = time.monotonic()
        left = sql_count(engine, "SELECT count(*) FROM jobs WHERE batch_id = :b "
                                 "AND status = 'queued'", b=batch["id"])
    # Before, a lost message under a backlog waited until the whole backlog drained.
    assert left > 0, "the backlog drained before the lost jobs ran"
    checks.wait_terminal(engine, since)
    counts = checks.assert_consistent(engine, since)
    assert counts == {"succeeded": 1200}
    recovery.record("a message lost under a backlog (1,200 x 20 ms): its jobs done", injected,
                    recovered, Counter({"succeeded": len(lost)}))
