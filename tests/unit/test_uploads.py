"""An upload's body cut into blocks: JSON items one at a time, blocks bounded by bytes."""

from __future__ import annotations

import pytest

from app.api.errors import ApiError
from app.api.uploads import BLOCK_LINES, Blocks, json_items


def test_json_items_are_each_items_own_text_numbered_from_one() -> None:
    body = b' { "jobs" : [ {"kind": "encode", "params": {"text": "\\u00e9 a"}} , [], 7 ] } \n'
    assert list(json_items(body)) == [
        (1, b'{"kind": "encode", "params": {"text": "\\u00e9 a"}}'), (2, b"[]"), (3, b"7")]
    assert list(json_items(b'{"jobs": []}')) == []


@pytest.mark.parametrize(("body", "status"), [
    (b'{"jobs": [{"kind": 1}, ]}', 400),
    (b'{"jobs": [{"kind": 1}', 400),
    (b"\xff", 400),
    (b'{"jobs": [], "more": 1}', 422),
    (b'{"more": 1, "jobs": []}', 422),
    (b"[]", 422),
    (b'{"jobs": {}}', 422),
])
def test_a_body_that_is_no_json_batch_is_refused(body: bytes, status: int) -> None:
    with pytest.raises(ApiError) as refused:
        list(json_items(body))
    assert refused.value.status == status


def test_blocks_are_bounded_by_bytes_as_well_as_lines() -> None:
    blocks = Blocks(max_bytes=1000)
    full = [b for i in range(10) if (b := blocks.add((i + 1, b"x" * 300))) is not None]
    assert [[n for n, _ in b] for b in full] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert [n for n, _ in blocks.take()] == [9, 10]
    short = Blocks(max_bytes=10**9)
    assert sum(short.add((i, b"{}")) is not None for i in range(BLOCK_LINES)) == 1
