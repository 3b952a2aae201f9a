"""`babelq bench`: ingestion, end to end and latency of the real stack, against plain Celery.

One run starts everything it needs (embedded PostgreSQL and Redis in a temp dir unless
URLs are given, a fresh database, the api, one Celery worker with a prefork pool of
`workers` processes, the relay, and the naive baseline's worker), measures, prints a
table (or JSON) and returns the numbers. Single jobs are submitted and waited for with
our Python client (app.client.Client); batches are streamed up with httpx.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from app.client import Client
from app.ops.bench import naive
from app.ops.bench.latency import naive_first, ours_latency, side_by_side
from app.ops.bench.report import assemble, latency_report, machine, show
from app.ops.bench.system import (
    MB,
    Procs,
    RedisPeak,
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
from app.ops.supervisor import free_port

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


def batch_outcome(database_url: str, batch_id: int) -> dict[str, int]:
    """Jobs per status and results persisted, read from PostgreSQL itself."""
    from sqlalchemy import text

    from app.store.db import engine_for

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
    from app.store.db import engine_for

    engine = engine_for(srv.database_url)
    naive.create_tables(engine)
    naive.configure(srv.redis_url)
    checkpointed = settle(srv.database_url)
    started = time.monotonic()
    naive.ingest(engine, [f"naive {i}" for i in range(n)])
    ingestion = rate(n, time.monotonic() - started)
    start_naive_worker(srv, procs, rss, workers)
    started = time.monotonic()
    wait_for(lambda: naive.succeeded(engine) >= n, procs, timeout=600)
    drain = rate(n, time.monotonic() - started)
    first = naive.max_id(engine)
    checkpointed &= settle(srv.database_url)
    started = time.monotonic()
    naive.ingest(engine, [f"naive e2e {i}" for i in range(n)])
    done = wait_for(lambda: naive.succeeded(engine, first) >= n, procs, timeout=600)
    # Its worker stays up for the single-job latency, measured beside ours (our_phase).
    return {"ingestion": ingestion, "processing": drain, "end_to_end": rate(n, done - started),
            "succeeded": naive.succeeded(engine, first), "checkpointed": checkpointed}


def start_naive_worker(srv: Servers, procs: Procs, rss: RssSampler, workers: int) -> None:
    """The baseline's Celery worker (its tables made first when missing), watched for RSS."""
    from app.store.db import engine_for

    naive.configure(srv.redis_url)
    naive.NaiveBase.metadata.create_all(engine_for(srv.database_url))
    worker = procs.start("naive-worker", naive_worker_args(workers))
    rss.watch("naive_worker", worker.process.pid)


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


def our_phase(client: httpx.Client, producer: Client, srv: Servers, procs: Procs,
              rss: RssSampler, n: int, samples: int) -> dict[str, Any]:
    """Warm up, latency beside naive Celery's on the idle system, then one batch.

    Batches go up through `client` (a streamed body), single jobs through `producer`.
    The naive worker is stopped after the latency samples, before the batch.
    """
    warm = upload(client, WARMUP_LINES, "warm")
    wait_for(lambda: batch_done(client, warm["id"]), procs, timeout=120)
    lat, naive_lat, checkpointed = latency_phase(producer, srv, samples)
    procs.stop("naive-worker")
    checkpointed &= settle(srv.database_url)
    # Redis holds only each lane's window of messages, however big the batch: its peak
    # over the upload and the drain shows it (the batch waits in PostgreSQL).
    redis_peak = RedisPeak(srv.redis_url)
    redis_before = redis_peak.now_mb()
    redis_peak.start()
    try:
        ingestion, growth = measured_upload(client, rss, n, "job")
        done = wait_for(lambda: batch_done(client, ingestion["id"]), procs,
                        timeout=max(600, n / 200))
    finally:
        redis_peak.halt.set()
    outcome = batch_outcome(srv.database_url, ingestion["id"])
    # "Done" counts dead jobs too; the naive side counts only stored results, so must we.
    if outcome["results"] != n:
        raise RuntimeError(f"{n - outcome['results']} of {n} jobs ended without a result: "
                           f"{outcome}")
    return {"ingestion": rate(n, ingestion["seconds"]),
            "end_to_end": {**rate(n, done - ingestion["started"]), **outcome},
            "latency_ms": lat, "naive_latency_ms": naive_lat, "api_growth_mb": growth,
            "redis_mb": {"before_upload": redis_before,
                         "peak_over_batch": max(redis_peak.peak / MB, redis_before)},
            "checkpointed": checkpointed}


