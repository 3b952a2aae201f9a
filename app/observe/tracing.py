"""OpenTelemetry traces from submission to outcome; off unless BABELQ_TRACING is on.

A trace starts with the api request that submits (or continues the producer's
`traceparent` header). Its context is stored with the job (jobs.traceparent, or
batches.traceparent for a batch's jobs), not in the broker message: a message may be
republished by the relay, or carry jobs of many submissions, and the job row is what
every worker reads anyway. The worker's chunk span continues the trace of its jobs
(linking them when they come from several), and each job's computation is a span of
its own trace, with its outcome.

Only opentelemetry-api and -sdk and the OTLP/HTTP exporter are used: the few spans
are made here by hand, where an instrumentation package per library (FastAPI, Celery,
SQLAlchemy, Redis) would add a span per statement and hook into every hot path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from app.config import Settings

#: At most this many linked traces on a chunk span (a chunk may mix many submissions).
MAX_LINKS = 32

_tracer: trace.Tracer | None = None


def setup(settings: Settings, service: str) -> None:
    """Export this process's spans over OTLP/HTTP when tracing is on (once per process)."""
    if not settings.tracing or _tracer is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint) if settings.otlp_endpoint \
        else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)


def install(provider: TracerProvider | None) -> None:
    """Trace with this provider from now on (None: tracing off)."""
    global _tracer
    _tracer = provider.get_tracer("babelq") if provider is not None else None


def _forget_after_fork() -> None:
    """A forked child's export thread is gone: it sets up its own (setup())."""
    install(None)


os.register_at_fork(after_in_child=_forget_after_fork)


def enabled() -> bool:
    """Whether spans are being made in this process."""
    return _tracer is not None


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to store with what is submitted."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def _context(traceparent: str | None) -> Context | None:
    return propagate.extract({"traceparent": traceparent}) if traceparent else None


@contextmanager
def request_span(method: str, headers: Mapping[str, str]) -> Iterator[Span | None]:
    """A server span for one api request, continuing the producer's traceparent if any."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(method, context=propagate.extract(headers),
                                       kind=SpanKind.SERVER) as span:
        yield span


def name_request(span: Span | None, method: str, route: str, status: int) -> None:
    """Name the request's span after its route template, with its status."""
    if span is None:
        return
    span.update_name(f"{method} {route}")
    span.set_attributes({"http.request.method": method, "http.route": route,
                         "http.response.status_code": status})
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


@contextmanager
def chunk_span(jobs: Sequence[Any]) -> Iterator[None]:
    """The worker's span of a chunk: a child of its jobs' trace, linked to several ones."""
    if _tracer is None or not jobs:
        yield
        return
    parents = list(dict.fromkeys(j.traceparent for j in jobs if j.traceparent))
    parent = _context(parents[0]) if len(parents) == 1 else None
    links = [] if parent is not None else [
        Link(trace.get_current_span(ctx).get_span_context())
        for ctx in map(_context, parents[:MAX_LINKS]) if ctx is not None]
    with _tracer.start_as_current_span("babelq.run_chunk", context=parent, links=links,
                                       attributes={"babelq.jobs": len(jobs)}):
        yield


@contextmanager
def job_span(job: Any) -> Iterator[Span | None]:
    """One job's computation, in its own submission's trace when it has one."""
    if _tracer is None:
        yield None
        return
    chunk = trace.get_current_span().get_span_context()
    own = _context(job.traceparent)
    if own is not None and trace.get_current_span(own).get_span_context().trace_id \
            == chunk.trace_id:
        own = None  # the chunk continues this job's trace: a child of the chunk
    with _tracer.start_as_current_span(
        f"babelq.job {job.kind}", context=own,
        links=[Link(chunk)] if own is not None and chunk.is_valid else [],
        attributes={"babelq.job.id": job.id, "babelq.job.kind": job.kind,
                    "babelq.job.attempt": job.attempt},
    ) as span:
        yield span


def outcome(span: Span | None, error: dict[str, Any] | None) -> None:
    """Record how a job's computation ended on its span."""
    if span is None:
        return
    span.set_attribute("babelq.job.outcome", "failed" if error else "succeeded")
    if error:
        span.set_status(Status(StatusCode.ERROR, str(error.get("type"))))
