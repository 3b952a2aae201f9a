"""Base-29 digit strings <-> integers, the arithmetic under babel addresses.

Digits are written with the characters int(s, 29) reads: "0".."9", "a".."s".
CPython converts non-power-of-two bases in quadratic time (about 0.1 ms for a
3,200-digit page); GMP, through the optional gmpy2 package, is about 4x faster.
Both give identical results; `to_hex` and `to_digits` use GMP when installed.
"""

from __future__ import annotations

from functools import lru_cache

try:
    from gmpy2 import mpz
except ImportError:  # pragma: no cover - depends on the environment
    mpz = None

#: The radix.
BASE = 29
#: The digit characters, value order.
DIGITS = b"0123456789abcdefghijklmnopqrs"
#: Whether the GMP path is in use.
HAVE_GMP = mpz is not None

_TRIPLE = BASE**3
#: Every value below 29**3 as its three digit characters.
_TRIPLES = tuple(
    bytes((DIGITS[i // BASE**2], DIGITS[i // BASE % BASE], DIGITS[i % BASE]))
    for i in range(_TRIPLE)
)
#: Triples produced by plain repeated division instead of splitting further.
_LEAF_TRIPLES = 12


def to_hex_python(digits: bytes, width: int = 0) -> str:
    """Lower-case hex of a base-29 digit string right-padded with "0" to width, in CPython."""
    return format(int(digits.ljust(width, b"0"), BASE), "x")


def to_hex_gmp(digits: bytes, width: int = 0) -> str:
    """Lower-case hex of a base-29 digit string right-padded with "0" to width, in GMP.

    A page is mostly trailing zeros (the space padding of a short text), so the value is
    that of its significant digits times a power of 29: converting only those digits and
    multiplying is about 6x faster for a short text, and exactly the same number.
    """
    head = digits.rstrip(b"0")
    if not head:
        return "0"
    value = mpz(head.decode("ascii"), BASE)
    zeros = max(width, len(digits)) - len(head)
    if zeros:
        value *= _mpz_power(zeros)
    return str(value.digits(16))


@lru_cache(maxsize=256)
def _mpz_power(exponent: int) -> object:
    """29 ** exponent as a GMP integer; short texts share a few hundred exponents."""
    return mpz(BASE) ** exponent


@lru_cache(maxsize=64)
def _power(exponent: int) -> int:
    """29 ** exponent, cached: the split points of a conversion repeat."""
    return BASE**exponent


def _triples(n: int, count: int) -> list[bytes]:
    """The `count` least significant digit triples of n, most significant first."""
    if count <= _LEAF_TRIPLES:
        out = []
        for _ in range(count):
            n, r = divmod(n, _TRIPLE)
            out.append(_TRIPLES[r])
        out.reverse()
        return out
    # Divide and conquer: peeling one digit at a time off a big int is quadratic.
    low = count // 2
    high_part, low_part = divmod(n, _power(3 * low))
    return _triples(high_part, count - low) + _triples(low_part, low)


def to_digits_python(n: int, width: int) -> bytes:
    """The `width` least significant base-29 digits of n >= 0, in CPython arithmetic."""
    count = -(-width // 3)
    return b"".join(_triples(n, count))[3 * count - width :]


def to_digits_gmp(n: int, width: int) -> bytes:
    """The base-29 digits of 0 <= n < 29**width, zero-padded to `width`, in GMP."""
    return str(mpz(n).digits(BASE)).encode("ascii").rjust(width, b"0")


to_hex = to_hex_gmp if HAVE_GMP else to_hex_python
to_digits = to_digits_gmp if HAVE_GMP else to_digits_python
