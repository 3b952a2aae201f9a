"""Hyperdimensional (random-indexing) trigram encoding of text, docs/computations.md section 1b."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from app.core import popcount

if TYPE_CHECKING:
    from app.core.params import HdResult


#: Dimensions of every hd vector.
D = 10_000
#: Bytes of a packed vector (D bits, most significant bit first).
PACKED_BYTES = D // 8
#: 64-bit words holding one vector's bits (the last word is zero-padded).
_WORDS = (D + 63) // 64
#: Distinct trigrams counted at once (a power of two). Small blocks keep the work
#: memory small: fresh mmap'd numpy memory costs a page fault per 4 KiB.
_CHUNK_ROWS = 512
#: Rows gathered per temporary: 80 KiB, under the 128 KiB where malloc turns to mmap.
_PIECE_ROWS = 64
#: Rows each block is summed down to before all blocks are summed together.
_PARTIAL = 8
#: Largest trigram-code space counted with bincount instead of a sort (bincount's
#: table stays under 128 KiB, below the size that numpy gets as fresh mmap'd memory).
_BINCOUNT_LIMIT = 1 << 14
#: Most distinct characters for which whole-text item tables are built (~4 MB).
_TABLE_CHARS = 1024
#: Highest code point for which characters are indexed through a lookup table.
_LOOKUP_LIMIT = 1 << 12

_WHITESPACE = re.compile(r"\s+")

Bits = npt.NDArray[np.uint8]
Words = popcount.Words
Ints = npt.NDArray[np.int64]


def normalise(text: str) -> str:
    """NFC, lower-case, collapse whitespace runs to one space, strip."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def _bits(label: bytes) -> Bits:
    """The first D bits of SHAKE-256(label), each byte most significant bit first."""
    digest = hashlib.shake_256(label).digest(PACKED_BYTES)
    return np.unpackbits(np.frombuffer(digest, dtype=np.uint8))


_TIEBREAK = _bits(b"hd-tiebreak").astype(bool)


@lru_cache(maxsize=4096)
def _item_words(char: str) -> Words:
    """Item bits of `char` rotated by 0, 1 and 2, packed into (3, words) uint64."""
    x = int.from_bytes(hashlib.shake_256(b"hd-item:" + char.encode("utf-8")).digest(PACKED_BYTES))
    pad = bytes(_WORDS * 8 - PACKED_BYTES)
    # rho^k(v)[i] = v[i - k]: bit i is int bit D-1-i, so rotate the int right by k.
    rotated = (x >> k | (x & ((1 << k) - 1)) << (D - k) for k in range(3))
    raw = b"".join(r.to_bytes(PACKED_BYTES) + pad for r in rotated)
    return np.frombuffer(raw, dtype=np.uint64).reshape(3, _WORDS)  # read-only: shared


def _tables(chars: list[str]) -> list[Words]:
    """Item words of `chars` as three (chars, words) tables, rotation 0, 1 and 2."""
    stacked = np.stack([_item_words(c) for c in chars])
    return [np.ascontiguousarray(stacked[:, k]) for k in range(3)]


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


Block = tuple[list[Words], Ints, Ints, Ints, int]  # item tables, a, b, c, shift
Plan = tuple[list[tuple[int, int]], Iterator[Block]]  # (trigrams, shift) per block; blocks


def _count(plan: Plan) -> popcount.Counts:
    """Per position, the weighted count of +1 trigram vectors over all blocks."""
    sizes, blocks = plan
    bitsum = popcount.BitSum(sizes, _WORDS, _PARTIAL)
    for tables, a, b, c, shift in blocks:
        rows = bitsum.rows(len(a))
        # +1 in the bipolar product is an odd number of set bits: XOR == 1.
        # mode="clip" because "raise" makes take() buffer its output.
        np.take(tables[2], a, axis=0, out=rows[: len(a)], mode="clip")
        _xor_items(rows, tables[1], b)
        _xor_items(rows, tables[0], c)
        bitsum.add(rows, shift)
    return bitsum.counts(D)


def _xor_items(rows: Words, table: Words, index: Ints) -> None:
    """rows[i] ^= table[index[i]], in pieces whose temporaries stay small."""
    for start in range(0, len(index), _PIECE_ROWS):
        part = index[start : start + _PIECE_ROWS]
        target = rows[start : start + len(part)]
        np.bitwise_xor(target, np.take(table, part, axis=0), out=target)


def _chunks(codes: Ints) -> list[Ints]:
    """`codes` in blocks of at most _CHUNK_ROWS."""
    return [codes[i : i + _CHUNK_ROWS] for i in range(0, len(codes), _CHUNK_ROWS)]


def _plan_by_code(chars: list[str], index: Ints) -> Plan:
    """Each distinct trigram once, weighted by its count: the usual, few-character case."""
    m, tables = len(chars), _tables(chars)
    codes, counts = _trigram_counts(index, m)
    chunks = [(k, 0) for k in _chunks(codes[counts == 1])]
    repeated = counts > 1
    codes, counts = codes[repeated], counts[repeated]
    for bit in range(int(counts.max(initial=0)).bit_length()):
        # A count is a sum of powers of two; weight 2**bit is a shift by `bit` planes.
        chunks += [(k, bit) for k in _chunks(codes[(counts >> bit) & 1 == 1])]
    blocks = ((tables, k // (m * m), k // m % m, k % m, shift) for k, shift in chunks)
    return [(len(k), shift) for k, shift in chunks], blocks


def _plan_in_order(chars: list[str], index: Ints) -> Plan:
    """Trigrams in text order, item tables built per block: bounded memory for any alphabet."""
    # Whole-text tables would take 3.7 KB per distinct character: up to 240 MB.
    starts = range(0, len(index) - 2, _CHUNK_ROWS)

    def blocks() -> Iterator[Block]:
        """One block's tables and local indices at a time."""
        for start in starts:
            window = index[start : start + _CHUNK_ROWS + 2]
            local, position = np.unique(window, return_inverse=True)
            tables = _tables([chars[i] for i in local.tolist()])
            yield tables, position[:-2], position[1:-1], position[2:], 0

    return [(min(_CHUNK_ROWS, len(index) - 2 - s), 0) for s in starts], blocks()


def _ones_per_position(u: str) -> popcount.Counts:
    """Per position, how many of the trigram vectors of `u` are +1."""
    chars, index = _char_indices(u)
    by_code = len(chars) <= _TABLE_CHARS
    return _count((_plan_by_code if by_code else _plan_in_order)(chars, index))


def encode_packed(text: str) -> tuple[bytes, int]:
    """Packed 1,250-byte hd vector of `text` and its trigram count."""
    s = normalise(text)
    if not s:
        raise ValueError("text is empty after normalisation")
    trigrams = len(s)  # len(" " + s + " ") - 2
    ones = _ones_per_position(" " + s + " ")
    # S = 2 * ones - trigrams, the integer sum of the bipolar trigram vectors.
    bits = ones > trigrams // 2  # S > 0
    if trigrams % 2 == 0:
        bits |= (ones == trigrams // 2) & _TIEBREAK  # S == 0
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
