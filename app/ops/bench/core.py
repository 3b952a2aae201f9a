"""Micro-benchmark of app.core against straightforward references written the obvious way.

Each row times one computation, ours and the reference, in the same run on the same
input, and records whether both gave the same result. The references follow the
spec line by line with no tuning; they double as executable readings of the spec.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from app.core import babel, coherence, governor, hd
from app.core.enumerate import enumerate_candidates
from app.core.params import EvaluateParams, GovernorConfig

A = " .,abcdefghijklmnopqrstuvwxyz"
ENGLISH = (
    "The library holds every page that can be written with twenty-nine symbols. "
    "Most of them are noise, but somewhere there is a page about the cat that sat "
    "on the mat, and it was a good day for the cat. We look for it one address at "
    "a time, and the queue keeps the work moving while the workers come and go.\n"
)
GOVERNOR_CONFIG = {"max_cycles": 10, "risk_threshold": 1.0, "quality_improvement_threshold": 0.0}


def naive_text_to_address(text: str) -> str:
    """Normalise, pad, then N = N*29 + digit one character at a time."""
    t = "".join(c if c in A else " " for c in text.lower())
    n = 0
    for c in t.ljust(3200):
        n = n * 29 + A.index(c)
    return format(n, "x")


def naive_address_to_page(address: str) -> str:
    """A fresh SHA-256 of address + position for every symbol."""
    a = address.lower().strip()
    symbols = []
    for i in range(3200):
        digest = hashlib.sha256(a.encode() + str(i).encode()).digest()
        symbols.append(A[int.from_bytes(digest[:4], "big") % 29])
    return "".join(symbols)


def _bipolar(label: bytes) -> npt.NDArray[np.int64]:
    """+1/-1 for each of the first 10,000 bits of SHAKE-256(label)."""
    raw = np.frombuffer(hashlib.shake_256(label).digest(1250), dtype=np.uint8)
    return np.where(np.unpackbits(raw) == 1, 1, -1).astype(np.int64)


def naive_hd_encode(text: str) -> tuple[bytes, int]:
    """Sum roll(a, 2) * roll(b, 1) * c over every trigram, then threshold."""
    s = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text).lower()).strip()
    u = " " + s + " "
    items = {c: _bipolar(b"hd-item:" + c.encode()) for c in set(u)}
    total = np.zeros(10_000, dtype=np.int64)
    for i in range(len(u) - 2):
        total += np.roll(items[u[i]], 2) * np.roll(items[u[i + 1]], 1) * items[u[i + 2]]
    tie = (_bipolar(b"hd-tiebreak") + 1) // 2
    bits = np.where(total > 0, 1, np.where(total < 0, 0, tie)).astype(np.uint8)
    return np.packbits(bits).tobytes(), len(u) - 2


def _naive_language(w: list[str]) -> float:
    """Common-word share plus variety bonus."""
    if not w:
        return 0.0
    hits = len([x for x in w if x in coherence.COMMON])
    return min(1.0, hits / len(w) + min(0.1, 0.1 * (len(set(w)) / len(w))))


def _naive_structure(text: str) -> float:
    """Punctuation and layout points."""
    score = 0.0
    if "." in text:
        score += 0.3
        if 0.5 <= (text.count(".") + text.count(",")) / max(1, len(text) / 100) <= 3.0:
            score += 0.2
    parts = text.split(".")
    if len(parts) > 1:
        score += 0.2
        if 20 <= len(text) / len(parts) <= 200:
            score += 0.2
    if "\n" in text or "  " in text:
        score += 0.1
    return min(1.0, score)


def _naive_ngram(w: list[str]) -> float:
    """Bigram points."""
    if len(w) < 2:
        return 0.0
    pairs = [(w[i], w[i + 1]) for i in range(len(w) - 1)]
    hits = len([p for p in pairs if p[0] in coherence.COMMON or p[1] in coherence.COMMON])
    score = 0.6 * (hits / (len(w) - 1))
    if 0.3 <= len(set(pairs)) / (len(w) - 1) <= 0.9:
        score += 0.4
    return min(1.0, score)


def _naive_exact(text: str, query: str | None) -> float:
    """Query match points."""
    if not query or not query.strip():
        return 0.0
    if query.lower() in text.lower():
        return 1.0
    wq = set(query.lower().split())
    return 0.8 * (len(wq & set(text.lower().split())) / len(wq))


def naive_coherence(text: str, query: str | None) -> dict[str, Any]:
    """score_coherence, one spec line after another."""
    w = text.lower().split()
    scores = [
        _naive_language(w),
        _naive_structure(text),
        _naive_ngram(w),
        _naive_exact(text, query),
    ]
    overall = 100 * (0.3 * scores[0] + 0.2 * scores[1] + 0.2 * scores[2] + 0.3 * scores[3])
    bands = [(80, "high"), (60, "medium"), (40, "sparse")]
    band = next((name for floor, name in bands if overall >= floor), "minimal")
    names = ["language", "structure", "ngram", "exact"]
    return {"overall": overall, "confidence": band} | {
        name: score * 100 for name, score in zip(names, scores, strict=True)
    }


def _naive_ngrams(q: str) -> list[str]:
    """Words of length >= 2, plus short substrings of short queries, longest first."""
    grams = {word for word in q.split() if len(word) >= 2}
    if len(q) < 20:
        for size in range(2, 6):
            for i in range(len(q) - size + 1):
                if q[i : i + size].strip():
                    grams.add(q[i : i + size].strip())
    return sorted(grams, key=lambda g: (-len(g), g)) or [q]


def naive_enumerate(query: str, max_results: int, depth: int, with_pages: bool) -> dict[str, Any]:
    """Candidate addresses, scored and ranked the obvious way."""
    q = query.lower().strip()
    wq = set(q.split())
    candidates: list[dict[str, Any]] = []
    seen: set[str] = set()
    for g in _naive_ngrams(q)[:10]:
        shared = wq & set(g.split())
        bonus = 0.2 * (len(shared) / len(wq)) if shared else 0
        score = min(1.0, len(g) / len(q) + (0.5 if g == q else 0) + bonus)
        for d in range(depth):
            address = hashlib.sha256(f"{g}:{d}".encode()).hexdigest()
            if address not in seen:
                seen.add(address)
                candidates.append({"address": address, "ngram": g, "score": score, "depth": d})
    candidates.sort(key=lambda c: c["score"], reverse=True)
    candidates = candidates[:max_results]
    for c in candidates if with_pages else []:
        page = naive_address_to_page(c["address"])
        c["page_sha256"] = hashlib.sha256(page.encode()).hexdigest()
        c["coherence"] = naive_coherence(page, q)
    return {"query": q, "candidates": candidates, "total": len(candidates)}


def _naive_cycle(
    k: int, cycle: dict[str, Any], budget: float, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Every score of one cycle, before its decision."""
    lt, cl = cycle["left"]["text"], cycle["left"]["confidence"]
    rt, cr = cycle["right"]["text"], cycle["right"]["confidence"]
    a, b = set(lt.lower().split()), set(rt.lower().split())
    sim = len(a & b) / len(a | b) if a and b else 0.0
    metrics = {
        "coherence": (cl + cr) / 2,
        "calibration": sim,
        "evidence_quality": (min(1.0, (len(lt) + len(rt)) / 1000) + cl + cr) / 3,
        "actionability": (sim + cl + cr) / 3,
    }
    spent = (1 - sim) * cfg["contradiction_decay_rate"]
    return {
        "cycle": k,
        "similarity": sim,
        "contradiction": 1 - sim,
        "risk": min(1.0, max(0.0, 0.6 * (1 - sim) + 0.4 * (1 - min(cl, cr)))),
        "quality_metrics": metrics,
        "composite_quality": sum(metrics.values()) / 4,
        "contradiction_spent": spent,
        "remaining_budget": budget - spent,
    }


