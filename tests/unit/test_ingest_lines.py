"""Batch lines: the plain-line shortcut of parse_line answers as the JobCreate model does."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.jobs.ingest import parse_line

LINES: list[Any] = [
    {"kind": "encode", "params": {"text": "hello world"}},
    {"kind": "encode", "params": {"text": "hello", "codec": "hd"}, "priority": "high"},
    {"kind": "enumerate", "params": {"query": "hello", "max_results": 3}, "priority": "low"},
    {"kind": "encode", "params": {"text": ""}},
    {"kind": "encode", "params": {"text": "a", "extra": 1}},
    {"kind": "encode", "params": {"text": "a"}, "priority": "urgent"},
    {"kind": "encode", "params": {"text": "a"}, "priority": 1},
    {"kind": "nope", "params": {}},
    {"kind": "x" * 65, "params": {}},
    {"kind": 5, "params": {}},
    {"kind": "encode", "params": []},
    {"kind": "encode"},
    {"params": {"text": "a"}},
]


def outcome(line: Any) -> Any:
    """The job parse_line makes of a line (as a tuple), or its error message."""
    try:
        job = parse_line(orjson.dumps(line), 7, "normal", 3)
    except ValueError as exc:
        return str(exc)
    return (job.line, job.kind, job.params, job.priority, job.max_attempts,
            job.idempotency_key, job.ref)


def through_the_model(line: Any) -> Any:
    """The same line with a field only the model handles ("ref": null changes nothing)."""
    return outcome({**line, "ref": None})


@pytest.mark.parametrize("line", LINES)
def test_a_plain_line_is_read_as_the_model_reads_it(line: Any) -> None:
    assert outcome(line) == through_the_model(line)


def test_known_answers_of_plain_lines() -> None:
    assert outcome(LINES[0]) == (7, "encode", {"codec": "babel", "text": "hello world"}, 1, 3,
                                 None, None)
    assert outcome(LINES[1])[3] == 0 and outcome(LINES[2])[3] == 2
    assert outcome(LINES[5]) == "priority: Input should be 'high', 'normal' or 'low'"
    assert outcome(LINES[7]).startswith("kind: unknown kind 'nope'")


VALUES = st.one_of(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), st.none())


@given(kind=st.sampled_from(["encode", "enumerate", "evaluate", "other", ""]),
       params=st.dictionaries(st.sampled_from(["text", "codec", "query", "cycles", "x"]), VALUES),
       priority=st.one_of(st.sampled_from(["high", "normal", "low", "HIGH"]),
                         st.integers(-9, 9)))
def test_any_line_of_the_plain_shape_agrees_with_the_model(
    kind: str, params: dict[str, Any], priority: Any
) -> None:
    line = {"kind": kind, "params": params, "priority": priority}
    assert outcome(line) == through_the_model(line)
