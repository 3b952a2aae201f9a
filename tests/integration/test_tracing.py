"""OpenTelemetry: one trace from the producer's request to the job's outcome, in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.config import Settings
from app.observe import tracing
from tests.faults.stack import wait_for
from tests.integration.conftest import auth
from tests.integration.test_batches import NDJSON, ndjson, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker", "relay")]

#: The producer's own span, as its traceparent header names it.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for the api and the in-process worker alike."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)


def of_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans()
            if s.context is not None and s.context.trace_id == trace_id]


def by_name(found: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in found if s.name == name]


def test_off_by_default_makes_no_spans(settings: Settings) -> None:
    assert settings.tracing is False
    assert not tracing.enabled() and tracing.current_traceparent() is None


def test_a_job_is_traced_from_the_producers_request_to_its_outcome(
    api: TestClient, key_a: str, spans: InMemorySpanExporter,
) -> None:
    header = {"traceparent": f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"}
    created = api.post("/v1/jobs", json={"kind": "encode", "params": {"text": "traced"}},
                       headers={**auth(key_a), **header})
    assert created.status_code == 201
    job = _wait(api, key_a, created.json()["id"])
    assert job["status"] == "succeeded"
    trace_id = int(TRACE_ID, 16)
    found: list[ReadableSpan] = []

    def complete() -> bool:
        found[:] = of_trace(spans, trace_id)
        return bool(by_name(found, "babelq.job encode"))

    wait_for("the job's span", complete, 20)
    (request,) = by_name(found, "POST /v1/jobs")
    assert request.parent is not None and request.parent.span_id == int(PRODUCER_SPAN, 16)
    assert request.attributes is not None and request.attributes["http.route"] == "/v1/jobs"
    (chunk,) = by_name(found, "babelq.run_chunk")
    assert chunk.parent is not None and chunk.parent.span_id == request.context.span_id
    (done,) = by_name(found, "babelq.job encode")
    assert done.parent is not None and done.parent.span_id == chunk.context.span_id
    assert done.attributes is not None
    assert done.attributes["babelq.job.id"] == job["id"]
    assert done.attributes["babelq.job.outcome"] == "succeeded"


def _wait(api: TestClient, key: str, job_id: int) -> dict[str, Any]:
    for _ in range(30):
        job = api.get(f"/v1/jobs/{job_id}", params={"wait": 10}, headers=auth(key)).json()
        if job["status"] in ("succeeded", "dead", "cancelled"):
            return dict(job)
    raise AssertionError(f"job {job_id} did not finish")


def test_a_batch_is_traced_from_its_upload(
    api: TestClient, key_a: str, spans: InMemorySpanExporter,
) -> None:
    lines = [{"kind": "encode", "params": {"text": f"traced {i}"}} for i in range(5)]
    upload = api.post("/v1/batches", content=ndjson(lines), headers={**auth(key_a), **NDJSON})
    assert upload.status_code == 202
    wait_done(api, key_a, upload.json()["id"])
    (request,) = [s for s in spans.get_finished_spans() if s.name == "POST /v1/batches"]
    trace_id = request.context.trace_id

    def all_jobs() -> bool:
        return len(by_name(of_trace(spans, trace_id), "babelq.job encode")) == 5

    wait_for("a span per job of the batch", all_jobs, 20)
