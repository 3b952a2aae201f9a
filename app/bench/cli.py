"""`babelq bench`: ingestion, end to end and latency of the real stack, against plain Celery.

One run starts everything it needs (embedded PostgreSQL and Redis in a temp dir unless
URLs are given, a fresh database, the api, one Celery worker with a prefork pool of
`workers` processes, the relay, and the naive baseline's worker), measures, prints a
table (or JSON) and returns the numbers.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from app.bench import naive
from app.bench.system import (
    MB,
    Procs,
    RssSampler,
    Servers,
    admin_key,
    api_args,
    child_env,
    naive_worker_args,
    rss_of,
    servers,
    settle,
    tree,
    wait_for,
    worker_args,
)
from app.supervisor import free_port

#: Issue 4's targets: (metric path, comparison, bound).
TARGETS: list[tuple[str, str, float]] = [
    ("ingestion.jobs_per_s", ">=", 50_000),
    ("ratios.ingestion", ">=", 25),
    ("end_to_end.jobs_per_s", ">=", 10_000),
    ("ratios.end_to_end", ">=", 15),
    ("latency_ms.p50", "<=", 10),
    ("latency_ms.p99", "<=", 40),
]
#: Lines of the warm-up batch and single jobs sent before anything is measured.
WARMUP_LINES, WARMUP_SINGLES = 2000, 20
#: Lines per chunk of the streamed upload body.
BODY_BLOCK = 2000

err = Console(stderr=True)


# Client side ---------------------------------------------------------------------------


def ndjson(n: int, tag: str) -> Iterator[bytes]:
    """n light encode jobs as NDJSON, generated while streaming, BODY_BLOCK lines a chunk."""
    line = b'{"kind":"encode","params":{"text":"%s %d"}}\n'
    prefix = tag.encode()
    for lo in range(0, n, BODY_BLOCK):
        yield b"".join(line % (prefix, i) for i in range(lo, min(lo + BODY_BLOCK, n)))


def upload(client: httpx.Client, n: int, tag: str) -> dict[str, Any]:
    """POST n jobs as one streamed NDJSON batch; the reply plus start and seconds taken."""
    started = time.monotonic()
    reply = client.post("/v1/batches", content=ndjson(n, tag), timeout=None,
                        headers={"content-type": "application/x-ndjson"})
    seconds = time.monotonic() - started
    reply.raise_for_status()
    body = reply.json()
    if body["accepted"] != n:
        raise RuntimeError(f"the api accepted {body['accepted']} of {n} lines: {body}")
    return {**body, "started": started, "seconds": seconds}


def batch_done(client: httpx.Client, batch_id: int) -> bool:
    """Whether every job of the batch is terminal, as GET /v1/batches/{id} says."""
    reply = client.get(f"/v1/batches/{batch_id}")
    reply.raise_for_status()
    return bool(reply.json()["done"])


#: Stretches of a single job's life, between the client's clock and the job's timestamps.
STAGES = ("submit_to_created", "created_to_started", "started_to_finished", "finished_to_seen")


def single_job(client: httpx.Client, text: str) -> tuple[float, dict[str, float]]:
    """Submit one job and long-poll it to `succeeded`: total ms and ms per stage."""
    began, started = time.time(), time.perf_counter()
    reply = client.post("/v1/jobs", json={"kind": "encode", "params": {"text": text}})
    reply.raise_for_status()
    job = reply.json()
    while job["status"] in ("queued", "running"):
        reply = client.get(f"/v1/jobs/{job['id']}", params={"wait": 10})
        reply.raise_for_status()
        job = reply.json()
    total = (time.perf_counter() - started) * 1000
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    marks = [began, *(datetime.fromisoformat(job[k]).timestamp()
                      for k in ("created_at", "started_at", "finished_at")), time.time()]
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(marks)]
    return total, dict(zip(STAGES, gaps, strict=True))


def latency(client: httpx.Client, samples: int, tag: str) -> dict[str, Any]:
    """Percentiles of single-job latency, and the median of each stage of it."""
    runs = [single_job(client, f"{tag} {i}") for i in range(samples)]
    stages = {k: statistics.median(r[1][k] for r in runs) for k in STAGES}
    return {**percentiles([r[0] for r in runs]), "median_stages": stages}


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p95, p99, mean and max of milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"samples": len(samples), "p50": cuts[49], "p95": cuts[94], "p99": cuts[98],
            "mean": statistics.fmean(samples), "max": max(samples)}


def batch_outcome(database_url: str, batch_id: int) -> dict[str, int]:
    """Jobs per status and results persisted, read from PostgreSQL itself."""
    from sqlalchemy import text

    from app.db import engine_for

    with engine_for(database_url).connect() as conn:
        counts: dict[str, int] = dict(conn.execute(text(
            "SELECT status, count(*) FROM jobs WHERE batch_id = :b GROUP BY status"
        ), {"b": batch_id}).all())
        results = conn.execute(text(
            "SELECT count(*) FROM results r JOIN jobs j ON j.id = r.job_id WHERE j.batch_id = :b"
        ), {"b": batch_id}).scalar_one()
    return {"jobs": sum(counts.values()), "succeeded": counts.get("succeeded", 0),
            "results": int(results)}


def rate(jobs: int, seconds: float) -> dict[str, float]:
    """Jobs, seconds and jobs per second."""
    return {"jobs": jobs, "seconds": seconds, "jobs_per_s": jobs / seconds}


# Phases --------------------------------------------------------------------------------


def naive_phase(srv: Servers, procs: Procs, rss: RssSampler, n: int, workers: int
                ) -> dict[str, Any]:
    """The baseline: ingestion alone (its workers stopped), then end to end with them up."""
    from app.db import engine_for

    engine = engine_for(srv.database_url)
    naive.create_tables(engine)
    naive.configure(srv.redis_url)
    checkpointed = settle(srv.database_url)
    started = time.monotonic()
    naive.ingest(engine, [f"naive {i}" for i in range(n)])
    ingestion = rate(n, time.monotonic() - started)
    worker = procs.start("naive-worker", naive_worker_args(workers))
    rss.watch("naive_worker", worker.process.pid)
    started = time.monotonic()
    wait_for(lambda: naive.succeeded(engine) >= n, procs, timeout=600)
    drain = rate(n, time.monotonic() - started)
    first = naive.max_id(engine)
    checkpointed &= settle(srv.database_url)
    started = time.monotonic()
    naive.ingest(engine, [f"naive e2e {i}" for i in range(n)])
    done = wait_for(lambda: naive.succeeded(engine, first) >= n, procs, timeout=600)
    procs.stop("naive-worker")
    return {"ingestion": ingestion, "processing": drain, "end_to_end": rate(n, done - started),
            "succeeded": naive.succeeded(engine, first), "checkpointed": checkpointed}


def start_stack(srv: Servers, procs: Procs, rss: RssSampler, workers: int) -> str:
    """api, one worker (prefork pool of `workers`) and relay; the api's URL once ready."""
    port = free_port()
    api = procs.start("api", api_args(port))
    rss.watch("api", api.process.pid)
    if workers:
        worker = procs.start("worker", worker_args(workers))
        rss.watch("worker", worker.process.pid)
        procs.start("relay", ["-m", "app.cli", "relay"])
    url = f"http://127.0.0.1:{port}"
    procs.wait_ready(f"{url}/ready")
    return url


