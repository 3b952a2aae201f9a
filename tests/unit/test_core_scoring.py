"""Coherence, enumerate and governor beyond the known answers: edges and every stop rule."""

from __future__ import annotations

import hashlib
from typing import Any

from app.core import address_to_page, run, score_coherence
from app.core.enumerate import ngrams


def test_coherence_of_nothing_is_minimal() -> None:
    assert score_coherence("") == {
        "overall": 0.0,
        "language": 0.0,
        "structure": 0.0,
        "ngram": 0.0,
        "exact": 0.0,
        "confidence": "minimal",
    }


def test_coherence_partial_query_match_counts_shared_words() -> None:
    scores = score_coherence("The cat sat.", "black cat")
    assert scores["exact"] == 0.8 * (1 / 2) * 100


def test_coherence_without_query_has_no_exact_score() -> None:
    assert score_coherence("the cat sat", None)["exact"] == 0.0
    assert score_coherence("the cat sat", "  ")["exact"] == 0.0


def test_single_character_query_is_its_own_ngram() -> None:
    assert ngrams("a") == ["a"]
    result = run("enumerate", {"query": " A "})
    assert [(c["ngram"], c["score"]) for c in result["candidates"]] == [("a", 1.0)]


def test_long_queries_use_words_only() -> None:
    q = "library of babel holds every page"
    assert ngrams(q) == ["library", "babel", "every", "holds", "page", "of"]


def test_enumerate_with_pages_scores_each_page() -> None:
    result = run("enumerate", {"query": "Hello World", "max_results": 3, "with_pages": True})
    assert len(result["candidates"]) == 3
    for candidate in result["candidates"]:
        page = address_to_page(candidate["address"])
        assert candidate["page_sha256"] == hashlib.sha256(page.encode()).hexdigest()
        assert candidate["coherence"] == score_coherence(page, "hello world")


def _cycle(left: str, right: str, cl: float = 0.9, cr: float = 0.9) -> dict[str, Any]:
    """One governor cycle."""
    return {"left": {"text": left, "confidence": cl}, "right": {"text": right, "confidence": cr}}


def test_contradiction_budget_can_run_out() -> None:
    config = {"initial_contradiction_budget": 0.1, "risk_threshold": 1.0}
    result = run("evaluate", {"cycles": [_cycle("a b", "c d")], "config": config})
    assert result["stop_reason"] == "CONTRADICTION_EXHAUSTED"
    assert result["final"]["remaining_budget"] == 0.1 - 0.175
    assert result["contradiction_budget_used"] == 0.1 - (0.1 - 0.175)


def test_max_cycles_stops_an_improving_run() -> None:
    cycles = [_cycle("a b c d", "a b c e", c, c) for c in (0.6, 0.8, 1.0)]
    config = {"max_cycles": 3, "risk_threshold": 1.0}
    result = run("evaluate", {"cycles": [*cycles, cycles[0]], "config": config})
    assert [c["decision"] for c in result["cycles"]] == ["CONTINUE", "CONTINUE", "STOP"]
    assert result["stop_reason"] == "MAX_CYCLES_REACHED"
    assert result["trajectories"]["quality"] == [c["composite_quality"] for c in result["cycles"]]


def test_labels_are_accepted_and_do_not_change_the_result() -> None:
    plain = _cycle("go now", "go later")
    labelled = {
        "left": {**plain["left"], "label": "planner"},
        "right": {**plain["right"], "label": "critic"},
    }
    assert run("evaluate", {"cycles": [labelled]}) == run("evaluate", {"cycles": [plain]})
