"""Candidate addresses for a query: the `enumerate` kind, docs/computations.md section 2."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from app.core.babel import address_to_page, page_sha256
from app.core.coherence import score_coherence

if TYPE_CHECKING:
    from app.core.params import Candidate, EnumerateResult

#: N-grams kept per query.
MAX_NGRAMS = 10
#: Queries shorter than this also contribute their 2..5-character substrings.
SUBSTRING_QUERY_LIMIT = 20


def ngrams(q: str) -> list[str]:
    """Words (>= 2 chars) and, for short queries, stripped 2..5-char substrings, longest first."""
    found = {w for w in q.split() if len(w) >= 2}
    if len(q) < SUBSTRING_QUERY_LIMIT:
        for size in range(2, 6):
            for start in range(len(q) - size + 1):
                piece = q[start : start + size].strip()
                if piece:
                    found.add(piece)
    return sorted(found, key=lambda g: (-len(g), g)) or [q]


def score(ngram: str, q: str) -> float:
    """Length share, +0.5 for the whole query, +0.2 x shared-word share; capped at 1."""
    query_words = set(q.split())
    shared = query_words & set(ngram.split())
    value = (
        len(ngram) / len(q)
        + (0.5 if ngram == q else 0)
        + (0.2 * (len(shared) / len(query_words)) if shared else 0)
    )
    return min(1.0, value)


def _ranked(q: str, depth: int, max_results: int) -> list[Candidate]:
    """The first `max_results` candidates by score, ties in n-gram then depth order.

    All depths of an n-gram share its score, so stably sorting the n-grams and
    expanding them in that order is the spec's stable sort of every candidate,
    and only the addresses that are kept need hashing.
    """
    grams = ngrams(q)[:MAX_NGRAMS]
    scored = sorted(((score(g, q), g) for g in grams), key=lambda pair: -pair[0])
    seen: set[str] = set()
    out: list[Candidate] = []
    for value, ngram in scored:
        for d in range(depth):
            if len(out) == max_results:
                return out
            address = hashlib.sha256(f"{ngram}:{d}".encode()).hexdigest()
            if address not in seen:
                seen.add(address)
                out.append({"address": address, "ngram": ngram, "score": value, "depth": d})
    return out


def _add_page(candidate: Candidate, q: str) -> None:
    """Attach the page's hash and coherence to a candidate."""
    page = address_to_page(candidate["address"])
    candidate["page_sha256"] = page_sha256(page)
    candidate["coherence"] = score_coherence(page, q)


def enumerate_candidates(
    query: str, max_results: int = 10, depth: int = 1, with_pages: bool = False
) -> EnumerateResult:
    """The `enumerate` result for already validated params."""
    q = query.lower().strip()
    ranked = _ranked(q, depth, max_results)
    if with_pages:
        for candidate in ranked:
            _add_page(candidate, q)
    return {"query": q, "candidates": ranked, "total": len(ranked)}
