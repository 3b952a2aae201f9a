"""Every known answer of docs/computations.md, bit for bit, through the public API."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from app.core import address_to_page, hd_encode, hd_similarity, run, score_coherence

HELLO_ADDRESS_SHA256 = "4ecbecf0f30c1a4e429f07769ae05fe99ae469646bd048d6ad804dd4a54c7069"


def test_babel_hello_world() -> None:
    result = run("encode", {"text": "hello world"})
    assert len(result["address"]) == 3887
    assert result["address"].startswith("107310278aacfa5c75fa01d37b96036c")
    # "whose sha256" is the SHA-256 of the address string itself.
    assert hashlib.sha256(result["address"].encode()).hexdigest() == HELLO_ADDRESS_SHA256
    page = "hello world".ljust(3200)
    assert result == {
        "codec": "babel",
        "address": result["address"],
        "length": 11,
        "replaced": 0,
        "page_sha256": hashlib.sha256(page.encode()).hexdigest(),
    }


def test_babel_blank_page_is_address_zero() -> None:
    assert run("encode", {"text": "   "})["address"] == "0"


def test_babel_empty_text_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        run("encode", {"text": ""})
    assert info.value.errors()[0]["loc"] == ("text",)


@pytest.mark.parametrize(
    ("text", "trigrams", "ones", "sigma_hash"),
    [
        ("hello world", 11, 4989, "5b7ab4ced074ba96"),
        ("Hello   World\n", 11, 4989, "5b7ab4ced074ba96"),
        ("a", 1, 4972, "76bbdd6545b115cb"),
    ],
)
def test_hd_known_vectors(text: str, trigrams: int, ones: int, sigma_hash: str) -> None:
    result = run("encode", {"text": text, "codec": "hd"})
    assert (result["codec"], result["dimensions"]) == ("hd", 10000)
    assert (result["trigrams"], result["ones"], result["sigma_hash"]) == (
        trigrams,
        ones,
        sigma_hash,
    )


def test_hd_similar_sentences_are_about_0_845() -> None:
    a, _ = hd_encode("the cat sat on the mat")
    b, _ = hd_encode("the cat sat on a mat")
    assert hd_similarity(a, b) == pytest.approx(0.845, abs=0.005)


def test_hd_unrelated_texts_are_about_half_similar() -> None:
    a = run("encode", {"text": "the cat sat on the mat", "codec": "hd"})["vector"]
    b = run("encode", {"text": "quantum lattice gauge theory", "codec": "hd"})["vector"]
    assert hd_similarity(a, b) == pytest.approx(0.5, abs=0.05)


def test_enumerate_hello_world() -> None:
    result = run("enumerate", {"query": "hello world", "max_results": 5, "depth": 1})
    candidates = result["candidates"]
    assert [c["ngram"] for c in candidates] == ["hello", "world", "llo w", "lo wo", "o wor"]
    assert [c["score"] for c in candidates] == [0.5545454545454546] * 2 + [0.45454545454545453] * 3
    assert candidates[0]["address"] == (
        "49f2b5d7b9c6d17346f22546dec90cc44b0de21d1021a8f554314eb150e0bfe2"
    )
    assert result["query"] == "hello world"
    assert result["total"] == 5
    assert all(c["depth"] == 0 for c in candidates)


def test_address_to_page_known_page() -> None:
    page = address_to_page("abc123def456")
    assert page.startswith("syntpvt,ksfb dqt")
    assert len(page) == 3200
    assert hashlib.sha256(page.encode()).hexdigest() == (
        "6b0d3f97777324199691acbff4188f50fd683aec464a4e33ef77b5abef9467be"
    )


def test_coherence_known_scores() -> None:
    scores = score_coherence("the cat sat on the mat. it was a good day for the cat.", "cat")
    assert scores == {
        "overall": 76.93406593406593,
        "language": 72.85714285714286,
        "structure": 70.0,
        "ngram": 55.38461538461539,
        "exact": 100.0,
        "confidence": "medium",
    }


def _pair(left: str, cl: float, right: str, cr: float) -> dict[str, object]:
    """One governor cycle."""
    return {"left": {"text": left, "confidence": cl}, "right": {"text": right, "confidence": cr}}


ETHICS = _pair(
    "AI should provide information with ethical caveats.",
    0.72,
    "AI should refuse ethically ambiguous requests to avoid complicity.",
    0.81,
)
PLAN = _pair(
    "proceed with the plan after review today",
    0.95,
    "proceed with the plan after careful review",
    0.9,
)


def test_governor_risk_threshold_exceeded() -> None:
    result = run("evaluate", {"cycles": [ETHICS]})
    assert result["final"] == {
        "similarity": 0.14285714285714285,
        "risk": 0.6262857142857143,
        "composite_quality": 0.5036190476190476,
        "remaining_budget": 0.85,
    }
    assert (result["decision"], result["stop_reason"]) == ("STOP", "RISK_THRESHOLD_EXCEEDED")


def test_governor_convergence() -> None:
    cycle = _pair("the cat sat on the mat", 0.9, "The cat sat on the mat", 0.8)
    result = run("evaluate", {"cycles": [cycle]})
    assert result["final"]["similarity"] == 1.0
    assert (result["decision"], result["stop_reason"]) == ("STOP", "CONVERGENCE_ACHIEVED")


def test_governor_continue() -> None:
    result = run("evaluate", {"cycles": [PLAN], "config": {"max_cycles": 3}})
    assert result["final"] == {
        "similarity": 0.75,
        "risk": 0.19,
        "composite_quality": 0.7964166666666667,
        "remaining_budget": 0.95625,
    }
    assert (result["decision"], result["stop_reason"]) == ("CONTINUE", None)


def test_governor_same_pair_twice_plateaus() -> None:
    result = run("evaluate", {"cycles": [PLAN, PLAN]})
    assert result["cycles_evaluated"] == 2
    assert [c["decision"] for c in result["cycles"]] == ["CONTINUE", "STOP"]
    assert result["stop_reason"] == "PLATEAU_DETECTED"
