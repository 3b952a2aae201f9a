"""Hyperdimensional (random-indexing) trigram encoding of text, spec section 1b."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from app.core import popcount

if TYPE_CHECKING:
    from app.core.schemas import HdResult


#: Dimensions of every hd vector.
D = 10_000
#: Bytes of a packed vector (D bits, most significant bit first).
PACKED_BYTES = D // 8
#: 64-bit words holding one vector's bits (the last word is zero-padded).
_WORDS = (D + 63) // 64
#: Distinct trigrams counted at once (a power of two). Small blocks keep the work
#: memory small: fresh mmap'd numpy memory costs a page fault per 4 KiB.
_CHUNK_ROWS = 512
#: Rows each block is summed down to before all blocks are summed together.
_PARTIAL_ROWS = 8
#: Largest trigram-code space counted with bincount instead of a sort.
_BINCOUNT_LIMIT = 1 << 21
#: Highest code point for which characters are indexed through a lookup table.
_LOOKUP_LIMIT = 1 << 12

_WHITESPACE = re.compile(r"\s+")

Bits = npt.NDArray[np.uint8]
Words = popcount.Words
Ints = popcount.Ints


def normalise(text: str) -> str:
    """NFC, lower-case, collapse whitespace runs to one space, strip."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def _bits(label: bytes) -> Bits:
    """The first D bits of SHAKE-256(label), each byte most significant bit first."""
    digest = hashlib.shake_256(label).digest(PACKED_BYTES)
    return np.unpackbits(np.frombuffer(digest, dtype=np.uint8))


_TIEBREAK = _bits(b"hd-tiebreak")


@lru_cache(maxsize=4096)
def _item_words(char: str) -> Words:
    """Packed item bits of `char`, rotated by 0, 1 and 2: shape (3, words)."""
    bits = _bits(b"hd-item:" + char.encode("utf-8"))
    spread = np.zeros((3, _WORDS * 64), dtype=np.uint8)
    for k in range(3):
        spread[k, :D] = np.roll(bits, k)
    words: Words = np.packbits(spread, axis=1).view(np.uint64)
    words.flags.writeable = False  # shared through the cache: never mutate
    return words


def _char_indices(u: str) -> tuple[list[str], Ints]:
    """Distinct characters of `u` (sorted) and each position's index into them."""
    points = np.frombuffer(u.encode("utf-32-le"), dtype=np.uint32)
    highest = int(points.max())
    if highest < _LOOKUP_LIMIT:
        # A presence table over the code points is cheaper than a sort.
        present = np.zeros(highest + 1, dtype=np.int64)
        present[points] = 1
        distinct = np.flatnonzero(present)
        lookup = np.cumsum(present) - 1
        return [chr(p) for p in distinct.tolist()], lookup[points]
    distinct, inverse = np.unique(points, return_inverse=True)
    return [chr(p) for p in distinct.tolist()], inverse.astype(np.int64)


def _trigram_counts(index: Ints, m: int) -> tuple[Ints, Ints]:
    """Distinct trigram codes (a*m*m + b*m + c) and how often each occurs."""
    codes = (index[:-2] * m + index[1:-1]) * m + index[2:]
    if m**3 <= _BINCOUNT_LIMIT:
        counts = np.bincount(codes, minlength=m**3)
        distinct = np.flatnonzero(counts)
        return distinct, counts[distinct]
    distinct, counts = np.unique(codes, return_counts=True)
    return distinct, counts.astype(np.int64)


