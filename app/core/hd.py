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
#: Distinct trigrams counted at once (a power of two). Small blocks keep numpy's
#: temporaries out of fresh mmap'd memory, whose page faults cost more than the work.
_CHUNK_ROWS = 512
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


def _add_halves(planes: list[Words]) -> list[Words]:
    """Bit-sliced ripple add of the first half of the rows to the second half.

    Plane j holds bit j of a per-position counter in every row. Adding the
    halves pairwise halves the rows and adds one plane. Works in place on the
    halves: re-allocating megabytes per level is what makes numpy slow here.
    """
    half = planes[0].shape[0] // 2
    a = [p[:half] for p in planes]
    b = [p[half:] for p in planes]
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


def _sum_rows(planes: list[Words]) -> list[Words]:
    """Add up all rows (a power of two of them): one row per plane remains."""
    while planes[0].shape[0] > 1:
        planes = _add_halves(planes)
    return planes


def _padded(rows: int) -> Words:
    """Zeroed rows, rounded up to a power of two so every halving is exact."""
    return np.zeros((1 << (rows - 1).bit_length(), _WORDS), dtype=np.uint64)


class _Trigrams:
    """Per-call item tables of a text's characters, to build trigram bit rows."""

    def __init__(self, chars: list[str]) -> None:
        """Stack the cached item words of `chars`, one table per rotation."""
        tables = np.stack([_item_words(c) for c in chars])
        self.m = len(chars)
        self.rho = [np.ascontiguousarray(tables[:, k]) for k in range(3)]

    def count(self, codes: Ints) -> list[Words]:
        """Bit-sliced count, per position, of the codes' trigram vectors that are +1."""
        m, rho = self.m, self.rho
        rows = _padded(len(codes))
        live = rows[: len(codes)]
        # +1 in the bipolar product is an odd number of set bits: XOR == 1.
        np.take(rho[2], codes // (m * m), axis=0, out=live, mode="clip")  # "raise" buffers
        np.bitwise_xor(live, rho[1][codes // m % m], out=live)
        np.bitwise_xor(live, rho[0][codes % m], out=live)
        return _sum_rows([rows])


def _numbers(trigrams: _Trigrams, codes: Ints, counts: Ints) -> list[list[Words]]:
    """Bit-sliced per-position counts, weighted by `counts`, as several partial sums."""
    order = np.argsort(counts, kind="stable")
    codes, counts = codes[order], counts[order]
    single = int(np.searchsorted(counts, 2))
    numbers = [
        trigrams.count(codes[start : min(start + _CHUNK_ROWS, single)])
        for start in range(0, single, _CHUNK_ROWS)
    ]
    repeated, weights = codes[single:], counts[single:]
    for bit in range(1, int(counts[-1]).bit_length()):
        # Weight 2**bit is a shift: prepend `bit` all-zero planes.
        subset = repeated[(weights >> bit) & 1 == 1]
        zero = np.zeros((1, _WORDS), dtype=np.uint64)
        if len(subset):
            numbers.append([zero] * bit + trigrams.count(subset))
    odd = repeated[weights & 1 == 1]
    if len(odd):
        numbers.append(trigrams.count(odd))
    return numbers


def _total(numbers: list[list[Words]]) -> Ints:
    """Add bit-sliced one-row numbers and unpack the sum to integers per position."""
    width = max(len(n) for n in numbers)
    planes = []
    for j in range(width):
        plane = _padded(len(numbers))
        for i, n in enumerate(numbers):
            if j < len(n):
                plane[i] = n[j][0]
        planes.append(plane)
    bits = np.unpackbits(np.concatenate(_sum_rows(planes)).view(np.uint8), axis=1, count=D)
    # Plane j is bit j of the count: packing the planes column-wise gives the count.
    packed = np.packbits(bits, axis=0, bitorder="little")
    return sum((packed[k].astype(np.int64) << (8 * k) for k in range(len(packed))),
               np.zeros(D, dtype=np.int64))


def _ones_per_position(u: str) -> Ints:
    """Per position, how many of the trigram vectors of `u` are +1."""
    chars, index = _char_indices(u)
    codes, counts = _trigram_counts(index, len(chars))
    return _total(_numbers(_Trigrams(chars), codes, counts))


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