def our_phase(client: httpx.Client, srv: Servers, procs: Procs, rss: RssSampler, n: int,
              samples: int) -> dict[str, Any]:
    """Warm up, latency on the idle system, then one batch: ingestion and end to end."""
    warm = upload(client, WARMUP_LINES, "warm")
    wait_for(lambda: batch_done(client, warm["id"]), procs, timeout=120)
    latency(client, WARMUP_SINGLES, "warm single")
    checkpointed = settle(srv.database_url)
    lat = latency(client, samples, "single")
    checkpointed &= settle(srv.database_url)
    ingestion, growth = measured_upload(client, rss, n, "job")
    done = wait_for(lambda: batch_done(client, ingestion["id"]), procs,
                    timeout=max(600, n / 200))
    outcome = batch_outcome(srv.database_url, ingestion["id"])
    # "Done" counts dead jobs too; the naive side counts only stored results, so must we.
    if outcome["results"] != n:
        raise RuntimeError(f"{n - outcome['results']} of {n} jobs ended without a result: "
                           f"{outcome}")
    return {"ingestion": rate(n, ingestion["seconds"]),
            "end_to_end": {**rate(n, done - ingestion["started"]), **outcome},
            "latency_ms": lat, "api_growth_mb": growth, "checkpointed": checkpointed}


