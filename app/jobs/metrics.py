"""Counters and histograms every process records and Redis adds up, so one scrape sees all.

Workers, relays and api processes run in separate containers, often on separate
machines. prometheus_client's multiprocess mode adds up the processes of one host
through a shared directory: each worker container would need its own scrape target,
port and service discovery, and Prometheus would have to sum them. Instead each process
adds its deltas to one Redis hash per metric (HINCRBY, in one MULTI/EXEC about once a
second), and the api's /metrics reads those hashes: the whole cluster, from any api
replica, at a cost set by the number of series, never by jobs or processes (the adding
up is app.broker.sums).

What describes a job's transition is counted only when its transaction commits
(on_commit), so a rolled back claim or a fenced-out late outcome counts nothing.
A process killed hard loses at most its last second of counts; an emptied Redis
starts the counters again from zero, which Prometheus' rate() reads as a reset.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.broker import sums
from app.store.models import PRIORITY_NAMES

SEP = sums.SEP

RUN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
               30, 60, 300)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800,
                3600, 14400)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
UNIT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


#: Values of the outcome and cause labels.
OUTCOME_NAMES = ("succeeded", "failed_attempt", "dead", "cancelled")
#: Values of a webhook delivery attempt's outcome label.
DELIVERY_OUTCOMES = ("delivered", "failed_attempt")
CAUSES = ("error", "lease_expired")


@dataclass(frozen=True)
class Metric:
    """A counter (buckets None) or a histogram, and the Redis hash that adds it up."""

    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None

    @property
    def key(self) -> str:
        """The Redis hash: one field per label set (and bucket, and sum)."""
        return f"babelq:metrics:{self.name}"


SUBMITTED = Metric("babelq_jobs_submitted", "Jobs stored", ("kind", "priority"))
OUTCOMES = Metric(
    "babelq_job_outcomes",
    "Ends of attempts: succeeded, failed_attempt (a retry is scheduled), dead, cancelled",
    ("kind", "outcome"))
RETRIES = Metric("babelq_job_retries_scheduled", "Retries scheduled, by cause "
                 "(error: the attempt raised; lease_expired: its worker vanished)",
                 ("kind", "cause"))
LEASE_EXPIRIES = Metric("babelq_lease_expiries", "Running jobs whose lease ran out", ("kind",))
REPUBLISHED = Metric("babelq_relay_republished_messages", "Messages the relay sent again: "
                     "not taken within requeue_after (lost by Redis, never published, or "
                     "a claim a crash undid)", ("kind", "priority"))
RUN_SECONDS = Metric("babelq_job_run_seconds", "Computing one attempt of a job", ("kind",),
                     RUN_BUCKETS)
QUEUE_WAIT = Metric("babelq_job_queue_wait_seconds", "From submission to first start",
                    ("kind", "priority"), WAIT_BUCKETS)
LATENCY = Metric("babelq_job_latency_seconds", "From submission to succeeded", ("kind",),
                 WAIT_BUCKETS)
DECISIONS = Metric("babelq_governor_decisions", "Governor decisions of evaluate jobs",
                   ("decision", "stop_reason"))
FINAL_RISK = Metric("babelq_governor_final_risk", "Risk of the final governor cycle", (),
                    UNIT_BUCKETS)
FINAL_SIMILARITY = Metric("babelq_governor_final_similarity",
                          "Similarity of the final governor cycle", (), UNIT_BUCKETS)
WEBHOOK_DELIVERIES = Metric("babelq_webhook_deliveries", "Webhook delivery attempts: "
                            "delivered (2xx) or failed_attempt (retried until retry_until)",
                            ("event", "outcome"))
API_REQUESTS = Metric("babelq_api_requests", "HTTP requests the api answered",
                      ("method", "route", "status"))
API_SECONDS = Metric("babelq_api_request_duration_seconds", "Time to answer an HTTP request",
                     ("method", "route"), API_BUCKETS)

ALL: tuple[Metric, ...] = (SUBMITTED, OUTCOMES, RETRIES, LEASE_EXPIRIES, REPUBLISHED, RUN_SECONDS,
                           QUEUE_WAIT, LATENCY, DECISIONS, FINAL_RISK, FINAL_SIMILARITY,
                           WEBHOOK_DELIVERIES, API_REQUESTS, API_SECONDS)


#: (labels, value) pairs of one metric.
Items = Iterable[tuple[Sequence[str], float]]


def record(metric: Metric, labels: Sequence[str], value: float = 1) -> None:
    """Add value to a counter, or observe it in a histogram, now."""
    record_many(metric, [(labels, value)])


def record_many(metric: Metric, items: Items) -> None:
    """record() each (labels, value) pair: added up here first, one field per label set."""
    _add(metric, _tally(metric, items))


def _add(metric: Metric, fields: dict[str, float]) -> None:
    sums.add(metric.key, fields)


def _tally(metric: Metric, items: Items) -> dict[str, float]:
    """Hash fields and amounts: a counter's per label set; a histogram's buckets and sum."""
    totals: defaultdict[tuple[str, ...], float] = defaultdict(float)
    if metric.buckets is None:
        for labels, value in items:
            totals[tuple(labels)] += value
        return {SEP.join(labels): total for labels, total in totals.items()}
    bounds = metric.buckets
    hits: defaultdict[tuple[str, ...], Counter[int]] = defaultdict(Counter)
    for labels, value in items:
        key = tuple(labels)  # the same object when labels is a tuple
        hits[key][bisect_left(bounds, value)] += 1
        totals[key] += value
    fields = {f"{SEP.join(k)}{SEP}{i}": float(n) for k, c in hits.items() for i, n in c.items()}
    fields.update({f"{SEP.join(k)}{SEP}sum": total for k, total in totals.items()})
    return fields


_ON_COMMIT = "babelq_metrics"


def on_commit(session: Session | None, metric: Metric, items: Items) -> None:
    """record_many() once (and only if) the session's transaction commits; at once with no
    session (the statement that wrote them committed by itself, in autocommit)."""
    if session is None:
        record_many(metric, items)
        return
    session.info.setdefault(_ON_COMMIT, []).append((metric, _tally(metric, items)))


@event.listens_for(Session, "after_commit")
def _record_committed(session: Session) -> None:
    for metric, fields in session.info.pop(_ON_COMMIT, ()):
        _add(metric, fields)


@event.listens_for(Session, "after_rollback")
def _drop_rolled_back(session: Session) -> None:
    session.info.pop(_ON_COMMIT, None)


# What each transition counts: called by app.jobs where the transition is written.


def submitted(session: Session | None, lanes: Mapping[tuple[str, int], int]) -> None:
    """Jobs stored: how many per (kind, priority number)."""
    on_commit(session, SUBMITTED, [((k, PRIORITY_NAMES[p]), n) for (k, p), n in lanes.items()])


def started(session: Session | None, taken: Iterable[Any]) -> None:
    """Queue wait of jobs starting for the first time (Claimed: kind, priority, waited)."""
    on_commit(session, QUEUE_WAIT, (((c.kind, PRIORITY_NAMES[c.priority]), c.waited)
                                    for c in taken if c.first))


def succeeded(session: Session | None, kept: Sequence[Any]) -> None:
    """Outcome, run time and latency of Outcomes whose success this transaction writes."""
    now = time.monotonic()
    on_commit(session, OUTCOMES, (((o.job.kind, "succeeded"), 1) for o in kept))
    on_commit(session, RUN_SECONDS, (((o.job.kind,), o.seconds) for o in kept))
    on_commit(session, LATENCY, (((o.job.kind,), o.job.waited + now - o.job.taken)
                                 for o in kept))


def failed(session: Session, outcomes: Sequence[Any], rows: Sequence[Any]) -> None:
    """Failed attempts (rows: id, status of each job written): dead or retried."""
    by_id = {o.job.id: o for o in outcomes}
    ends = [(by_id[r.id], r.status) for r in rows]
    on_commit(session, OUTCOMES, [((o.job.kind, "dead" if status == "dead"
                                    else "failed_attempt"), 1) for o, status in ends])
    on_commit(session, RETRIES, [((o.job.kind, "error"), 1) for o, status in ends
                                 if status != "dead"])
    on_commit(session, RUN_SECONDS, [((o.job.kind,), o.seconds) for o, _ in ends])


def decided(session: Session, decisions: Sequence[dict[str, Any]]) -> None:
    """Governor decisions written, with their final cycle's risk and similarity."""
    on_commit(session, DECISIONS, [((d["decision"], d["stop_reason"] or ""), 1)
                                   for d in decisions])
    on_commit(session, FINAL_RISK, [((), d["risk"]) for d in decisions])
    on_commit(session, FINAL_SIMILARITY, [((), d["similarity"]) for d in decisions])


