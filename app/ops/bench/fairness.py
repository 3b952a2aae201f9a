"""`babelq bench --fairness`: a small tenant's latency beside a big one's backlog, and weights.

For each kind (light `encode`, then `enumerate` with pages): tenant B's single-job
latency on the idle stack; then tenant A uploads a big batch, and while it drains B
submits single jobs spaced 50 ms apart and tenant C (weight 3) uploads a smaller batch.
Reported: B's p50/p99 idle and beside A, C's throughput over A's while both are
backlogged, and Redis' memory. A's and C's leftovers are cancelled before the next kind.
B submits and waits with our Python client (app.client.Client), one keep-alive connection
per thread; A and C stream their batches up with httpx.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from app.client import Client
from app.ops.bench.latency import submit_and_wait
from app.ops.bench.report import machine
from app.ops.bench.system import (
    Procs,
    RedisPeak,
    RssSampler,
    admin_key,
    child_env,
    servers,
    wait_for,
)

#: The workloads: kind and params of every job (the text or query varies per job).
WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "encode": ("encode", {"text": ""}),
    "enumerate_pages": ("enumerate", {"query": "", "with_pages": True}),
}
#: B's p99 beside A's backlog, per workload (ms); C/A bounds.
P99_TARGET_MS = {"encode": 1000.0, "enumerate_pages": 2000.0}
RATIO_TARGET = (2.5, 3.5)
#: B's single jobs: how many, how far apart; idle samples before A uploads.
B_JOBS, B_SPACING, B_IDLE = 200, 0.05, 50
#: Longest window in which C's and A's progress is compared (seconds).
SHARE_WINDOW = 15.0
#: Lines per chunk of a streamed upload body.
BODY_BLOCK = 2000

err = Console(stderr=True)


def lines(workload: str, n: int, tag: str) -> Iterator[bytes]:
    """n NDJSON lines of a workload, generated while streaming."""
    kind, params = WORKLOADS[workload]
    field = "text" if kind == "encode" else "query"
    for lo in range(0, n, BODY_BLOCK):
        yield b"".join(orjson.dumps({"kind": kind, "params": {**params, field: f"{tag} {i}"}})
                       + b"\n" for i in range(lo, min(lo + BODY_BLOCK, n)))


def upload(client: httpx.Client, workload: str, n: int, tag: str) -> int:
    """Upload a batch; its id."""
    reply = client.post("/v1/batches", content=lines(workload, n, tag), timeout=None,
                        headers={"content-type": "application/x-ndjson"})
    reply.raise_for_status()
    return int(reply.json()["id"])


def single(client: Client, workload: str, tag: str) -> float:
    """Submit one job and long-poll it to the end: milliseconds."""
    kind, params = WORKLOADS[workload]
    field = "text" if kind == "encode" else "query"
    started = time.perf_counter()
    job = submit_and_wait(client, kind, {**params, field: tag}, wait=30)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['status']}")
    return (time.perf_counter() - started) * 1000


def spaced_singles(client: Client, workload: str, count: int, tag: str) -> list[float]:
    """count single jobs submitted B_SPACING apart (each waited for in its own thread)."""
    start = time.monotonic()

    def one(i: int) -> float:
        time.sleep(max(0.0, start + i * B_SPACING - time.monotonic()))
        return single(client, workload, f"{tag} {i}")

    with ThreadPoolExecutor(max_workers=64) as pool:
        return list(pool.map(one, range(count)))


def percentiles(ms: list[float]) -> dict[str, float]:
    """p50, p99 and max of milliseconds."""
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {"samples": len(ms), "p50": cuts[49], "p99": cuts[98], "max": max(ms)}


def done(client: httpx.Client, batch: int) -> int:
    """Finished jobs of a batch."""
    counts = client.get(f"/v1/batches/{batch}").raise_for_status().json()["counts"]
    return sum(int(counts.get(s, 0)) for s in ("succeeded", "dead", "cancelled"))


def share(clients: dict[str, httpx.Client], a: int, c: int, c_n: int, procs: Procs
          ) -> dict[str, float]:
    """C's jobs done over A's while both are backlogged (after a second's settling)."""
    time.sleep(1.0)
    a0, c0, t0 = done(clients["a"], a), done(clients["c"], c), time.monotonic()
    wait_for(lambda: done(clients["c"], c) >= c0 + (c_n - c0) * 0.8
             or time.monotonic() - t0 > SHARE_WINDOW, procs, SHARE_WINDOW + 60, 0.2)
    a1, c1, t1 = done(clients["a"], a), done(clients["c"], c), time.monotonic()
    return {"a_per_s": (a1 - a0) / (t1 - t0), "c_per_s": (c1 - c0) / (t1 - t0),
            "c_over_a": (c1 - c0) / max(1, a1 - a0)}


def waits(database_url: str, since: float) -> dict[str, float]:
    """B's jobs since then, from PostgreSQL: ms from stored to started, and started to
    finished (the queue's share of B's latency; the rest is the api and the client)."""
    from sqlalchemy import text

    from app.store.db import engine_for

    with engine_for(database_url).connect() as conn:
        rows = conn.execute(text(
            "SELECT extract(epoch FROM j.started_at - j.created_at) * 1000, "
            "extract(epoch FROM j.finished_at - j.started_at) * 1000 FROM jobs j "
            "JOIN tenants t ON t.id = j.tenant_id WHERE t.name = 'fair-b' "
            "AND j.created_at > to_timestamp(:since)"), {"since": since}).all()
    started = [float(r[0]) for r in rows]
    ran = [float(r[1]) for r in rows]
    return {"to_started_p50": statistics.median(started), "to_started_max": max(started),
            "run_p50": statistics.median(ran)}


def workload_phase(clients: dict[str, httpx.Client], b: Client, workload: str, a_n: int,
                   c_n: int, procs: Procs, peak: RedisPeak, database_url: str
                   ) -> dict[str, Any]:
    """One workload: B idle, then A's backlog with B's singles and C's batch beside it."""
    err.print(f"{workload}: B idle x{B_IDLE}, A uploads {a_n:,}, B x{B_JOBS} + C {c_n:,}")
    spaced_singles(b, workload, 5, f"{workload} warm")
    idle = percentiles(spaced_singles(b, workload, B_IDLE, f"{workload} idle"))
    redis_before = peak.now_mb()
    a = upload(clients["a"], workload, a_n, f"{workload} a")
    b_since = time.time()
    with ThreadPoolExecutor(max_workers=1) as pool:
        b_run = pool.submit(spaced_singles, b, workload, B_JOBS, f"{workload} b")
        c = upload(clients["c"], workload, c_n, f"{workload} c")
        split = share(clients, a, c, c_n, procs)
        busy = percentiles(b_run.result())
    a_left = a_n - done(clients["a"], a)
    b_waits = waits(database_url, b_since)
    for tenant, batch in (("a", a), ("c", c)):
        cancel(clients[tenant], batch)
    wait_for(lambda: done(clients["a"], a) == a_n and done(clients["c"], c) == c_n, procs, 600)
    return {"b_idle_ms": idle, "b_beside_a_ms": busy, "b_beside_a_db_ms": b_waits,
            "share": split,
            "a_unfinished_when_b_done": a_left, "redis_mb_before_upload": redis_before,
            "targets": {"b_p99_ms": P99_TARGET_MS[workload], "c_over_a": RATIO_TARGET},
            "met": {"b_p99": busy["p99"] <= P99_TARGET_MS[workload],
                    "c_over_a": RATIO_TARGET[0] <= split["c_over_a"] <= RATIO_TARGET[1]}}


def cancel(client: httpx.Client, batch: int) -> None:
    """Cancel what is left of a batch, again while a worker holds some of its rows (409)."""
    for _ in range(20):
        reply = client.post(f"/v1/batches/{batch}/cancel")
        if reply.status_code != 409:
            reply.raise_for_status()
            return
        time.sleep(1)
    raise RuntimeError(f"batch {batch} could not be cancelled")


def tenant_keys(database_url: str) -> dict[str, str]:
    """A key for each of tenants fair-a, fair-b and fair-c."""
    from app.jobs.keys import create_key
    from app.store.db import engine_for, session_scope

    with session_scope(engine_for(database_url)) as session:
        return {t: create_key(session, tenant=f"fair-{t}", name="bench --fairness")[1]
                for t in "abc"}


def run_fairness(workers: int = 2, as_json: bool = False, database_url: str | None = None,
                 redis_url: str | None = None, a_n: int = 200_000, c_n: int = 20_000
                 ) -> dict[str, Any]:
    """The fairness benchmark on its own stack; prints a table (or JSON), returns it."""
    from app.ops.bench.cli import start_stack

    at_start = machine()
    with servers(database_url, redis_url) as srv, RssSampler() as rss:
        procs = Procs(child_env(srv), srv.tmp / "logs")
        peak = RedisPeak(srv.redis_url)
        peak.start()
        try:
            url = start_stack(srv, procs, rss, workers)
            keys = {**tenant_keys(srv.database_url), "admin": admin_key(srv.database_url)}
            clients = {t: httpx.Client(base_url=url, timeout=120,
                                       headers={"Authorization": f"Bearer {k}"})
                       for t, k in keys.items() if t != "b"}
            clients["admin"].patch("/v1/tenants/fair-c", json={"weight": 3}).raise_for_status()
            with Client(url, keys["b"], timeout=120) as b:
                runs = {w: workload_phase(clients, b, w, a_n, c_n, procs, peak,
                                          srv.database_url)
                        for w in WORKLOADS}
        finally:
            peak.halt.set()
            procs.stop()
    report = {"machine": at_start, "workers": workers, "a_jobs": a_n, "c_jobs": c_n,
              "b_jobs": B_JOBS, "b_spacing_s": B_SPACING, "c_weight": 3, "runs": runs,
              "redis_peak_mb": peak.peak / 2**20}
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(table(report))
    return report


def table(report: dict[str, Any]) -> Table:
    """The report as a table, one row per workload."""
    t = Table("workload", "B idle p50 / p99, ms", "B beside A p50 / p99, ms", "target p99",
              "C/A (weight 3)", "target", "met",
              title=f"babelq bench --fairness: A {report['a_jobs']:,} jobs, C "
                    f"{report['c_jobs']:,}, B {report['b_jobs']} singles "
                    f"{report['b_spacing_s'] * 1000:.0f} ms apart; prefork pool of "
                    f"{report['workers']}",
              caption=f"{report['machine']['cpus']} CPUs, load at start "
                      f"{report['machine']['load']}; Redis peak "
                      f"{report['redis_peak_mb']:.1f} MB")
    for name, r in report["runs"].items():
        idle, busy = r["b_idle_ms"], r["b_beside_a_ms"]
        t.add_row(name, f"{idle['p50']:.0f} / {idle['p99']:.0f}",
                  f"{busy['p50']:.0f} / {busy['p99']:.0f}",
                  f"<= {r['targets']['b_p99_ms']:.0f}", f"{r['share']['c_over_a']:.2f}",
                  "2.5..3.5", " ".join("✓" if ok else "✗" for ok in r["met"].values()))
    return t