def measured_upload(client: httpx.Client, rss: RssSampler, n: int, tag: str
                    ) -> tuple[dict[str, Any], float]:
    """An upload and the api's resident memory growth over it (MB, peak minus before)."""
    before = rss.now("api")
    reply = upload(client, n, tag)
    peak = max(rss.window["api"], rss_of(tree(rss.pids["api"])))
    return reply, (peak - before) / MB


# Runs ----------------------------------------------------------------------------------


def run_bench(
    n: int = 200_000,
    workers: int = 2,
    latency_samples: int = 200,
    as_json: bool = False,
    database_url: str | None = None,
    redis_url: str | None = None,
    naive_n: int = 10_000,
) -> dict[str, Any]:
    """The whole benchmark in one go; prints a table (or JSON) and returns the numbers."""
    at_start = machine()
    with servers(database_url, redis_url) as srv, RssSampler() as rss:
        procs = Procs(child_env(srv), srv.tmp / "logs")
        try:
            err.print(f"naive baseline: {naive_n:,} jobs, ingestion then end to end")
            base = naive_phase(srv, procs, rss, naive_n, workers)
            err.print(f"Babel Queue: latency x{latency_samples}, then a batch of {n:,} jobs")
            url = start_stack(srv, procs, rss, workers)
            with httpx.Client(base_url=url, headers=_auth(srv), timeout=60) as client:
                ours = our_phase(client, srv, procs, rss, n, latency_samples)
        finally:
            procs.stop()
            gc.unfreeze()  # settle() froze this process's heap; a caller may run on
        report = assemble(ours, base, rss, at_start, n=n, naive_n=naive_n, workers=workers)
    show(report, as_json)
    return report


def run_memory_check(
    lines: int = 1_000_000,
    as_json: bool = False,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """The api's resident memory growth over one upload of `lines` lines (target < 50 MB)."""
    with servers(database_url, redis_url) as srv, RssSampler() as rss:
        procs = Procs(child_env(srv), srv.tmp / "logs")
        try:
            url = start_stack(srv, procs, rss, workers=0)
            with httpx.Client(base_url=url, headers=_auth(srv), timeout=60) as client:
                upload(client, WARMUP_LINES, "warm")
                reply, growth = measured_upload(client, rss, lines, "job")
        finally:
            procs.stop()
    report = {"machine": machine(), "lines": lines,
              "ingestion": rate(lines, reply["seconds"]), "api_growth_mb": growth,
              "api_peak_mb": rss.peak.get("api", 0) / MB, "target_mb": 50, "met": growth < 50}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        Console().print(
            f"api RSS growth over a {lines:,}-line ingestion: {growth:.1f} MB "
            f"(target < 50 MB: {'met' if growth < 50 else 'MISSED'}); "
            f"{reply['seconds']:.1f} s, {lines / reply['seconds']:,.0f} jobs/s"
        )
    return report


def _auth(srv: Servers) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key(srv.database_url)}"}


# Report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on, with the load average (1, 5, 15 min) now."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            model = next((ln.split(":", 1)[1].strip() for ln in info
                          if ln.startswith("model name")), model)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}


def assemble(ours: dict[str, Any], base: dict[str, Any], rss: RssSampler,
             host: dict[str, Any], *, n: int, naive_n: int, workers: int) -> dict[str, Any]:
    """The numbers of one run, with ratios and targets."""
    from app.config import get_settings

    report: dict[str, Any] = {
        "machine": host,
        "config": {"n": n, "naive_n": naive_n, "workers": workers,
                   "worker_layout": f"1 Celery worker, prefork pool of {workers}",
                   "chunk_size": get_settings().chunk_size},
        "ingestion": ours["ingestion"], "end_to_end": ours["end_to_end"],
        "latency_ms": ours["latency_ms"], "naive": base,
        # Whether every measured phase began after a CHECKPOINT (see settle), not only a sync.
        "checkpointed": ours["checkpointed"] and base["checkpointed"],
        "ratios": {k: ours[k]["jobs_per_s"] / base[k]["jobs_per_s"]
                   for k in ("ingestion", "end_to_end")},
        "memory_mb": {"api_peak": rss.peak.get("api", 0) / MB,
                      "worker_peak": rss.peak.get("worker", 0) / MB,
                      "naive_worker_peak": rss.peak.get("naive_worker", 0) / MB,
                      "api_growth_over_ingestion": ours["api_growth_mb"]},
    }
    report["targets"] = [_target(report, *t) for t in TARGETS]
    return report


