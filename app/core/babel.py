"""Library-of-Babel pages: text <-> address bijection and address -> page.

docs/computations.md section 1a."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

import numpy as np

from app.core import base29

if TYPE_CHECKING:
    from app.core.params import BabelResult


#: The 29 page symbols; a symbol's index is its base-29 digit.
ALPHABET = " .,abcdefghijklmnopqrstuvwxyz"
#: Symbols on one page.
PAGE_SIZE = 3200
#: Every address is below this: 29 ** PAGE_SIZE.
ADDRESS_LIMIT = len(ALPHABET) ** PAGE_SIZE

_BASE = len(ALPHABET)
_ALPHABET_BYTES = ALPHABET.encode("ascii")
_DIGITS = base29.DIGITS
#: Byte maps: a symbol to its digit / to itself; every other byte to space (digit 0).
_TO_DIGIT = bytes(
    _DIGITS[_ALPHABET_BYTES.index(i)] if i in _ALPHABET_BYTES else ord("0") for i in range(256)
)
_TO_SYMBOL = bytes(i if i in _ALPHABET_BYTES else ord(" ") for i in range(256))
_DIGIT_TO_SYMBOL = bytes.maketrans(_DIGITS, _ALPHABET_BYTES)
_INDEX_TO_SYMBOL = bytes.maketrans(bytes(range(_BASE)), _ALPHABET_BYTES)
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


def _address_of(symbols: bytes) -> str:
    """Address of the page that starts with `symbols` (padded with spaces)."""
    return base29.to_hex(symbols.translate(_TO_DIGIT), PAGE_SIZE)


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


def address_to_text(address: str) -> str:
    """The 3200-symbol page whose address is `address` (hex, either case)."""
    if not _HEX.fullmatch(address):
        raise ValueError("address must be a non-empty hexadecimal string")
    n = int(address, 16)
    if n >= ADDRESS_LIMIT:
        raise ValueError("address is beyond the last page (29**3200)")
    return base29.to_digits(n, PAGE_SIZE).translate(_DIGIT_TO_SYMBOL).decode("ascii")


def address_to_page(address: str) -> str:
    """The page at `address`: symbol i from SHA-256(address + str(i)).

    docs/computations.md section 2a.
    """
    prefix = hashlib.sha256(address.lower().strip().encode("utf-8"))

    def digest(position: bytes) -> bytes:
        # Copying the prefix state skips re-hashing the address for every symbol.
        h = prefix.copy()
        h.update(position)
        return h.digest()[:4]

    words = np.frombuffer(b"".join(map(digest, _POSITIONS)), dtype=">u4")
    return (words % _BASE).astype(np.uint8).tobytes().translate(_INDEX_TO_SYMBOL).decode("ascii")
