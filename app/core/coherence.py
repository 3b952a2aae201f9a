"""How English-like a page is: score_coherence, docs/computations.md section 2b."""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.params import CoherenceScores, Confidence

_COMMON_WORDS = """
    the be to of and a in that have i it for not on with he as you do at this but his by from
    they we say her she or an will my one all would there their what so up out if about who get
    which go me when make can like time no just him know take people into year your good some
    could them see other than then now look only come its over think also back after use two
    how our work first well way even new want because any these give day most us
"""
#: The 100 most common English words.
COMMON = frozenset(_COMMON_WORDS.split())


# Products are written coefficient * (ratio): the spec's known answers were computed
# that way, and 0.6 * a / b can differ from 0.6 * (a / b) in the last bit.


def _language(words: list[str]) -> float:
    """Share of common-word occurrences plus a small bonus for variety, capped at 1."""
    n = len(words)
    if n == 0:
        return 0.0
    common = sum(1 for w in words if w in COMMON)
    return min(1.0, common / n + min(0.1, 0.1 * (len(set(words)) / n)))


def _structure(text: str) -> float:
    """Sentence punctuation and layout, capped at 1."""
    score = 0.0
    if "." in text:
        score += 0.3
        density = (text.count(".") + text.count(",")) / max(1, len(text) / 100)
        if 0.5 <= density <= 3.0:
            score += 0.2
    parts = text.split(".")
    if len(parts) > 1:
        score += 0.2
        if 20 <= len(text) / len(parts) <= 200:
            score += 0.2
    if "\n" in text or "  " in text:
        score += 0.1
    return min(1.0, score)


def _ngram(words: list[str]) -> float:
    """Bigrams touching common words, plus a bonus for moderate repetition, capped at 1."""
    n = len(words)
    if n < 2:
        return 0.0
    bigrams = list(pairwise(words))
    touching = sum(1 for a, b in bigrams if a in COMMON or b in COMMON)
    score = 0.6 * (touching / (n - 1))
    if 0.3 <= len(set(bigrams)) / (n - 1) <= 0.9:
        score += 0.4
    return min(1.0, score)


def _exact(text: str, query: str | None) -> float:
    """1 if the query occurs verbatim, else the share of its words present (x0.8)."""
    if query is None or not query.strip():
        return 0.0
    if query.lower() in text.lower():
        return 1.0
    wanted = set(query.lower().split())
    return 0.8 * (len(wanted & set(text.lower().split())) / len(wanted))


def _confidence(overall: float) -> Confidence:
    """Band of an overall score."""
    if overall >= 80:
        return "high"
    if overall >= 60:
        return "medium"
    if overall >= 40:
        return "sparse"
    return "minimal"


def score_coherence(text: str, query: str | None = None) -> CoherenceScores:
    """Language, structure, n-gram and exact-match scores (x100) of `text` for `query`."""
    words = text.lower().split()
    language, structure = _language(words), _structure(text)
    ngram, exact = _ngram(words), _exact(text, query)
    overall = 100 * (0.3 * language + 0.2 * structure + 0.2 * ngram + 0.3 * exact)
    return {
        "overall": overall,
        "language": language * 100,
        "structure": structure * 100,
        "ngram": ngram * 100,
        "exact": exact * 100,
        "confidence": _confidence(overall),
    }
