"""Library-of-Babel pages: text <-> address bijection and address -> page, spec 1a."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from app.core.schemas import BabelResult


try:  # Optional accelerator: GMP converts base 29 several times faster than CPython.
    from gmpy2 import mpz as _mpz
except ImportError:  # pragma: no cover - depends on the environment
    _mpz = None

#: The 29 page symbols; a symbol's index is its base-29 digit.
ALPHABET = " .,abcdefghijklmnopqrstuvwxyz"
#: Symbols on one page.
PAGE_SIZE = 3200
#: Every address is below this: 29 ** PAGE_SIZE.
ADDRESS_LIMIT = len(ALPHABET) ** PAGE_SIZE

_BASE = len(ALPHABET)
_ALPHABET_BYTES = ALPHABET.encode("ascii")
#: int(s, 29) reads these characters as the digits 0..28.
_DIGITS = b"0123456789abcdefghijklmnopqrs"
#: Byte maps: a symbol to its digit / to itself; every other byte to space (digit 0).
_TO_DIGIT = bytes(
    _DIGITS[_ALPHABET_BYTES.index(i)] if i in _ALPHABET_BYTES else ord("0") for i in range(256)
)
_TO_SYMBOL = bytes(i if i in _ALPHABET_BYTES else ord(" ") for i in range(256))
_DIGIT_TO_SYMBOL = bytes.maketrans(_DIGITS, _ALPHABET_BYTES)
_INDEX_TO_SYMBOL = bytes.maketrans(bytes(range(_BASE)), _ALPHABET_BYTES)
#: Three base-29 digits at a time, for turning an address back into a page.
_TRIPLE = _BASE**3
_TRIPLES = tuple(
    bytes((_DIGITS[i // _BASE**2], _DIGITS[i // _BASE % _BASE], _DIGITS[i % _BASE]))
    for i in range(_TRIPLE)
)
#: Digit triples converted by plain repeated division instead of splitting further.
_LEAF_TRIPLES = 12
#: Position labels "0".."3199" as bytes, hashed after the address for each symbol.
_POSITIONS = tuple(str(i).encode("ascii") for i in range(PAGE_SIZE))
_HEX = re.compile(r"[0-9a-fA-F]+")


def _normalised_bytes(text: str) -> tuple[bytes, int]:
    """The normalised text t as ASCII symbols, and how many characters were replaced."""
    lowered = text.lower()
    if not 1 <= len(lowered) <= PAGE_SIZE:
        raise ValueError(f"text must be 1..{PAGE_SIZE} characters, got {len(lowered)}")
    # One "?" per non-ASCII code point keeps positions; "?" is not a symbol.
    raw = lowered.encode("ascii", "replace")
    replaced = len(raw.translate(None, _ALPHABET_BYTES))
    return raw.translate(_TO_SYMBOL), replaced


def normalise(text: str) -> tuple[str, int]:
    """Lower-case `text`, replace non-alphabet characters by spaces: (t, replaced)."""
    raw, replaced = _normalised_bytes(text)
    return raw.decode("ascii"), replaced


def _digits_to_hex(digits: bytes) -> str:
    """Hex of the base-29 number written with `_DIGITS` characters."""
    if _mpz is not None:
        return str(_mpz(digits.decode("ascii"), _BASE).digits(16))
    return format(int(digits, _BASE), "x")


def _address_of(symbols: bytes) -> str:
    """Address of the page that starts with `symbols` (padded with spaces)."""
    return _digits_to_hex(symbols.translate(_TO_DIGIT).ljust(PAGE_SIZE, b"0"))


def text_to_address(text: str) -> str:
    """Hex address of the page holding `text` (raises ValueError outside 1..3200 symbols)."""
    return _address_of(_normalised_bytes(text)[0])


def page_sha256(page: str) -> str:
    """SHA-256 hex of a page's UTF-8 bytes."""
    return hashlib.sha256(page.encode("utf-8")).hexdigest()


def encode(text: str) -> BabelResult:
    """The `encode` result for codec `babel`."""
    symbols, replaced = _normalised_bytes(text)
    return {
        "codec": "babel",
        "address": _address_of(symbols),
        "length": len(symbols),
        "replaced": replaced,
        "page_sha256": hashlib.sha256(symbols.ljust(PAGE_SIZE, b" ")).hexdigest(),
    }


@lru_cache(maxsize=64)
def _power(exponent: int) -> int:
    """29 ** exponent, cached: the split points of the conversion repeat."""
    return _BASE**exponent


def _triples(n: int, count: int) -> list[bytes]:
    """The `count` least significant base-29 digit triples of n, most significant first."""
    if count <= _LEAF_TRIPLES:
        out = []
        for _ in range(count):
            n, r = divmod(n, _TRIPLE)
            out.append(_TRIPLES[r])
        out.reverse()
        return out
    # Divide and conquer: CPython's repeated small divisions would be quadratic.
    low = count // 2
    high_part, low_part = divmod(n, _power(3 * low))
    return _triples(high_part, count - low) + _triples(low_part, low)


def _to_digits(n: int) -> bytes:
    """The PAGE_SIZE base-29 digits of n < ADDRESS_LIMIT."""
    if _mpz is not None:
        return str(_mpz(n).digits(_BASE)).encode("ascii").rjust(PAGE_SIZE, b"0")
    # 3201 digits = 1067 whole triples; the extra leading digit is always 0.
    return b"".join(_triples(n, (PAGE_SIZE + 2) // 3))[-PAGE_SIZE:]


def address_to_text(address: str) -> str:
    """The 3200-symbol page whose address is `address` (hex, either case)."""
    if not _HEX.fullmatch(address):
        raise ValueError("address must be a non-empty hexadecimal string")
    n = int(address, 16)
    if n >= ADDRESS_LIMIT:
        raise ValueError("address is beyond the last page (29**3200)")
    return _to_digits(n).translate(_DIGIT_TO_SYMBOL).decode("ascii")


def address_to_page(address: str) -> str:
    """The page at `address`: symbol i from SHA-256(address + str(i)), spec 2."""
    prefix = hashlib.sha256(address.lower().strip().encode("utf-8"))

    def digest(position: bytes) -> bytes:
        # Copying the prefix state skips re-hashing the address for every symbol.
        h = prefix.copy()
        h.update(position)
        return h.digest()[:4]

    words = np.frombuffer(b"".join(map(digest, _POSITIONS)), dtype=">u4")
    return (words % _BASE).astype(np.uint8).tobytes().translate(_INDEX_TO_SYMBOL).decode("ascii")