def latency_phase(client: Client, srv: Servers, samples: int
                  ) -> tuple[dict[str, Any], dict[str, float], bool]:
    """Warm both systems' single-job paths, settle, then (ours, naive, checkpointed).

    Ours through our Python client, as a producer submits one job and waits for it.
    """
    naive_first(srv.database_url)
    ours_latency(client, WARMUP_SINGLES, "warm single")
    side_by_side(client, srv.database_url, WARMUP_SINGLES, "warm pair")
    checkpointed = settle(srv.database_url)
    ours, base, one = side_by_side(client, srv.database_url, samples, "single")
    ours["one_request"] = one  # POST ?wait: submit and wait in one request
    return ours, base, checkpointed


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
            key = admin_key(srv.database_url)
            with httpx.Client(base_url=url, headers=_bearer(key), timeout=60) as client, \
                    Client(url, key, timeout=60) as producer:
                ours = our_phase(client, producer, srv, procs, rss, n, latency_samples)
        finally:
            procs.stop()
            gc.unfreeze()  # settle() froze this process's heap; a caller may run on
        report = assemble(ours, base, rss, at_start, n=n, naive_n=naive_n, workers=workers)
    show(report, as_json)
    return report


def run_latency(
    samples: int = 100,
    workers: int = 2,
    as_json: bool = False,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """Only the single-job latency, ours beside naive Celery's: quick, for iterating."""
    at_start = machine()
    with servers(database_url, redis_url) as srv, RssSampler() as rss:
        procs = Procs(child_env(srv), srv.tmp / "logs")
        try:
            start_naive_worker(srv, procs, rss, workers)
            url = start_stack(srv, procs, rss, workers)
            with Client(url, admin_key(srv.database_url), timeout=60) as producer:
                ours, base, checkpointed = latency_phase(producer, srv, samples)
        finally:
            procs.stop()
            gc.unfreeze()
    report = latency_report(ours, base, at_start, workers=workers, checkpointed=checkpointed)
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
                redis_before = redis_memory(srv.redis_url)
                reply, growth = measured_upload(client, rss, lines, "job")
                redis_after = redis_memory(srv.redis_url)
        finally:
            procs.stop()
    report = {"machine": machine(), "lines": lines,
              "ingestion": rate(lines, reply["seconds"]), "api_growth_mb": growth,
              "api_peak_mb": rss.peak.get("api", 0) / MB, "target_mb": 50, "met": growth < 50,
              # Only a window of messages reaches Redis; the batch waits in PostgreSQL.
              "redis_mb": {"before": redis_before, "after": redis_after}}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        Console().print(
            f"api RSS growth over a {lines:,}-line ingestion: {growth:.1f} MB "
            f"(target < 50 MB: {'met' if growth < 50 else 'MISSED'}); "
            f"{reply['seconds']:.1f} s, {lines / reply['seconds']:,.0f} jobs/s; Redis "
            f"{redis_before:.2f} MB before, {redis_after:.2f} MB after"
        )
    return report


def redis_memory(url: str) -> float:
    """Redis' used_memory now, MB."""
    import redis

    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"]) / MB


def _auth(srv: Servers) -> dict[str, str]:
    return _bearer(admin_key(srv.database_url))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


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
    latency_only: Annotated[bool, typer.Option(
        help="Instead: only single-job latency, ours beside naive Celery's.")] = False,
    fairness: Annotated[bool, typer.Option(
        "--fairness", help="Instead: a small tenant's latency beside a big tenant's backlog, "
        "and a weight-3 tenant's share (encode, then enumerate with pages).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    database_url: Annotated[str | None, typer.Option(
        help="A PostgreSQL admin URL (a fresh database is made there); default embedded.")] = None,
    redis_url: Annotated[str | None, typer.Option(help="A Redis URL; default embedded.")] = None,
) -> None:
    """Ingestion, end to end and latency of the real stack, against plain Celery."""
    if fairness:
        from app.ops.bench.fairness import run_fairness

        run_fairness(workers, as_json, database_url, redis_url)
    elif memory:
        run_memory_check(memory, as_json, database_url, redis_url)
    elif latency_only:
        run_latency(latency_samples, workers, as_json, database_url, redis_url)
    else:
        run_bench(n, workers, latency_samples, as_json, database_url, redis_url, naive_n)


def main(argv: list[str]) -> int:
    """`babelq bench ARGS`: parse argv and run; the exit code."""
    command = typer.main.get_command(cli)
    code = command.main(args=argv, prog_name="babelq bench", standalone_mode=False)
    return code if isinstance(code, int) else 0
