"""Bulk batches: streamed NDJSON ingestion, status with rate and ETA, results, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import text

from app import jobs
from app.api.deps import IdPath, PrincipalDep, SessionDep
from app.api.errors import ApiError
from app.api.metrics import SUBMITTED
from app.api.schemas import ERRORS, BatchCreated, BatchRead, ErrorBody, Priority
from app.config import get_settings
from app.core.status import JobStatus
from app.jobs.admission import check_submission, precheck_batch
from app.jobs.ingest import Ingestor, LineSplitter
from app.jobs.keys import Principal
from app.store.db import new_session
from app.store.models import Batch

router = APIRouter(prefix="/v1/batches", tags=["batches"])

#: Lines validated and stored per database round of an upload.
BLOCK_LINES = 5000


async def _blocks(request: Request, splitter: LineSplitter) -> Any:
    block: list[tuple[int, bytes | None]] = []
    async for chunk in request.stream():
        block += splitter.push(chunk)
        if len(block) >= BLOCK_LINES:
            yield block
            block = []
    block += splitter.close()
    if block:
        yield block


def _json_lines(body: bytes) -> list[tuple[int, bytes | None]]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list) or set(doc) - {"jobs"}:
        raise ApiError(422, 'a JSON batch is {"jobs": [...]}',
                       [{"field": "jobs", "message": "a list of jobs is required"}])
    return [(i, orjson.dumps(item)) for i, item in enumerate(doc["jobs"], start=1)]


#: The upload is read from the stream by the route itself, so its body is documented here.
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/x-ndjson": {"schema": {
        "type": "string", "description": "one job per line, each as the body of POST /v1/jobs"}},
    "application/json": {"schema": {
        "type": "object", "required": ["jobs"], "additionalProperties": False,
        "properties": {"jobs": {"type": "array",
                                "items": {"$ref": "#/components/schemas/JobCreate"}}},
    }},
}}}


@router.post("", status_code=202, response_model=BatchCreated, openapi_extra=UPLOAD_BODY,
             responses={**ERRORS, 415: {"model": ErrorBody}})
async def create_batch(
    request: Request,
    principal: PrincipalDep,
    priority: Priority = "normal",
) -> BatchCreated:
    """Ingest a batch: NDJSON (one job per line, streamed) or JSON {"jobs": [...]}."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/x-ndjson", "application/json", "application/jsonl"):
        raise ApiError(415, "send application/x-ndjson (one job per line) or application/json")
    session = new_session()
    try:
        await run_in_threadpool(precheck_batch, session, principal)
        ingestor = await run_in_threadpool(Ingestor, session, principal, priority)
        if ctype == "application/json":
            body = await request.body()
            await run_in_threadpool(lambda: ingestor.feed(_json_lines(body)))
        else:
            await _stream_into(request, ingestor)
        await run_in_threadpool(check_submission, session, principal, ingestor.accepted,
                                batch_id=ingestor.batch_id)
        created = BatchCreated(**await run_in_threadpool(ingestor.commit))
        for kind, n in ingestor.accepted_by_kind().items():
            SUBMITTED.labels(kind).inc(n)
        return created
    finally:
        await run_in_threadpool(session.close)


async def _stream_into(request: Request, ingestor: Ingestor) -> None:
    """Prepare block k+1 while PostgreSQL stores block k, so the two cores work together.

    Nearly all of a block's Python work (parsing, validation, hashing, COPY text) is in
    prepare; store streams the bytes and waits, leaving the interpreter to prepare. Rows
    with an idempotency key are the exception: store builds their INSERT parameters.
    """
    splitter = LineSplitter(get_settings().max_line_bytes)
    storing: asyncio.Future[None] | None = None
    try:
        async for block in _blocks(request, splitter):
            ready = await run_in_threadpool(ingestor.prepare, block)
            if storing is not None:
                await storing
            storing = asyncio.ensure_future(run_in_threadpool(ingestor.store, ready))
    finally:
        if storing is not None:
            await storing


def get_batch(session: Any, principal: Principal, batch_id: int) -> Batch:
    """The batch if the caller may see it; 404 otherwise."""
    batch = session.get(Batch, batch_id)
    if batch is None or (batch.tenant_id != principal.tenant_id and not principal.is_admin):
        raise ApiError(404, f"batch {batch_id} not found")
    return batch


def batch_read(batch: Batch) -> BatchRead:
    """Counts, progress, rate and ETA of a batch."""
    counts = {s.value: getattr(batch, s.value) for s in JobStatus}
    finished = counts["succeeded"] + counts["dead"] + counts["cancelled"]
    done = batch.total > 0 and finished == batch.total
    rate = eta = None
    if batch.started_at is not None and finished:
        end = batch.finished_at if done and batch.finished_at else datetime.now(UTC)
        elapsed = max((end - batch.started_at).total_seconds(), 1e-3)
        rate = finished / elapsed
        eta = 0.0 if done else (batch.total - finished) / rate
    return BatchRead(
        id=batch.id, total=batch.total, rejected=batch.rejected, counts=counts, done=done,
        progress=finished / batch.total if batch.total else 0.0, jobs_per_second=rate,
        eta_seconds=eta, created_at=batch.created_at, started_at=batch.started_at,
        finished_at=batch.finished_at if done else None,
    )


@router.get("/{batch_id}", response_model=BatchRead, responses=ERRORS)
def read_batch(batch_id: IdPath, session: SessionDep, principal: PrincipalDep) -> BatchRead:
    """Counts per status, progress, jobs/s and ETA."""
    return batch_read(get_batch(session, principal, batch_id))


_RESULTS = text(
    "SELECT j.line, j.id, j.status, r.result, j.error FROM jobs j "
    "LEFT JOIN results r ON r.job_id = j.id "
    "WHERE j.batch_id = :b AND j.line > :after ORDER BY j.line LIMIT :limit"
)


def _result_lines(rows: Sequence[Any]) -> Iterator[bytes]:
    for line, job_id, status, result, error in rows:
        if error:
            error = {k: v for k, v in error.items() if k != "traceback"}
        yield orjson.dumps({"line": line, "job_id": job_id, "status": status,
                            "result": result, "error": error}) + b"\n"


@router.get("/{batch_id}/results", responses={
    200: {"content": {"application/x-ndjson": {}}, "description": "one JSON object per line"},
    **ERRORS,
})
def read_batch_results(
    batch_id: IdPath,
    session: SessionDep,
    principal: PrincipalDep,
    cursor: Annotated[int, Query(ge=0, description="last line already read")] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> StreamingResponse:
    """Results in line order as NDJSON; the X-Next-Cursor header fetches the next page."""
    get_batch(session, principal, batch_id)
    rows = session.execute(_RESULTS, {"b": batch_id, "after": cursor, "limit": limit}).all()
    headers = {"X-Next-Cursor": str(rows[-1][0])} if len(rows) == limit else {}
    return StreamingResponse(_result_lines(rows), media_type="application/x-ndjson",
                             headers=headers)


@router.post("/{batch_id}/cancel", response_model=BatchRead, responses=ERRORS)
def cancel_batch(batch_id: IdPath, session: SessionDep, principal: PrincipalDep) -> BatchRead:
    """Cancel every job of the batch that has not started."""
    batch = get_batch(session, principal, batch_id)
    jobs.cancel_batch(session, batch_id, actor=principal.actor)
    session.commit()
    # The counters moved in SQL; the loaded row (kept across commit) must be re-read.
    session.refresh(batch)
    return batch_read(batch)

