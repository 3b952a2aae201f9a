"""Bulk batches: streamed NDJSON ingestion, status with rate and ETA, results, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app import jobs
from app.api import uploads
from app.api.deps import IdPath, PrincipalDep, SessionDep
from app.api.errors import ApiError
from app.api.schemas import ERRORS, BatchCreated, BatchRead, ErrorBody, Priority
from app.config import get_settings
from app.jobs import reads
from app.jobs.admission import check_submission, precheck_batch
from app.jobs.documents import batch_read
from app.jobs.ingest import Ingestor
from app.jobs.keys import Principal
from app.store.db import autocommit, new_session
from app.store.models import Batch

router = APIRouter(prefix="/v1/batches", tags=["batches"])


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
             responses={**ERRORS, 408: {"model": ErrorBody}, 415: {"model": ErrorBody}})
async def create_batch(
    request: Request,
    principal: PrincipalDep,
    priority: Priority = "normal",
) -> BatchCreated:
    """Ingest a batch: NDJSON (one job per line, streamed) or JSON {"jobs": [...]}."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/x-ndjson", "application/json", "application/jsonl"):
        raise ApiError(415, "send application/x-ndjson (one job per line) or application/json")
    settings = get_settings()
    await run_in_threadpool(_precheck, principal)
    body = (uploads.json_blocks(request, settings.ingest_block_bytes)
            if ctype == "application/json" else
            uploads.ndjson_blocks(request, settings.max_line_bytes, settings.ingest_block_bytes))
    blocks = uploads.within(body, settings.body_timeout)
    # No transaction (no pooled connection) until the first block is in: a client that
    # is slow to send holds nothing while it dawdles.
    first = await anext(blocks, None)
    session = new_session()
    try:
        ingestor = await run_in_threadpool(Ingestor, session, principal, priority)
        await _stream_into(first, blocks, ingestor)
        await run_in_threadpool(check_submission, session, principal, ingestor.accepted,
                                batch_id=ingestor.batch_id)
        return BatchCreated(**await run_in_threadpool(ingestor.commit))
    finally:
        await run_in_threadpool(session.close)


def _precheck(principal: Principal) -> None:
    """precheck_batch in a statement of its own: its connection goes back to the pool."""
    with autocommit() as session:
        precheck_batch(session, principal)


async def _stream_into(block: uploads.Block | None, blocks: AsyncIterator[uploads.Block],
                       ingestor: Ingestor) -> None:
    """Prepare block k+1 while PostgreSQL stores block k, so the two cores work together.

    Nearly all of a block's Python work (parsing, validation, hashing, COPY text) is in
    prepare; store streams the bytes and waits, leaving the interpreter to prepare. Rows
    with an idempotency key are the exception: store builds their INSERT parameters.
    """
    storing: asyncio.Future[None] | None = None
    try:
        while block is not None:
            ready = await run_in_threadpool(ingestor.prepare, block)
            if storing is not None:
                await storing
            storing = asyncio.ensure_future(run_in_threadpool(ingestor.store, ready))
            block = await anext(blocks, None)
    finally:
        if storing is not None:
            await storing


def get_batch(session: Any, principal: Principal, batch_id: int) -> Batch:
    """The batch if the caller may see it; 404 otherwise."""
    batch = session.get(Batch, batch_id)
    if batch is None or (batch.tenant_id != principal.tenant_id and not principal.is_admin):
        raise ApiError(404, f"batch {batch_id} not found")
    return batch


@router.get("/{batch_id}", response_model=BatchRead, responses=ERRORS)
def read_batch(batch_id: IdPath, session: SessionDep, principal: PrincipalDep) -> BatchRead:
    """Counts per status, progress, jobs/s and ETA."""
    return batch_read(get_batch(session, principal, batch_id))


def _fragment(json_text: str | None) -> orjson.Fragment | None:
    return None if json_text is None else orjson.Fragment(json_text)


def _result_lines(batch_id: int, after: int, limit: int) -> Iterator[bytes]:
    """The page as NDJSON, a slice at a time (see reads.result_slices)."""
    for rows in reads.result_slices(batch_id, after, limit):
        yield b"".join(orjson.dumps({
            "line": r.line, "job_id": r.id, "status": r.status,
            "result": _fragment(r.result), "error": _fragment(r.error)}) + b"\n" for r in rows)


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
    end = reads.page_end(session, batch_id, cursor, limit)
    session.close()  # the page streams on connections of its own, a slice at a time
    headers = {"X-Next-Cursor": str(end)} if end is not None else {}
    return StreamingResponse(_result_lines(batch_id, cursor, limit),
                             media_type="application/x-ndjson", headers=headers)


@router.post("/{batch_id}/cancel", response_model=BatchRead, responses=ERRORS)
def cancel_batch(batch_id: IdPath, session: SessionDep, principal: PrincipalDep) -> BatchRead:
    """Cancel every job of the batch that has not started."""
    batch = get_batch(session, principal, batch_id)
    jobs.mark_cancelling(session, batch_id)
    session.commit()
    # A slice per transaction: a million-job batch is never one transaction's worth of
    # rows and events. A slice that meets a busy worker raises Busy (409); the batch stays
    # marked, and the relay finishes the cancel.
    while jobs.cancel_batch(session, batch_id, actor=principal.actor) == jobs.CANCEL_SLICE:
        session.commit()
    session.commit()
    # The counters moved in SQL; the loaded row (kept across commit) must be re-read.
    session.refresh(batch)
    return batch_read(batch)

