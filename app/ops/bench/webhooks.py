"""Webhook benchmark (not a test): a batch with one webhook per job, to a local receiver.

    python -m app.ops.bench.webhooks [--jobs 100000] [--database-url ... --redis-url ...]

Starts its own servers (or uses the given ones), the api, one worker (prefork pool of 2),
the relay (which runs the sender) and the receiver of app.ops.bench.receiver. Measures, in
one run: the batch end to end without any endpoint (the baseline), then the same batch
with an endpoint that asks for every job's job.succeeded and the batch.completed; and
the deliveries per second, from the receiver's first arrival to its last. Checks that
every event arrived exactly once, each with a valid signature.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import httpx
import orjson
from rich.console import Console

from app.ops.bench.cli import batch_done, upload
from app.ops.bench.system import Procs, admin_key, child_env, servers, wait_for
from app.ops.supervisor import free_port

err = Console(stderr=True)


def _receiver(procs: Procs) -> str:
    port = free_port()
    procs.start("receiver", ["-m", "uvicorn", "app.ops.bench.receiver:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning", "--no-access-log"])
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(url), procs, timeout=60)
    return url


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/stats", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _batch(client: httpx.Client, procs: Procs, n: int, tag: str) -> dict[str, Any]:
    made = upload(client, n, tag)
    done = wait_for(lambda: batch_done(client, made["id"]), procs, timeout=max(600, n / 100))
    return {"id": made["id"], "jobs_per_second": n / (done - made["started"]),
            "seconds": done - made["started"], "started": made["started"], "done": done}


def run(n: int, database_url: str | None, redis_url: str | None, concurrency: int
        ) -> dict[str, Any]:
    """The whole benchmark; returns its numbers."""
    with servers(database_url, redis_url) as srv:
        env = {**child_env(srv), "BABELQ_WEBHOOK_ALLOW_PRIVATE": "true",
               "BABELQ_WEBHOOK_CONCURRENCY": str(concurrency)}
        procs = Procs(env, srv.tmp / "logs")
        try:
            receiver = _receiver(procs)
            port = free_port()
            procs.start("api", ["-m", "app.cli", "api", "--host", "127.0.0.1", "--port",
                                str(port), "--log-level", "warning"])
            procs.start("worker", ["-m", "app.cli", "worker", "-c", "2", "--loglevel",
                                   "WARNING", "-n", "bench@%h"])
            procs.start("relay", ["-m", "app.cli", "relay"])
            url = f"http://127.0.0.1:{port}"
            procs.wait_ready(f"{url}/ready")
            headers = {"Authorization": f"Bearer {admin_key(srv.database_url)}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                err.print(f"baseline: a batch of {n:,} jobs, no endpoint")
                base = _batch(client, procs, n, "plain")
                hook = client.post("/v1/webhooks", json={
                    "url": f"{receiver}/hook", "events": ["job.succeeded", "batch.completed"],
                    "include_batch_jobs": True}).json()
                httpx.post(f"{receiver}/secret", content=hook["secret"])
                time.sleep(6)  # workers re-read the tenants with endpoints (5 s cache)
                err.print(f"with webhooks: a batch of {n:,} jobs, one delivery per job")
                hooked = _batch(client, procs, n, "hooked")
                wait_for(lambda: _stats(receiver)["events"] >= n + 1, procs,
                         timeout=max(600, n / 50))
                time.sleep(2)  # anything sent twice would arrive now
                got = _stats(receiver)
        finally:
            procs.stop()
    return {"jobs": n, "baseline": base, "with_webhooks": hooked, "receiver": got,
            "deliveries_per_second": got["events"] / got["span_seconds"],
            "last_delivery_after_batch_done_s": got["last"] - hooked["done"]
            if got["last"] else None,
            "concurrency": concurrency, "cpus": os.cpu_count()}


def _stats(receiver: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{receiver}/stats", timeout=10).json()
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m app.ops.bench.webhooks")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    args = parser.parse_args(argv)
    report = run(args.jobs, args.database_url, args.redis_url, args.concurrency)
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    got = report["receiver"]
    ok = got["events"] == args.jobs + 1 and got["duplicates"] == 0 and not got["bad_signatures"]
    err.print(f"deliveries/s: {report['deliveries_per_second']:,.0f}; every event once: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
