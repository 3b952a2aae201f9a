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

if TYPE_CHECKING:
    from app.core.schemas import HdResult


#: Dimensions of every hd vector.
D = 10_000
#: Bytes of a packed vector (D bits, most significant bit first).
PACKED_BYTES = D // 8
#: 64-bit words holding one vector's bits (the last word is zero-padded).
_WORDS = (D + 63) // 64
#: Unique trigrams processed at once; bounds the working set to a few MB.
_CHUNK_ROWS = 4096
#: Largest trigram-code space counted with bincount instead of a sort.
_BINCOUNT_LIMIT = 1 << 21
#: Highest code point for which characters are indexed through a lookup table.
_LOOKUP_LIMIT = 1 << 12

_WHITESPACE = re.compile(r"\s+")

Bits = npt.NDArray[np.uint8]
Words = npt.NDArray[np.uint64]
Ints = npt.NDArray[np.int64]


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
    if int(points.max()) < _LOOKUP_LIMIT:
        # A presence table over the code points is cheaper than a sort.
        present = np.zeros(int(points.max()) + 1, dtype=np.int64)
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


def _add_planes(planes: list[Words], rows: int) -> list[Words]:
    """Bit-sliced ripple add of the first half of the rows to the second half.

    Each plane holds one bit of a per-column counter; adding halves pairwise
    halves the rows and grows the counter by one bit. Works in place on the
    halves to avoid re-allocating megabytes per level.
    """
    half = rows // 2
    a = [p[:half] for p in planes]
    b = [p[half:rows] for p in planes]
    out = [a[0] ^ b[0]]
    np.bitwise_and(a[0], b[0], out=a[0])
    carry = a[0]
    for j in range(1, len(planes)):
        t = a[j] ^ b[j]
        np.bitwise_and(a[j], b[j], out=a[j])
        np.bitwise_and(t, carry, out=b[j])
        np.bitwise_xor(t, carry, out=t)
        np.bitwise_or(a[j], b[j], out=a[j])
        out.append(t)
        carry = a[j]
    out.append(carry)
    return out


def _column_ones(rows: Words) -> Ints:
    """Per bit position, how many of `rows` (packed bit vectors) have a 1 there."""
    planes = [rows]
    leftovers: list[Words] = []
    weights: list[int] = []
    while planes[0].shape[0] > 1:
        count = planes[0].shape[0]
        if count % 2:
            leftovers.extend(p[-1] for p in planes)
            weights.extend(1 << j for j in range(len(planes)))
        planes = _add_planes(planes, count - count % 2)
    leftovers.extend(p[0] for p in planes)
    weights.extend(1 << j for j in range(len(planes)))
    unpacked = np.unpackbits(np.stack(leftovers).view(np.uint8), axis=1, count=D)
    return np.asarray(weights, dtype=np.int64) @ unpacked


def _weighted_ones(rows: Words, counts: Ints) -> Ints:
    """Per bit position, sum of `counts` over rows with a 1 there."""
    total = np.zeros(D, dtype=np.int64)
    for bit in range(int(counts.max()).bit_length()):
        # Split the weights into powers of two: each subset is a plain count.
        subset = rows[(counts >> bit) & 1 == 1]
        if len(subset):
            total += _column_ones(subset) << bit
    return total


def _ones_per_position(u: str) -> tuple[Ints, int]:
    """Per position, how many trigram vectors of `u` are +1; and the trigram count."""
    chars, index = _char_indices(u)
    m = len(chars)
    tables = np.stack([_item_words(c) for c in chars])
    rho2, rho1, rho0 = (np.ascontiguousarray(tables[:, k]) for k in (2, 1, 0))
    codes, counts = _trigram_counts(index, m)
    ones = np.zeros(D, dtype=np.int64)
    for start in range(0, len(codes), _CHUNK_ROWS):
        chunk = codes[start : start + _CHUNK_ROWS]
        # +1 in the bipolar product is an odd number of set bits (XOR == 1).
        rows = rho2[chunk // (m * m)] ^ rho1[chunk // m % m] ^ rho0[chunk % m]
        ones += _weighted_ones(rows, counts[start : start + _CHUNK_ROWS])
    return ones, len(u) - 2


def encode_packed(text: str) -> tuple[bytes, int]:
    """Packed 1,250-byte hd vector of `text` and its trigram count."""
    s = normalise(text)
    if not s:
        raise ValueError("text is empty after normalisation")
    ones, trigrams = _ones_per_position(" " + s + " ")
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