def _naive_reason(r: dict[str, Any], k: int, prev: float | None, cfg: dict[str, Any]) -> str | None:
    """The first stop rule that holds."""
    rules = [
        (r["similarity"] >= cfg["similarity_threshold"], "CONVERGENCE_ACHIEVED"),
        (r["risk"] > cfg["risk_threshold"], "RISK_THRESHOLD_EXCEEDED"),
        (r["remaining_budget"] <= 0, "CONTRADICTION_EXHAUSTED"),
        (
            prev is not None
            and r["composite_quality"] - prev < cfg["quality_improvement_threshold"],
            "PLATEAU_DETECTED",
        ),
        (k >= cfg["max_cycles"], "MAX_CYCLES_REACHED"),
    ]
    return next((reason for holds, reason in rules if holds), None)


def naive_governor(params: dict[str, Any]) -> dict[str, Any]:
    """The governor loop on plain dicts."""
    cfg = GovernorConfig().model_dump() | params.get("config", {})  # the spec's defaults
    budget, prev, records = cfg["initial_contradiction_budget"], None, []
    for k, cycle in enumerate(params["cycles"], start=1):
        r = _naive_cycle(k, cycle, budget, cfg)
        r["stop_reason"] = _naive_reason(r, k, prev, cfg)
        r["decision"] = "CONTINUE" if r["stop_reason"] is None else "STOP"
        records.append(r)
        if r["decision"] == "STOP":
            break
        budget, prev = r["remaining_budget"], r["composite_quality"]
    last = records[-1]
    final = ["similarity", "risk", "composite_quality", "remaining_budget"]
    return {
        "decision": last["decision"],
        "stop_reason": last["stop_reason"],
        "cycles_evaluated": len(records),
        "final": {key: last[key] for key in final},
        "contradiction_budget_used": cfg["initial_contradiction_budget"] - last["remaining_budget"],
        "cycles": records,
        "trajectories": {
            "quality": [r["composite_quality"] for r in records],
            "risk": [r["risk"] for r in records],
            "similarity": [r["similarity"] for r in records],
        },
    }