class _Counter:
    """Bit-sliced per-position counts of +1 trigram vectors, block by block."""

    def __init__(self, chars: list[str]) -> None:
        """Item tables of the text's characters plus two reusable work blocks."""
        tables = np.stack([_item_words(c) for c in chars])
        self.m = len(chars)
        self.rho = [np.ascontiguousarray(tables[:, k]) for k in range(3)]
        self.rows = np.empty((_CHUNK_ROWS, _WORDS), dtype=np.uint64)
        self.scratch = np.empty((_CHUNK_ROWS // 2, _WORDS), dtype=np.uint64)

    def block(self, codes: Ints) -> Words:
        """At most _CHUNK_ROWS trigram codes, summed down to _PARTIAL_ROWS rows."""
        m, n = self.m, len(codes)
        rows = self.rows[: popcount.pow2(n)]  # a power of two: every halving is exact
        rows[n:] = 0
        # mode="clip" because "raise" makes take() buffer its output.
        np.take(self.rho[2], codes // (m * m), axis=0, out=rows[:n], mode="clip")
        # +1 in the bipolar product is an odd number of set bits: XOR == 1.
        self._xor_items(rows, self.rho[1], codes // m % m)
        self._xor_items(rows, self.rho[0], codes % m)
        return popcount.sum_rows([rows], self.scratch, _PARTIAL_ROWS)

    def _xor_items(self, rows: Words, table: Words, index: Ints) -> None:
        """rows[i] ^= table[index[i]], through the half-size scratch block."""
        step = len(self.scratch)
        for start in range(0, len(index), step):
            part = index[start : start + step]
            tmp = self.scratch[: len(part)]
            target = rows[start : start + len(part)]
            np.take(table, part, axis=0, out=tmp, mode="clip")
            np.bitwise_xor(target, tmp, out=target)

    def blocks(self, codes: Ints, shift: int) -> list[tuple[int, Words]]:
        """Partial sums of any number of codes, each to be weighted by 2**shift."""
        return [
            (shift, self.block(codes[start : start + _CHUNK_ROWS]))
            for start in range(0, len(codes), _CHUNK_ROWS)
        ]


def _partials(counter: _Counter, codes: Ints, counts: Ints) -> list[tuple[int, Words]]:
    """Partial sums that together weight each distinct trigram by its count."""
    partials = counter.blocks(codes[counts == 1], 0)
    repeated = counts > 1
    codes, counts = codes[repeated], counts[repeated]
    for bit in range(int(counts.max(initial=0)).bit_length()):
        # A count is a sum of powers of two; weight 2**bit is a shift by `bit` planes.
        partials += counter.blocks(codes[(counts >> bit) & 1 == 1], bit)
    return partials


def _ones_per_position(u: str) -> Ints:
    """Per position, how many of the trigram vectors of `u` are +1."""
    chars, index = _char_indices(u)
    codes, counts = _trigram_counts(index, len(chars))
    return popcount.total(_partials(_Counter(chars), codes, counts), D)


def encode_packed(text: str) -> tuple[bytes, int]:
    """Packed 1,250-byte hd vector of `text` and its trigram count."""
    s = normalise(text)
    if not s:
        raise ValueError("text is empty after normalisation")
    trigrams = len(s)  # len(" " + s + " ") - 2
    ones = _ones_per_position(" " + s + " ")
    total = 2 * ones - trigrams  # the integer sum S of the bipolar trigram vectors
    bits = np.where(total > 0, 1, np.where(total < 0, 0, _TIEBREAK)).astype(np.uint8)
    return np.packbits(bits).tobytes(), trigrams


def encode(text: str) -> HdResult:
    """The `encode` result for codec `hd`."""
    packed, trigrams = encode_packed(text)
    return {
        "codec": "hd",
        "dimensions": D,
        "trigrams": trigrams,
        "ones": int.from_bytes(packed, "big").bit_count(),
        "vector": base64.b64encode(packed).decode("ascii"),
        "sigma_hash": hashlib.sha256(packed).hexdigest()[:16],
    }


def _as_packed(vector: bytes | str) -> bytes:
    """Packed bytes of a vector given packed or as the result's base64 string."""
    if isinstance(vector, str):
        try:
            vector = base64.b64decode(vector, validate=True)
        except binascii.Error as exc:
            raise ValueError("vector is not valid base64") from exc
    if len(vector) != PACKED_BYTES:
        raise ValueError(f"vector must be {PACKED_BYTES} bytes, got {len(vector)}")
    return vector


def similarity(a: bytes | str, b: bytes | str) -> float:
    """1 - hamming(a, b) / D for two packed (or base64) hd vectors."""
    x = int.from_bytes(_as_packed(a), "big")
    y = int.from_bytes(_as_packed(b), "big")
    return 1 - (x ^ y).bit_count() / D
