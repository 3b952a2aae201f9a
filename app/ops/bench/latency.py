"""Single-job latency: ours (submit, then long-poll) beside a bare Celery task, sample by sample.

Our side's producer is our Python client, `app.client.Client`, as a service that submits
one job and waits for it uses it: its time (encoding, the keep-alive connection, parsing
the answers) is in every sample. The baseline is what a service gets from Celery alone:
`apply_async` of a plain task that computes the same encode and commits one durable
result row, while the client polls for that row every millisecond. Samples alternate
between the two systems, so both meet the same load on a machine whose other users come
and go.
"""

from __future__ import annotations

import itertools
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from kombu import Producer

from app.client import TERMINAL, Client
from app.ops.bench import naive
from app.ops.bench.report import STAGES
from app.store.db import libpq_url

#: Seconds between a naive client's polls of its result row.
NAIVE_POLL = 0.001
#: Seconds of rest before each sample, so every sample starts on an idle system (the
#: previous one's trailing work, e.g. a worker's task events, is done by then).
REST = 0.005


def submit_and_wait(client: Client, kind: str, params: dict[str, Any], *,
                    one_request: bool = False, wait: float = 10) -> dict[str, Any]:
    """Submit one job and long-poll it until terminal: POST /v1/jobs, then GET ?wait (with
    one_request, POST /v1/jobs?wait first, answered once the job is done)."""
    job = client.submit(kind, params, wait=wait if one_request else 0)
    while job["status"] not in TERMINAL:
        job = client.get(job["id"], wait=wait)
    return job


def single_job(client: Client, text: str, *, one_request: bool = False
               ) -> tuple[float, dict[str, float]]:
    """Submit one job and wait for `succeeded`: total ms and ms per stage.

    The POST answers at once and a GET ?wait long-polls; with one_request, POST
    /v1/jobs?wait answers once the job is done, in one request.
    """
    began, started = time.time(), time.perf_counter()
    job = submit_and_wait(client, "encode", {"text": text}, one_request=one_request)
    total = (time.perf_counter() - started) * 1000
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    marks = [began, *(datetime.fromisoformat(job[k]).timestamp()
                      for k in ("created_at", "started_at", "finished_at")), time.time()]
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(marks)]
    return total, dict(zip(STAGES, gaps, strict=True))


def naive_single(conn: psycopg.Connection[Any], producer: Producer, text: str,
                 timeout: float = 10.0) -> float:
    """apply_async one bare encode task, poll its result row until committed: ms taken."""
    key = uuid.uuid4().hex
    started = time.perf_counter()
    naive.encode_one.apply_async(args=[key, text], queue=naive.NAIVE_QUEUE, producer=producer)
    cur = conn.cursor()
    while cur.execute("SELECT 1 FROM naive_outputs WHERE key = %s", (key,)).fetchone() is None:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"naive task {key} not done within {timeout:.0f}s")
        time.sleep(NAIVE_POLL)
    return (time.perf_counter() - started) * 1000


def naive_first(database_url: str, timeout: float = 120.0) -> None:
    """One naive sample, waiting as long as the baseline's worker takes to start."""
    with _naive_client(database_url) as (conn, producer):
        naive_single(conn, producer, "warm naive", timeout)


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p95, p99, mean and max of milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"samples": len(samples), "p50": cuts[49], "p95": cuts[94], "p99": cuts[98],
            "mean": statistics.fmean(samples), "max": max(samples)}


def ours_latency(client: Client, samples: int, tag: str) -> dict[str, Any]:
    """Percentiles of our single-job latency alone, and the median of each stage."""
    return _summary([single_job(client, f"{tag} {i}") for i in range(samples)])


def side_by_side(client: Client, database_url: str, samples: int, tag: str
                 ) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """(ours, naive, ours in one request): samples of each, in turn, each after a rest."""
    ours, base, one = [], [], []
    with _naive_client(database_url) as (conn, producer):
        for i in range(samples):
            time.sleep(REST)
            base.append(naive_single(conn, producer, f"{tag} {i}"))
            time.sleep(REST)
            ours.append(single_job(client, f"{tag} {i}"))
            time.sleep(REST)
            one.append(single_job(client, f"{tag} one {i}", one_request=True))
    return _summary(ours), percentiles(base), _summary(one)


def _summary(runs: list[tuple[float, dict[str, float]]]) -> dict[str, Any]:
    stages = {k: statistics.median(r[1][k] for r in runs) for k in STAGES}
    return {**percentiles([r[0] for r in runs]), "median_stages": stages}


@contextmanager
def _naive_client(database_url: str) -> Iterator[tuple[psycopg.Connection[Any], Producer]]:
    """The naive client's database connection and broker producer, both open throughout.

    A producer on a connection of our own, not Celery's pool: the pool keeps the broker
    URL it was made with, and one process may run several benches, each with its Redis.
    """
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn, \
            naive.naive_app.connection_for_write() as broker:
        yield conn, broker.Producer()

