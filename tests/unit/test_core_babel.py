"""Babel pages: normalisation, address errors, both arithmetic paths, address_to_page."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import address_to_page, address_to_text, base29, run, text_to_address
from app.core.babel import ADDRESS_LIMIT, normalise
from app.ops.bench.core import naive_address_to_page, naive_text_to_address


def test_non_alphabet_characters_become_spaces_and_are_counted() -> None:
    assert normalise("Héllo, World! 123") == ("h llo, world     ", 5)
    result = run("encode", {"text": "Héllo, World! 123"})
    assert (result["length"], result["replaced"]) == (17, 5)
    assert result["page_sha256"] == hashlib.sha256(b"h llo, world".ljust(3200)).hexdigest()


def test_lower_case_expansion_counts_as_two_symbols() -> None:
    # "İ".lower() is "i" + a combining dot: two characters, the second not a symbol.
    assert normalise("\u0130") == ("i ", 1)


def test_full_page_matches_the_per_character_loop() -> None:
    text = ("The Library of Babel, 1941. " * 120)[:3200]
    assert text_to_address(text) == naive_text_to_address(text)


def test_last_page_is_all_z() -> None:
    assert address_to_text(format(ADDRESS_LIMIT - 1, "x")) == "z" * 3200
    assert text_to_address("z" * 3200) == format(ADDRESS_LIMIT - 1, "x")


def test_upper_case_and_leading_zeros_address_the_same_page() -> None:
    address = text_to_address("hello world")
    assert address_to_text(address.upper()) == address_to_text("000" + address)


@pytest.mark.parametrize(
    "address",
    ["", "0x10", "xyz", " ff", "ff\n", "-1", "+1", "f_f", "é", format(ADDRESS_LIMIT, "x")],
)
def test_invalid_addresses_are_rejected(address: str) -> None:
    with pytest.raises(ValueError, match="address"):
        address_to_text(address)


@pytest.mark.parametrize("text", ["", "a" * 3201])
def test_text_outside_one_page_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"1\.\.3200"):
        text_to_address(text)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=ADDRESS_LIMIT - 1))
def test_python_arithmetic_round_trips(n: int) -> None:
    digits = base29.to_digits_python(n, 3200)
    assert int(digits, 29) == n
    assert base29.to_hex_python(digits) == format(n, "x")


@pytest.mark.skipif(not base29.HAVE_GMP, reason="gmpy2 not installed")
@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=ADDRESS_LIMIT - 1))
def test_gmp_arithmetic_agrees_with_python(n: int) -> None:
    digits = base29.to_digits_python(n, 3200)
    assert base29.to_digits_gmp(n, 3200) == digits
    assert base29.to_hex_gmp(digits) == base29.to_hex_python(digits)


@pytest.mark.parametrize("address", ["abc123def456", " ABC123def456 ", "0", "x" * 200])
def test_address_to_page_matches_a_fresh_hash_per_symbol(address: str) -> None:
    assert address_to_page(address) == naive_address_to_page(address)


def test_address_to_page_normalises_case_and_whitespace() -> None:
    assert address_to_page(" ABC123DEF456\n") == address_to_page("abc123def456")