def republished(session: Session, sent: Sequence[Any]) -> None:
    """Messages sent again (Sent: kind, priority number)."""
    on_commit(session, REPUBLISHED, (((s.kind, PRIORITY_NAMES[s.priority]), 1) for s in sent))


def delivered(session: Session, attempts: Sequence[Any]) -> None:
    """Webhook delivery attempts written (Attempt: delivery.event, ok)."""
    on_commit(session, WEBHOOK_DELIVERIES, (((a.delivery.event, "delivered" if a.ok
                                              else "failed_attempt"), 1) for a in attempts))


def cancelled(session: Session, rows: Sequence[Any]) -> None:
    """Jobs cancelled (rows: kind)."""
    on_commit(session, OUTCOMES, [((r.kind, "cancelled"), 1) for r in rows])


def expired(session: Session, rows: Sequence[Any], statuses: Sequence[str]) -> None:
    """Leases that ran out (rows: kind), and what became of their jobs."""
    ends = list(zip(rows, statuses, strict=True))
    on_commit(session, LEASE_EXPIRIES, [((r.kind,), 1) for r in rows])
    on_commit(session, OUTCOMES, [((r.kind, "dead"), 1) for r, s in ends if s == "dead"])
    on_commit(session, RETRIES, [((r.kind, "lease_expired"), 1) for r, s in ends
                                 if s != "dead"])


def read(metric: Metric) -> dict[str, float]:
    """Every field of a metric's hash, added up over all processes."""
    return sums.read(metric.key)
