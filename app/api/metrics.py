"""/metrics: the whole cluster's numbers, at a cost that does not grow with the jobs table.

- Events (outcomes, retries, lease expiries, republished messages, run time, queue wait,
  governor decisions, api requests) are added up in Redis by the processes that saw
  them (app.jobs.metrics): a few HGETALLs.
- Jobs per kind, priority and status, the backlog per lane and its oldest due job come
  from PostgreSQL counters kept by triggers and one index descent per lane
  (app.jobs.counts): no scan of jobs, whatever its size.
- Broker queue lengths and live workers from Redis.

Every replica of the api answers the same numbers: scrape any one of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from itertools import product
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from app.broker import sums
from app.broker.notify import redis_client
from app.broker.queues import KINDS, queue_keys
from app.config import get_settings
from app.jobs import counts
from app.jobs import metrics as events
from app.store.db import session_scope
from app.store.models import PRIORITIES
from app.webhooks import EVENTS

log = logging.getLogger(__name__)

#: Seconds a scrape's answer is reused, so a burst of scrapes reads the stores once.
CACHE_SECONDS = 2.0

REGISTRY = CollectorRegistry()

#: Labels whose every value is known: their series are shown (as 0) before any event, so
#: increase() and rate() see an alert's first event and dashboards show every lane.
KNOWN = {"kind": KINDS, "priority": tuple(PRIORITIES), "outcome": events.OUTCOME_NAMES,
         "cause": events.CAUSES}
#: Metrics whose labels take other values than KNOWN's.
KNOWN_FOR = {events.WEBHOOK_DELIVERIES.name: {"event": EVENTS,
                                               "outcome": events.DELIVERY_OUTCOMES}}


class StoreCollector(Collector):
    """Reads PostgreSQL counters and Redis at scrape time (cached CACHE_SECONDS)."""

    def __init__(self) -> None:
        self._cache: tuple[float, list[Any]] = (0.0, [])

    def collect(self) -> Iterator[Any]:
        now = time.monotonic()
        if now - self._cache[0] > CACHE_SECONDS:
            self._cache = (now, list(self._fresh()))
        yield from self._cache[1]

    def _fresh(self) -> Iterator[Any]:
        sums.flush()  # this process's own deltas too
        for source in (self._jobs, self._events, self._broker):
            try:
                yield from source()
            except Exception as exc:  # a scrape shows what it can read
                log.warning("metrics: %s unavailable: %s", source.__name__.strip("_"), exc)

    def _jobs(self) -> Iterator[Any]:
        with session_scope() as session:
            counts.fold(session)
        with session_scope() as session:
            lanes = counts.read(session)
            queued = {(c.kind, c.priority): c.n for c in lanes if c.status == "queued"}
            known = sorted({(c.kind, c.priority) for c in lanes})
            oldest = counts.oldest_waiting(session, known)
        jobs = GaugeMetricFamily("babelq_jobs", "Jobs by kind, priority lane and status",
                                 labels=["kind", "priority", "status"])
        for c in lanes:
            jobs.add_metric([c.kind, c.priority, c.status], c.n)
        backlog = GaugeMetricFamily("babelq_queue_backlog", "Queued jobs per kind and priority "
                                    "lane (due or not)", labels=["kind", "priority"])
        age = GaugeMetricFamily("babelq_queue_oldest_seconds", "How long the longest-waiting "
                                "due job of each lane has waited", labels=["kind", "priority"])
        for lane in known:
            backlog.add_metric(list(lane), queued.get(lane, 0))
            age.add_metric(list(lane), oldest.get(lane, 0.0))
        yield from (jobs, backlog, age)

    def _events(self) -> Iterator[Any]:
        for metric in events.ALL:
            yield family(metric, events.read(metric))

    def _broker(self) -> Iterator[Any]:
        depth = GaugeMetricFamily("babelq_queue_depth", "Messages waiting in each broker queue",
                                  labels=["queue"])
        client = redis_client(get_settings().redis_url or "")
        for kind in KINDS:
            depth.add_metric([kind], sum(client.llen(k) for k in queue_keys(kind)))
        yield depth
        live = sums.live_workers()
        workers = GaugeMetricFamily("babelq_workers_live", "Worker nodes that sent a heartbeat "
                                    f"within {sums.LIVE_WINDOW:.0f} s, per queue they consume",
                                    labels=["queue"])
        for kind in KINDS:
            workers.add_metric([kind], live.get(kind, 0))
        yield workers


def family(metric: events.Metric, fields: dict[str, float]) -> Any:
    """A Prometheus family from a metric's Redis hash."""
    labels = list(metric.labels)
    if metric.buckets is None:
        counter = CounterMetricFamily(metric.name, metric.help, labels=labels)
        counts = {tuple(_split(f, len(labels))): v for f, v in fields.items()}
        for label_values in sorted(set(counts) | _known(metric)):
            counter.add_metric(list(label_values), counts.get(label_values, 0.0))
        return counter
    hist = HistogramMetricFamily(metric.name, metric.help, labels=labels)
    series: dict[tuple[str, ...], dict[str, float]] = {v: {} for v in _known(metric)}
    for field, value in fields.items():
        *values, part = field.split(events.SEP)
        series.setdefault(tuple(values[:len(labels)]), {})[part] = value
    for label_values, parts in sorted(series.items()):
        running, buckets = 0.0, []
        for index, bound in enumerate((*metric.buckets, float("inf"))):
            running += parts.get(str(index), 0.0)
            buckets.append((_bound(bound), running))
        hist.add_metric(list(label_values), buckets, parts.get("sum", 0.0))
    return hist


def _known(metric: events.Metric) -> set[tuple[str, ...]]:
    """Every label set of a metric whose labels all have known values (else none)."""
    known = KNOWN_FOR.get(metric.name, KNOWN)
    if not metric.labels or not all(label in known for label in metric.labels):
        return set()
    return set(product(*(known[label] for label in metric.labels)))


def _split(field: str, n: int) -> list[str]:
    return field.split(events.SEP) if n else []


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


REGISTRY.register(StoreCollector())
