"""Positional popcount: per bit position, how many of many packed bit rows have a 1.

Rows are numpy uint64 arrays, one packed bit vector per row. Counting happens
bit-sliced: plane j of a count holds its bit j for every position, so adding
counts is a ripple-carry adder of whole-row XOR/AND/OR operations instead of
unpacking every bit. Everything works in place on caller-provided blocks:
fresh numpy temporaries of this size cost a page fault per 4 KiB, more than
the arithmetic.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Words = npt.NDArray[np.uint64]
Ints = npt.NDArray[np.int64]


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


def sum_rows(planes: list[Words], scratch: Words, rows: int = 1) -> Words:
    """Add rows pairwise (a power of two of them) down to `rows`: a new (planes, rows, words)."""
    while planes[0].shape[0] > rows:
        planes = add_halves(planes, scratch)
    return np.stack(planes)


def total(partials: list[tuple[int, Words]], bits: int) -> Ints:
    """Sum bit-sliced partial counts, each (shift, (planes, rows, words)) worth 2**shift.

    Returns the first `bits` positions' counts as integers.
    """
    planes = max(shift + len(p) for shift, p in partials)
    rows = pow2(sum(p.shape[1] for _, p in partials))
    words = partials[0][1].shape[2]
    stacked = np.zeros((planes, rows, words), dtype=np.uint64)
    offset = 0
    for shift, p in partials:
        stacked[shift : shift + len(p), offset : offset + p.shape[1]] = p
        offset += p.shape[1]
    scratch = np.empty((max(1, rows // 2), words), dtype=np.uint64)
    summed = sum_rows(list(stacked), scratch)[:, 0]
    unpacked = np.unpackbits(summed.view(np.uint8), axis=1, count=bits)
    # Plane j is bit j of the count: packing the planes column-wise yields the count.
    packed = np.packbits(unpacked, axis=0, bitorder="little").astype(np.int64)
    shifts = (8 * np.arange(len(packed), dtype=np.int64))[:, None]
    result: Ints = (packed << shifts).sum(axis=0)
    return result
