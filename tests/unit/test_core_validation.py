"""Params validation: every limit of the spec, every bad type, and the field each error names."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.core import KINDS, run, validate

CYCLE: dict[str, Any] = {
    "left": {"text": "proceed with the plan", "confidence": 0.9},
    "right": {"text": "proceed with care", "confidence": 0.8},
}


def _evaluate(**changes: Any) -> dict[str, Any]:
    """Evaluate params with one cycle whose parts are replaced by `changes`."""
    cycle = {side: dict(CYCLE[side]) for side in ("left", "right")}
    for key, value in changes.items():
        side, field = key.split("__")
        cycle[side][field] = value
    return {"cycles": [cycle]}


def _error_locs(kind: str, params: Any) -> list[tuple[int | str, ...]]:
    """The loc of every validation error of `params`."""
    with pytest.raises(ValidationError) as info:
        validate(kind, params)
    return [tuple(e["loc"]) for e in info.value.errors()]


REJECTED = [
    # encode
    ("encode", {"text": ""}, ("text",)),
    ("encode", {"text": "a" * 3201}, ("text",)),
    ("encode", {"text": "\u0130" * 1601}, ("text",)),  # lower() makes 3202 symbols
    ("encode", {"text": "a" * 65537, "codec": "hd"}, ("text",)),
    ("encode", {"text": " \n\t ", "codec": "hd"}, ("text",)),
    ("encode", {"text": "", "codec": "hd"}, ("text",)),
    ("encode", {"text": 123}, ("text",)),
    ("encode", {"text": None}, ("text",)),
    ("encode", {"text": b"bytes"}, ("text",)),
    ("encode", {"text": "lone \ud800 surrogate"}, ("text",)),
    ("encode", {"text": "nul \x00 byte"}, ("text",)),
    ("encode", {}, ("text",)),
    ("encode", {"text": "hi", "codec": "rot13"}, ("codec",)),
    ("encode", {"text": "hi", "codec": None}, ("codec",)),
    ("encode", {"text": "hi", "colour": "red"}, ("colour",)),
    # enumerate
    ("enumerate", {"query": ""}, ("query",)),
    ("enumerate", {"query": "   "}, ("query",)),
    ("enumerate", {"query": "q" * 1001}, ("query",)),
    ("enumerate", {"query": 5}, ("query",)),
    ("enumerate", {"query": "q\x00"}, ("query",)),
    ("enumerate", {"query": "q", "max_results": 0}, ("max_results",)),
    ("enumerate", {"query": "q", "max_results": 101}, ("max_results",)),
    ("enumerate", {"query": "q", "max_results": "5"}, ("max_results",)),
    ("enumerate", {"query": "q", "max_results": 5.0}, ("max_results",)),
    ("enumerate", {"query": "q", "max_results": True}, ("max_results",)),
    ("enumerate", {"query": "q", "depth": 0}, ("depth",)),
    ("enumerate", {"query": "q", "depth": 11}, ("depth",)),
    ("enumerate", {"query": "q", "with_pages": 1}, ("with_pages",)),
    ("enumerate", {"query": "q", "with_pages": "true"}, ("with_pages",)),
    ("enumerate", {"query": "q", "page": 2}, ("page",)),
    # evaluate
    ("evaluate", {"cycles": []}, ("cycles",)),
    ("evaluate", {"cycles": [CYCLE] * 11}, ("cycles",)),
    ("evaluate", {"cycles": CYCLE}, ("cycles",)),
    ("evaluate", {}, ("cycles",)),
    ("evaluate", _evaluate(left__confidence=1.5), ("cycles", 0, "left", "confidence")),
    ("evaluate", _evaluate(left__confidence=-0.1), ("cycles", 0, "left", "confidence")),
    ("evaluate", _evaluate(left__confidence=float("nan")), ("cycles", 0, "left", "confidence")),
    ("evaluate", _evaluate(right__confidence=float("inf")), ("cycles", 0, "right", "confidence")),
    ("evaluate", _evaluate(right__confidence=True), ("cycles", 0, "right", "confidence")),
    ("evaluate", _evaluate(right__confidence="0.5"), ("cycles", 0, "right", "confidence")),
    ("evaluate", _evaluate(right__text=""), ("cycles", 0, "right", "text")),
    ("evaluate", _evaluate(right__text=" \n "), ("cycles", 0, "right", "text")),
    ("evaluate", _evaluate(right__text="x" * 20001), ("cycles", 0, "right", "text")),
    ("evaluate", _evaluate(left__text=7), ("cycles", 0, "left", "text")),
    ("evaluate", _evaluate(left__label="L" * 101), ("cycles", 0, "left", "label")),
    ("evaluate", _evaluate(left__label="\ud800"), ("cycles", 0, "left", "label")),
    ("evaluate", _evaluate(right__text="a\x00b"), ("cycles", 0, "right", "text")),
    ("evaluate", _evaluate(left__mood="calm"), ("cycles", 0, "left", "mood")),
    ("evaluate", {"cycles": [{**CYCLE, "extra": 1}]}, ("cycles", 0, "extra")),
    ("evaluate", {"cycles": [CYCLE], "config": {"max_cycles": 0}}, ("config", "max_cycles")),
    ("evaluate", {"cycles": [CYCLE], "config": {"max_cycles": 11}}, ("config", "max_cycles")),
    ("evaluate", {"cycles": [CYCLE], "config": {"max_cycles": 2.5}}, ("config", "max_cycles")),
    (
        "evaluate",
        {"cycles": [CYCLE], "config": {"similarity_threshold": 1.01}},
        ("config", "similarity_threshold"),
    ),
    (
        "evaluate",
        {"cycles": [CYCLE], "config": {"risk_threshold": -0.01}},
        ("config", "risk_threshold"),
    ),
    (
        "evaluate",
        {"cycles": [CYCLE], "config": {"initial_contradiction_budget": 100.5}},
        ("config", "initial_contradiction_budget"),
    ),
    (
        "evaluate",
        {"cycles": [CYCLE], "config": {"contradiction_decay_rate": 10.01}},
        ("config", "contradiction_decay_rate"),
    ),
    (
        "evaluate",
        {"cycles": [CYCLE], "config": {"quality_improvement_threshold": float("-inf")}},
        ("config", "quality_improvement_threshold"),
    ),
    ("evaluate", {"cycles": [CYCLE], "config": {"speed": 1}}, ("config", "speed")),
]


@pytest.mark.parametrize(("kind", "params", "loc"), REJECTED)
def test_invalid_params_name_the_field(kind: str, params: Any, loc: tuple[Any, ...]) -> None:
    assert _error_locs(kind, params) == [loc]


@pytest.mark.parametrize(("kind", "params", "loc"), REJECTED[:3])
def test_run_validates_too(kind: str, params: Any, loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError):
        run(kind, params)


ACCEPTED = [
    ("encode", {"text": "a" * 3200}),
    ("encode", {"text": "\u0130" * 1600}),
    ("encode", {"text": "x", "codec": "hd"}),
    ("enumerate", {"query": "q" * 1000, "max_results": 100, "depth": 10, "with_pages": False}),
    ("enumerate", {"query": "q", "max_results": 1, "depth": 1}),
    ("evaluate", {"cycles": [CYCLE] * 10}),
    ("evaluate", _evaluate(left__confidence=0, right__confidence=1)),
    ("evaluate", _evaluate(left__text="x" * 20000, left__label="L" * 100)),
    (
        "evaluate",
        {
            "cycles": [CYCLE],
            "config": {
                "max_cycles": 10,
                "similarity_threshold": 0,
                "risk_threshold": 1,
                "initial_contradiction_budget": 100,
                "contradiction_decay_rate": 10,
                "quality_improvement_threshold": 0.0,
            },
        },
    ),
]


@pytest.mark.parametrize(("kind", "params"), ACCEPTED)
def test_limits_are_inclusive(kind: str, params: dict[str, Any]) -> None:
    normalised = validate(kind, params)
    assert validate(kind, normalised) == normalised


def test_defaults_are_filled() -> None:
    assert validate("encode", {"text": "hi"}) == {"codec": "babel", "text": "hi"}
    assert validate("enumerate", {"query": "hi"}) == {
        "query": "hi",
        "max_results": 10,
        "depth": 1,
        "with_pages": False,
    }
    assert validate("evaluate", {"cycles": [CYCLE]})["config"] == {
        "max_cycles": 3,
        "similarity_threshold": 0.9,
        "risk_threshold": 0.35,
        "initial_contradiction_budget": 1.0,
        "contradiction_decay_rate": 0.175,
        "quality_improvement_threshold": 0.05,
    }


def test_integer_confidence_is_a_float() -> None:
    cycle = validate("evaluate", _evaluate(left__confidence=1))["cycles"][0]
    assert cycle["left"]["confidence"] == 1.0
    assert isinstance(cycle["left"]["confidence"], float)


def test_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        validate("transcode", {"text": "x"})
    with pytest.raises(ValueError, match="unknown kind"):
        run("transcode", {"text": "x"})


@pytest.mark.parametrize("kind", KINDS)
def test_params_must_be_an_object(kind: str) -> None:
    assert _error_locs(kind, ["not", "a", "dict"]) == [()]
