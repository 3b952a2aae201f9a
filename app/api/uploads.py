"""An upload's body, read a block at a time: each block bounded in lines, bytes and time.

A block is what the api validates and hands to PostgreSQL in one round, so its size is
what an upload costs in memory, whatever the size of the upload: at most BLOCK_LINES
lines and about `ingest_block_bytes` of them. Each block must arrive within
`body_timeout` seconds: an upload holds a transaction from its first block to its end, so
a client that trickles its body is cut off (408) instead of holding a connection.

A JSON batch ({"jobs": [...]}) is at most `max_json_batch_bytes` (BodyLimit); its items
are cut out of the body one at a time, never parsed into one big list of objects (a 2 MiB
body of empty lists used to cost the api 2.9 GB).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from app.api.errors import ApiError
from app.jobs.ingest import LineSplitter

#: Lines validated and stored per database round of an upload.
BLOCK_LINES = 5000

#: (line number, raw line) pairs; None for a line over the length limit.
Block = list[tuple[int, bytes | None]]

_JSON_HEAD = re.compile(r'\s*\{\s*"jobs"\s*:\s*\[\s*')
_JSON_TAIL = re.compile(r"\s*\]\s*\}\s*")
_JSON_MORE = re.compile(r"\s*\]\s*,")
_SPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


class Blocks:
    """Adds (line, raw) pairs up into blocks of at most BLOCK_LINES lines or about max_bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.block: Block = []
        self.size = 0

    def add(self, line: tuple[int, bytes | None]) -> Block | None:
        """Add a line; the block, once it is full."""
        self.block.append(line)
        self.size += len(line[1] or b"")
        if len(self.block) < BLOCK_LINES and self.size < self.max_bytes:
            return None
        return self.take()

    def take(self) -> Block:
        """The block so far (maybe empty), and a fresh one to fill."""
        block, self.block, self.size = self.block, [], 0
        return block


async def ndjson_blocks(request: Request, max_line_bytes: int, max_bytes: int
                        ) -> AsyncIterator[Block]:
    """The NDJSON body's lines, a block at a time, as they stream in."""
    splitter, blocks = LineSplitter(max_line_bytes), Blocks(max_bytes)
    async for chunk in request.stream():
        for line in splitter.push(chunk):
            if (full := blocks.add(line)) is not None:
                yield full
    for line in splitter.close():
        if (full := blocks.add(line)) is not None:
            yield full
    if rest := blocks.take():
        yield rest


async def json_blocks(request: Request, max_bytes: int) -> AsyncIterator[Block]:
    """The items of a JSON batch as lines (each item's own text), a block at a time."""
    items = json_items(await request.body())
    while block := await run_in_threadpool(_fill, items, Blocks(max_bytes)):
        yield block


def _fill(items: Iterator[tuple[int, bytes]], blocks: Blocks) -> Block:
    for item in items:
        if (full := blocks.add(item)) is not None:
            return full
    return blocks.take()


def json_items(body: bytes) -> Iterator[tuple[int, bytes]]:
    """Each item of {"jobs": [...]}, numbered from 1, as the bytes of its JSON text.

    The item's text goes on to be checked as an NDJSON line is; decoding it here only
    finds where it ends. 400 for a body that is not JSON, 422 for JSON of another shape.
    """
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid JSON: not UTF-8") from None
    head = _JSON_HEAD.match(text)
    if head is None:
        raise _not_a_batch()
    at, number = head.end(), 0
    if text.startswith("]", at):
        return _tail(text, at)
    while True:
        try:
            _, end = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        number += 1
        yield number, text[at:end].encode()
        at = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        if text.startswith(",", at):
            at = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
            continue
        return _tail(text, at)


def _tail(text: str, at: int) -> None:
    """The end of the body after the last item: `] }`, or why not."""
    if _JSON_TAIL.fullmatch(text, at):
        return
    if _JSON_MORE.match(text, at):  # another key after the list: JSON, of the wrong shape
        raise _not_a_batch()
    raise ApiError(400, f"request body is not valid JSON: unexpected text at char {at}")


def _not_a_batch() -> ApiError:
    return ApiError(422, 'a JSON batch is {"jobs": [...]} and nothing else',
                    [{"field": "jobs", "message": "a list of jobs is required"}])


async def within(blocks: AsyncIterator[Block], seconds: float) -> AsyncIterator[Block]:
    """blocks, each of which must arrive within seconds (408 otherwise)."""
    while True:
        try:
            block = await asyncio.wait_for(anext(blocks), seconds)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(408, f"the request body did not deliver its next block within "
                                f"{seconds:g} s; send it faster, or in smaller uploads",
                           headers={"Connection": "close"}) from None
        yield block
