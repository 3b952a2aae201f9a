"""Positional popcount: per bit position, how many of many packed bit rows have a 1.

Rows are uint64 arrays, one packed bit vector per row. Counting is bit-sliced:
plane j of a count holds its bit j for every position, so adding counts is a
ripple-carry adder of whole-row XOR/AND/OR operations instead of unpacking
every bit. All of it runs in place in one per-thread work buffer: fresh numpy
memory of this size page-faults on every call (a few µs per 4 KiB here),
which costs more than the arithmetic itself.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Words = npt.NDArray[np.uint64]
Counts = npt.NDArray[np.uint32]

#: Work buffer words kept per thread between calls (2 MiB); larger requests get fresh memory.
KEEP_WORDS = 1 << 18

_local = threading.local()


def work_buffer(words: int) -> Words:
    """A uint64 buffer of `words` words with arbitrary contents, reused by this thread.

    Callers overwrite before they read, so nothing carries over between calls;
    a new request invalidates views of the previous one.
    """
    if words > KEEP_WORDS:
        return np.empty(words, dtype=np.uint64)
    buffer: Words | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = np.empty(KEEP_WORDS, dtype=np.uint64)
    return buffer[:words]


def pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


def add_halves(planes: list[Words], scratch: Words) -> list[Words]:
    """Add the first half of the rows to the second half: half the rows, one more plane.

    Sums land in the second halves and the top carry in the last first half;
    `scratch` needs at least half as many rows as the planes.
    """
    half = planes[0].shape[0] // 2
    a = [p[:half] for p in planes]
    b = [p[half:] for p in planes]
    s = scratch[:half]
    np.bitwise_and(a[0], b[0], out=s)
    np.bitwise_xor(b[0], a[0], out=b[0])
    np.copyto(a[0], s)
    for j in range(1, len(planes)):
        carry = a[j - 1]
        np.bitwise_xor(a[j], b[j], out=s)
        np.bitwise_and(a[j], b[j], out=a[j])
        np.bitwise_and(s, carry, out=b[j])
        np.bitwise_or(a[j], b[j], out=a[j])  # the carry out of bit j
        np.bitwise_xor(s, carry, out=b[j])
    return [*b, a[-1]]


def reduce_rows(planes: list[Words], scratch: Words, rows: int) -> list[Words]:
    """Add rows pairwise (a power of two of them) down to `rows`, in place."""
    while planes[0].shape[0] > rows:
        planes = add_halves(planes, scratch)
    return planes


def unpack_counts(planes: Words | list[Words], bits: int) -> Counts:
    """Per position, the integer whose bit j is set in planes[j] (first `bits` positions)."""
    counts = np.zeros(bits, dtype=np.uint32)
    for j, plane in enumerate(planes):
        counts |= np.unpackbits(plane.view(np.uint8), count=bits).astype(np.uint32) << j
    return counts


class BitSum:
    """Per-position counts of set bits over blocks of rows, each block weighted 2**shift.

    Each block is summed down to a few rows into a shared table, then the table
    is summed; the layout is fixed up front from the blocks' sizes.
    """

    def __init__(self, blocks: Sequence[tuple[int, int]], words: int, partial_rows: int) -> None:
        """Lay out the work buffer for blocks given as (rows, shift), in the order of `add`."""
        self._partial_rows = partial_rows
        reduced = [self._reduced(n) for n, _ in blocks]
        planes = max(shift + p for (_, p), (_, shift) in zip(reduced, blocks, strict=True))
        table_rows = pow2(sum(r for r, _ in reduced))
        block_rows = max(pow2(n) for n, _ in blocks)
        sizes = [block_rows, max(block_rows, table_rows) // 2 or 1, planes * table_rows]
        buffer = work_buffer(sum(sizes) * words)
        cut = np.cumsum([0, *sizes]) * words
        self._rows = buffer[cut[0] : cut[1]].reshape(-1, words)
        self._scratch = buffer[cut[1] : cut[2]].reshape(-1, words)
        self._table = buffer[cut[2] : cut[3]].reshape(planes, table_rows, words)
        self._table.fill(0)
        self._offset = 0

    def _reduced(self, n: int) -> tuple[int, int]:
        """Rows and planes a block of n rows is summed down to."""
        rows = min(pow2(n), self._partial_rows)
        return rows, (pow2(n) // rows).bit_length()

    def rows(self, n: int) -> Words:
        """The block to fill: its first n rows are the caller's, the padding is zeroed."""
        block = self._rows[: pow2(n)]  # a power of two: every halving is exact
        block[n:] = 0
        return block

    def add(self, block: Words, shift: int) -> None:
        """Sum a filled block (from `rows`) into the table, weighted 2**shift."""
        planes = reduce_rows([block], self._scratch, self._partial_rows)
        end = self._offset + planes[0].shape[0]
        for j, plane in enumerate(planes):
            self._table[shift + j, self._offset : end] = plane
        self._offset = end

    def counts(self, bits: int) -> Counts:
        """Per position, the weighted count of set bits over all added blocks."""
        planes = reduce_rows(list(self._table), self._scratch, 1)
        return unpack_counts([p[0] for p in planes], bits)
