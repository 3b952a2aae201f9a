"""Property tests of the computations: bijection, determinism, invariants, JSON safety."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import (
    address_to_text,
    hd_encode,
    hd_similarity,
    run,
    score_coherence,
    text_to_address,
)
from app.core.babel import ADDRESS_LIMIT, ALPHABET
from app.core.canonical import canonical_json, sha256_hex
from app.ops.bench.core import naive_coherence, naive_enumerate, naive_governor, naive_hd_encode

BOUNDED = settings(max_examples=60, deadline=None)

#: Mostly page symbols and upper case, with arbitrary characters mixed in (NUL is refused
#: at validation: PostgreSQL cannot store it; so are lone surrogates).
page_chars = st.one_of(
    st.sampled_from(ALPHABET + "ABCXYZ\n\t!?é"),
    st.characters(codec="utf-8", exclude_characters="\x00"),
)
babel_texts = st.text(page_chars, min_size=1, max_size=400)
hd_texts = st.text(page_chars, min_size=1, max_size=300).filter(lambda t: t.strip() != "")
words = st.sampled_from(["the", "plan", "review", "cat", "mat", "risk", "proceed", "now"])
engine_texts = st.lists(words, min_size=1, max_size=12).map(" ".join)
engines = st.fixed_dictionaries(
    {"text": engine_texts, "confidence": st.floats(0, 1, allow_nan=False)}
)
cycles = st.lists(
    st.fixed_dictionaries({"left": engines, "right": engines}), min_size=1, max_size=10
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "max_cycles": st.integers(1, 10),
        "similarity_threshold": st.floats(0, 1),
        "risk_threshold": st.floats(0, 1),
        "initial_contradiction_budget": st.floats(0, 100),
        "contradiction_decay_rate": st.floats(0, 10),
        "quality_improvement_threshold": st.floats(0, 1),
    },
)
evaluate_params = st.fixed_dictionaries({"cycles": cycles, "config": configs})
enumerate_params = st.fixed_dictionaries(
    {
        "query": st.text(page_chars, min_size=1, max_size=40).filter(lambda q: q.strip() != ""),
        "max_results": st.integers(1, 100),
        "depth": st.integers(1, 10),
    }
)
jobs = st.one_of(
    st.tuples(st.just("encode"), st.fixed_dictionaries({"text": babel_texts})),
    st.tuples(st.just("encode"), st.fixed_dictionaries({"text": hd_texts, "codec": st.just("hd")})),
    st.tuples(st.just("enumerate"), enumerate_params),
    st.tuples(st.just("evaluate"), evaluate_params),
)


@BOUNDED
@given(babel_texts)
def test_babel_round_trip_gives_the_padded_page(text: str) -> None:
    page = "".join(c if c in ALPHABET else " " for c in text.lower()).ljust(3200)
    assert address_to_text(text_to_address(text)) == page


@BOUNDED
@given(st.integers(min_value=0, max_value=ADDRESS_LIMIT - 1))
def test_every_address_is_a_page_and_back(n: int) -> None:
    page = address_to_text(format(n, "x"))
    assert len(page) == 3200
    assert set(page) <= set(ALPHABET)
    assert text_to_address(page) == format(n, "x")


@BOUNDED
@given(jobs)
def test_every_kind_is_deterministic_and_json_safe(job: tuple[str, dict[str, Any]]) -> None:
    kind, params = job
    first, second = run(kind, params), run(kind, params)
    assert canonical_json(first) == canonical_json(second)  # allow_nan=False: no NaN/inf
    assert json.loads(canonical_json(first)) == first


def _standard_canonical(obj: Any) -> bytes:
    """The definition: the standard library's sorted, compact, UTF-8 JSON."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_json_is_the_standard_librarys_bytes(value: Any) -> None:
    # The fast path (orjson) must never change a stored result's bytes or its sha256.
    assert canonical_json(value) == _standard_canonical(value)


@BOUNDED
@given(hd_texts)
def test_hd_matches_the_per_trigram_definition(text: str) -> None:
    packed, trigrams = hd_encode(text)
    assert (packed, trigrams) == naive_hd_encode(text)
    assert hd_similarity(packed, packed) == 1.0


@BOUNDED
@given(evaluate_params)
def test_governor_stops_at_the_first_stop(params: dict[str, Any]) -> None:
    result = run("evaluate", params)
    decisions = [c["decision"] for c in result["cycles"]]
    assert result["cycles_evaluated"] == len(decisions) <= len(params["cycles"])
    assert "STOP" not in decisions[:-1]
    if len(decisions) < len(params["cycles"]):
        assert decisions[-1] == "STOP"
    assert [c["cycle"] for c in result["cycles"]] == list(range(1, len(decisions) + 1))
    assert len(decisions) <= params["config"].get("max_cycles", 3)
    assert result["decision"] == decisions[-1]
    assert result == naive_governor(params)


@BOUNDED
@given(enumerate_params)
def test_enumerate_candidates_are_ranked_and_unique(params: dict[str, Any]) -> None:
    result = run("enumerate", params)
    scores = [c["score"] for c in result["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s <= 1 for s in scores)
    addresses = [c["address"] for c in result["candidates"]]
    assert len(set(addresses)) == len(addresses) == result["total"] <= params["max_results"]
    assert result == naive_enumerate(**params, with_pages=False)


@BOUNDED
@given(st.text(page_chars, max_size=600), st.none() | st.text(page_chars, max_size=20))
def test_coherence_matches_the_line_by_line_reference(text: str, query: str | None) -> None:
    assert score_coherence(text, query) == naive_coherence(text, query)


PROBE = """
import json, sys
from app.core import run
from app.core.canonical import sha256_hex
print(json.dumps([sha256_hex(run(k, p)) for k, p in json.loads(sys.stdin.read())]))
"""

FIXED_JOBS = [
    ("encode", {"text": "Hello, World!"}),
    ("encode", {"text": "the cat sat on the mat", "codec": "hd"}),
    ("enumerate", {"query": "hello world", "max_results": 20, "depth": 3, "with_pages": True}),
    ("evaluate", {"cycles": [{"left": {"text": "a b c", "confidence": 0.9},
                              "right": {"text": "a b d", "confidence": 0.8}}] * 3}),
]  # fmt: skip


def test_results_are_identical_across_processes() -> None:
    """Hash randomisation differs per process: results must not depend on it."""
    expected = [sha256_hex(run(kind, params)) for kind, params in FIXED_JOBS]
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", PROBE],
            input=json.dumps(FIXED_JOBS),
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        assert json.loads(out.stdout) == expected


def test_canonical_json_refuses_what_the_standard_library_refuses() -> None:
    import dataclasses
    import datetime

    import pytest

    @dataclasses.dataclass
    class Point:
        x: int

    for value in ({"at": datetime.datetime(2026, 1, 1)}, {"p": Point(1)}):
        with pytest.raises(TypeError):
            json.dumps(value)
        with pytest.raises(TypeError):
            canonical_json(value)
