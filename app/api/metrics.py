"""Prometheus metrics read from the source of truth, so every process's work is counted.

Jobs are finished by workers in other processes (often other machines), so finished
counts and latencies come from PostgreSQL and queue depths from Redis at scrape time,
cached briefly so frequent scrapes stay cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from app.broker.notify import redis_client
from app.broker.queues import KINDS, queue_keys
from app.config import get_settings
from app.store.db import get_engine

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the submit-to-finish latency histogram.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
CACHE_SECONDS = 5.0

REGISTRY = CollectorRegistry()
SUBMITTED = Counter("babelq_api_jobs_submitted", "Jobs accepted by this api process",
                    ["kind"], registry=REGISTRY)

#: Counts by kind and status and, for succeeded jobs, the latency buckets and sum: one
#: scan of jobs per scrape (there is no index that would make either part cheaper).
_JOBS_SQL = "SELECT kind, status, count(*), " + ", ".join(
    f"count(*) FILTER (WHERE finished_at - created_at <= make_interval(secs => {b}))"
    for b in LATENCY_BUCKETS
) + ", coalesce(sum(extract(epoch FROM finished_at - created_at)), 0) " \
    "FROM jobs GROUP BY kind, status"


class StoreCollector(Collector):
    """Job counts by kind and status, queue depths and latency, read at scrape time."""

    def __init__(self) -> None:
        self._cache: tuple[float, list[Any]] = (0.0, [])

    def collect(self) -> Iterator[Any]:
        now = time.monotonic()
        if now - self._cache[0] > CACHE_SECONDS:
            self._cache = (now, list(self._fresh()))
        yield from self._cache[1]

    def _fresh(self) -> Iterator[Any]:
        try:
            yield from self._jobs()
        except Exception as exc:
            log.warning("metrics: database unavailable: %s", exc)
        try:
            yield self._depths()
        except Exception as exc:
            log.warning("metrics: redis unavailable: %s", exc)

    def _jobs(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("babelq_jobs", "Jobs by kind and status",
                                 labels=["kind", "status"])
        hist = HistogramMetricFamily("babelq_job_latency_seconds",
                                     "Submit to succeeded, by kind", labels=["kind"])
        with get_engine().connect() as conn:
            rows = conn.execute(text(_JOBS_SQL)).all()
        for kind, status, n, *counts, total_sum in rows:
            jobs.add_metric([kind, status], n)
            if status == "succeeded":
                buckets = [(str(b), c) for b, c in zip(LATENCY_BUCKETS, counts, strict=True)]
                hist.add_metric([kind], [*buckets, ("+Inf", n)], float(total_sum))
        yield jobs
        yield hist

    def _depths(self) -> GaugeMetricFamily:
        depth = GaugeMetricFamily("babelq_queue_depth", "Messages waiting in each broker queue",
                                  labels=["queue"])
        client = redis_client(get_settings().redis_url or "")
        for kind in KINDS:
            depth.add_metric([kind], sum(client.llen(k) for k in queue_keys(kind)))
        return depth


REGISTRY.register(StoreCollector())