def _target(report: dict[str, Any], path: str, op: str, bound: float) -> dict[str, Any]:
    value: Any = report
    for part in path.split("."):
        value = value[part]
    met = value >= bound if op == ">=" else value <= bound
    unit = "x" if path.startswith("ratios") else ""
    return {"metric": path, "target": f"{op} {bound:,}{unit}", "value": value, "met": met}


def show(report: dict[str, Any], as_json: bool) -> None:
    """Print the report: JSON, or a rich table (120 columns wide when not on a terminal)."""
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table(report))


def table(r: dict[str, Any]) -> Table:
    """The report as a rich table."""
    cfg, nv, lat, mem, m = r["config"], r["naive"], r["latency_ms"], r["memory_mb"], r["machine"]
    goal = {x["metric"]: x for x in r["targets"]}

    def target(*metrics: str) -> tuple[str, str]:
        return ("; ".join(goal[k]["target"] for k in metrics),
                " ".join("✓" if goal[k]["met"] else "✗" for k in metrics))

    t = Table(title=f"babelq bench: {cfg['n']:,} light encode jobs (naive {cfg['naive_n']:,}); "
                    f"{cfg['worker_layout']}; chunk_size {cfg['chunk_size']}",
              caption=f"{m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, {m['system']}, "
                      f"load average at start {m['load']}. Naive: one ORM commit + apply_async "
                      "per job; its ingestion timed with its workers stopped, its end to end "
                      "with them consuming. Each measured phase starts after "
                      + ("a CHECKPOINT and a sync." if r["checkpointed"] else
                         "a sync only: this database user may not run CHECKPOINT."))
    for col in ("measure", "Babel Queue", "naive", "ours/naive", "target", "met"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for key, label in (("ingestion", "ingestion, jobs/s"), ("end_to_end", "end to end, jobs/s")):
        t.add_row(label, f"{r[key]['jobs_per_s']:,.0f}", f"{nv[key]['jobs_per_s']:,.0f}",
                  f"{r['ratios'][key]:.1f}x", *target(f"{key}.jobs_per_s", f"ratios.{key}"))
    t.add_row("latency p50 / p95 / p99, ms",
              f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f}", "", "",
              *target("latency_ms.p50", "latency_ms.p99"))
    t.add_row("  median ms: →row →claimed →finished →seen",
              " / ".join(f"{lat['median_stages'][k]:.1f}" for k in STAGES), "", "", "", "")
    t.add_row("peak RSS api, MB", f"{mem['api_peak']:.0f}", "", "", "", "")
    t.add_row("peak RSS worker + pool, MB", f"{mem['worker_peak']:.0f}",
              f"{mem['naive_worker_peak']:.0f}", "", "", "")
    t.add_row("api RSS growth over ingestion, MB", f"{mem['api_growth_over_ingestion']:.1f}",
              "", "", "", "")
    return t


# Command line --------------------------------------------------------------------------

cli = typer.Typer(add_completion=False)


@cli.command()
def bench(
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Jobs in the batch.")] = 200_000,
    workers: Annotated[int, typer.Option(min=1, help="Worker pool processes.")] = 2,
    latency_samples: Annotated[int, typer.Option(min=2)] = 200,
    naive_n: Annotated[int, typer.Option(min=1, help="Jobs for the naive baseline.")] = 10_000,
    memory: Annotated[int, typer.Option(
        help="Instead: api RSS growth over an upload of this many lines (e.g. 1000000).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    database_url: Annotated[str | None, typer.Option(
        help="A PostgreSQL admin URL (a fresh database is made there); default embedded.")] = None,
    redis_url: Annotated[str | None, typer.Option(help="A Redis URL; default embedded.")] = None,
) -> None:
    """Ingestion, end to end and latency of the real stack, against plain Celery."""
    if memory:
        run_memory_check(memory, as_json, database_url, redis_url)
    else:
        run_bench(n, workers, latency_samples, as_json, database_url, redis_url, naive_n)


def main(argv: list[str]) -> int:
    """`babelq bench ARGS`: parse argv and run; the exit code."""
    command = typer.main.get_command(cli)
    code = command.main(args=argv, prog_name="babelq bench", standalone_mode=False)
    return code if isinstance(code, int) else 0
