"""Webhooks through faults: a worker killed, Redis flushed, the receiver down for a while.

Every event is recorded once (in the transaction of its state change) and reaches the
receiver once: none is lost, none is sent twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import Engine
from standardwebhooks.webhooks import Webhook
from werkzeug import Request, Response

from tests.faults import checks
from tests.faults.stack import (
    Stack,
    batch_job_ids,
    encode_lines,
    sql_count,
    submit_batch,
    wait_for,
    wait_progress,
)

pytestmark = pytest.mark.faults

BATCH = 3000
POISON = 3


class Receiver:
    """A real HTTP receiver that verifies every signature and counts what it accepted."""

    def __init__(self, secret: str, port: int = 0) -> None:
        self.signer = Webhook(secret)
        self.lock = threading.Lock()
        self.accepted: list[tuple[str, str, int]] = []  # (webhook-id, type, subject id)
        self.server = HTTPServer(host="127.0.0.1", port=port)
        self.server.expect_request("/hook", method="POST").respond_with_handler(self.handle)
        self.server.start()

    def handle(self, request: Request) -> Response:
        payload = self.signer.verify(request.get_data(), dict(request.headers))
        with self.lock:
            self.accepted.append((request.headers["webhook-id"], payload["type"],
                                  payload["data"]["id"]))
        return Response(status=204)

    def restart_later(self, down: float) -> threading.Thread:
        """Stop now, start again on the same port after `down` seconds."""
        self.server.stop()

        def again() -> None:
            time.sleep(down)
            self.server.start()

        thread = threading.Thread(target=again, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def receiver_and_hook(client: httpx.Client) -> Iterator[tuple[Receiver, dict[str, Any]]]:
    """An endpoint for every event, batch jobs included, and its receiver."""
    receiver = Receiver("whsec_" + "A" * 44)  # replaced at once by the real secret
    hook = client.post("/v1/webhooks", json={
        "url": receiver.server.url_for("/hook"), "include_batch_jobs": True,
        "events": ["job.succeeded", "job.dead", "job.cancelled", "batch.completed"]})
    assert hook.status_code == 201, hook.text
    receiver.signer = Webhook(hook.json()["secret"])
    yield receiver, hook.json()
    client.delete(f"/v1/webhooks/{hook.json()['id']}")
    if receiver.server.is_running():
        receiver.server.stop()


def test_every_event_once_through_worker_kill_redis_flush_and_receiver_outage(
    stack: Stack, client: httpx.Client, engine: Engine, since: int,
    receiver_and_hook: tuple[Receiver, dict[str, Any]],
) -> None:
    receiver, hook = receiver_and_hook
    poison = [client.post("/v1/jobs", json={"kind": "test_fail", "params": {},
                                           "max_attempts": 1}).json()["id"]
              for _ in range(POISON)]
    batch = submit_batch(client, encode_lines(BATCH, "webhook-faults"))
    wait_progress(engine, since, BATCH // 10)
    stack["w1"].kill()
    stack.servers.flushall()
    back = receiver.restart_later(2.0)

    checks.wait_terminal(engine, since, every=stack.revive_workers)
    back.join()
    pending = "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = :e AND status <> " \
              "'delivered'"
    wait_for("every delivery", lambda: sql_count(engine, pending, e=hook["id"]) == 0, 120)

    events = Counter((kind, subject) for _, kind, subject in receiver.accepted)
    batch_jobs = set(batch_job_ids(engine, batch["id"]))
    assert len(batch_jobs) == BATCH
    assert {s for (k, s) in events if k == "job.succeeded"} == batch_jobs
    assert {s for (k, s) in events if k == "job.dead"} == set(poison)
    assert [s for (k, s) in events if k == "batch.completed"] == [batch["id"]]
    assert set(events.values()) == {1}, "an event reached the receiver twice"
    assert len({w for w, _, _ in receiver.accepted}) == len(receiver.accepted)
    recorded = "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = :e"
    assert sql_count(engine, recorded, e=hook["id"]) == BATCH + POISON + 1
