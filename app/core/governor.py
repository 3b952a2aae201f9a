"""The dual-engine governor decision: the `evaluate` kind, docs/computations.md section 3."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.core.params import (
        Cycle,
        CycleRecord,
        EvaluateResult,
        GovernorConfig,
        QualityMetrics,
        StopReason,
    )


def jaccard(left: str, right: str) -> float:
    """Jaccard similarity of the lower-cased word sets (0 if either is empty)."""
    a, b = set(left.lower().split()), set(right.lower().split())
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def _clamp01(x: float) -> float:
    """x limited to [0, 1], always a float."""
    return min(1.0, max(0.0, x))


def _quality(sim: float, cycle: Cycle) -> QualityMetrics:
    """The four quality metrics of a cycle."""
    left, right = cycle.left, cycle.right
    cl, cr = left.confidence, right.confidence
    evidence = min(1.0, (len(left.text) + len(right.text)) / 1000)
    return {
        "coherence": (cl + cr) / 2,
        "calibration": sim,
        "evidence_quality": (evidence + cl + cr) / 3,
        "actionability": (sim + cl + cr) / 3,
    }


def _composite(q: QualityMetrics) -> float:
    """Plain mean of the four metrics, summed in the spec's order."""
    return (q["coherence"] + q["calibration"] + q["evidence_quality"] + q["actionability"]) / 4


def _stop_reason(
    record: CycleRecord, k: int, prev_q: float | None, config: GovernorConfig
) -> StopReason | None:
    """The first stop rule that holds for cycle k, or None to continue."""
    if record["similarity"] >= config.similarity_threshold:
        return "CONVERGENCE_ACHIEVED"
    if record["risk"] > config.risk_threshold:
        return "RISK_THRESHOLD_EXCEEDED"
    if record["remaining_budget"] <= 0:
        return "CONTRADICTION_EXHAUSTED"
    if (
        prev_q is not None
        and record["composite_quality"] - prev_q < config.quality_improvement_threshold
    ):
        return "PLATEAU_DETECTED"
    if k >= config.max_cycles:
        return "MAX_CYCLES_REACHED"
    return None


def _evaluate_cycle(
    cycle: Cycle, k: int, budget: float, prev_q: float | None, config: GovernorConfig
) -> CycleRecord:
    """Scores and decision of cycle k given the budget and quality before it."""
    sim = jaccard(cycle.left.text, cycle.right.text)
    contradiction = 1 - sim
    risk = _clamp01(
        0.6 * (1 - sim) + 0.4 * (1 - min(cycle.left.confidence, cycle.right.confidence))
    )
    quality = _quality(sim, cycle)
    spent = contradiction * config.contradiction_decay_rate
    record: CycleRecord = {
        "cycle": k,
        "similarity": sim,
        "contradiction": contradiction,
        "risk": risk,
        "quality_metrics": quality,
        "composite_quality": _composite(quality),
        "contradiction_spent": spent,
        "remaining_budget": budget - spent,
        "decision": "CONTINUE",
        "stop_reason": None,
    }
    reason = _stop_reason(record, k, prev_q, config)
    if reason is not None:
        record["decision"], record["stop_reason"] = "STOP", reason
    return record


def _run_cycles(cycles: Sequence[Cycle], config: GovernorConfig) -> list[CycleRecord]:
    """Evaluate cycles in order, stopping after the first STOP."""
    records: list[CycleRecord] = []
    budget, prev_q = config.initial_contradiction_budget, None
    for k, cycle in enumerate(cycles, start=1):
        record = _evaluate_cycle(cycle, k, budget, prev_q, config)
        records.append(record)
        if record["decision"] == "STOP":
            break
        budget, prev_q = record["remaining_budget"], record["composite_quality"]
    return records


def evaluate(cycles: Sequence[Cycle], config: GovernorConfig) -> EvaluateResult:
    """The `evaluate` result for already validated cycles and config."""
    records = _run_cycles(cycles, config)
    last = records[-1]
    return {
        "decision": last["decision"],
        "stop_reason": last["stop_reason"],
        "cycles_evaluated": len(records),
        "final": {
            "similarity": last["similarity"],
            "risk": last["risk"],
            "composite_quality": last["composite_quality"],
            "remaining_budget": last["remaining_budget"],
        },
        "contradiction_budget_used": config.initial_contradiction_budget - last["remaining_budget"],
        "cycles": records,
        "trajectories": {
            "quality": [r["composite_quality"] for r in records],
            "risk": [r["risk"] for r in records],
            "similarity": [r["similarity"] for r in records],
        },
    }
