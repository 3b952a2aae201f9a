"""Array literals passed as text and CAST in SQL: what they accept and what they refuse."""

from __future__ import annotations

import pytest

from app.store.db import array_literal, hex_array_literal


def test_ints_and_bools() -> None:
    assert array_literal([3, 10**12, -1]) == "{3,1000000000000,-1}"
    assert array_literal([True, False]) == "{True,False}"  # PostgreSQL reads either case
    assert array_literal([]) == "{}"


def test_hex_strings() -> None:
    assert hex_array_literal(["ab12", "0"]) == "{ab12,0}"
    assert hex_array_literal([]) == "{}"


@pytest.mark.parametrize("bad", ["", "AB", "a b", "a,b", "NULL", 'a"', "{a}", "g"])
def test_anything_needing_quotes_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="hex strings only"):
        hex_array_literal(["ab", bad])