def _page(seed: int) -> str:
    """A deterministic 3,200-symbol page of random symbols."""
    rng = random.Random(seed)
    return "".join(rng.choice(A) for _ in range(3200))


def _governor_params() -> dict[str, Any]:
    """Ten long cycles that all get evaluated: half-similar engines, no stop until the last."""
    words = ENGLISH.split()
    left = " ".join(words * 5)
    right = " ".join([*words[::2], "broker", "lease", "retry", "worker"] * 8)
    cycle = {"left": {"text": left, "confidence": 0.9}, "right": {"text": right, "confidence": 0.8}}
    return {"cycles": [cycle] * 10, "config": GOVERNOR_CONFIG}


Case = tuple[str, Callable[[], object], Callable[[], object]]


def _cases() -> list[Case]:
    """(name, ours, naive) for every computation, on bench-sized inputs."""
    page, english = _page(1), (ENGLISH * 10)[:3200]
    address = hashlib.sha256(b"babel queue").hexdigest()
    gov = _governor_params()
    model = EvaluateParams.model_validate(gov)
    return [
        ("text_to_address (3,200-char page)",
         lambda: babel.text_to_address(page), lambda: naive_text_to_address(page)),
        ("address_to_page (3,200 symbols)",
         lambda: babel.address_to_page(address), lambda: naive_address_to_page(address)),
        ("hd encode (3,200-char random page)",
         lambda: hd.encode_packed(page), lambda: naive_hd_encode(page)),
        ("hd encode (3,200-char English)",
         lambda: hd.encode_packed(english), lambda: naive_hd_encode(english)),
        ("enumerate (depth 10, 100 results)",
         lambda: enumerate_candidates("hello world", 100, 10, False),
         lambda: naive_enumerate("hello world", 100, 10, False)),
        ("enumerate with pages (10 results)",
         lambda: enumerate_candidates("the cat", 10, 2, True),
         lambda: naive_enumerate("the cat", 10, 2, True)),
        ("score_coherence (3,200-char English)",
         lambda: coherence.score_coherence(english, "cat"),
         lambda: naive_coherence(english, "cat")),
        ("governor (10 cycles)",
         lambda: governor.evaluate(model.cycles, model.config), lambda: naive_governor(gov)),
    ]  # fmt: skip


def _best_us(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of `repeat` timed calls, in microseconds (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def run_core_bench(repeat: int = 20) -> list[dict[str, Any]]:
    """Time ours and the reference for each computation: rows of name, us, speedup, equal."""
    rows = []
    for name, ours, naive in _cases():
        equal = ours() == naive()  # also the warm-up: caches and imports are paid here
        ours_us, naive_us = _best_us(ours, repeat), _best_us(naive, repeat)
        rows.append(
            {
                "name": name,
                "ours_us": ours_us,
                "naive_us": naive_us,
                "speedup": naive_us / ours_us,
                "equal": equal,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Render bench rows as a table."""
    table = Table(title="app.core vs obvious reference (best of N calls)")
    for column in ("computation", "ours (us)", "naive (us)", "speedup", "same result"):
        table.add_column(column, justify="left" if column == "computation" else "right")
    for row in rows:
        table.add_row(
            row["name"],
            f"{row['ours_us']:,.1f}",
            f"{row['naive_us']:,.1f}",
            f"{row['speedup']:.1f}x",
            "yes" if row.get("equal", True) else "NO",
        )
    (console or Console()).print(table)
