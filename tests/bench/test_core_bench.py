"""The core micro-benchmark runs end to end and ours agrees with every reference."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from app.core import run
from app.ops.bench.core import _governor_params, print_table, run_core_bench


@pytest.mark.bench
def test_core_bench_results_match_the_references() -> None:
    rows = run_core_bench(repeat=2)
    assert len(rows) >= 6
    assert [row["name"] for row in rows if not row["equal"]] == []
    assert all(row["ours_us"] > 0 and row["naive_us"] > 0 for row in rows)
    out = io.StringIO()
    print_table(rows, Console(file=out, width=120))
    assert all(row["name"] in out.getvalue() for row in rows)


@pytest.mark.bench
def test_governor_case_evaluates_every_cycle() -> None:
    assert run("evaluate", _governor_params())["cycles_evaluated"] == 10
