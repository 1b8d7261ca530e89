"""benchmarks/bench_budget.py: the time limit it sets gives the per-layer budget it reports, it
refuses bad options by name, and a tiny run prints its table within 80 columns."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from placer.solvers.options import layer_budget

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_budget.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_budget", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("budget,layers", [(0.2, 3), (1.0, 3), (4.0, 16), (2.5, 58)])
def test_the_time_limit_gives_the_budget_per_layer(bench, budget, layers):
    assert layer_budget(bench.time_limit(budget, layers), layers) == pytest.approx(budget)


@pytest.mark.parametrize("argv,expected", [
    (["--budgets", "0.1,1"], "--budgets: the smallest per-layer budget is 0.2 units, got 0.1"),
    (["--budgets", "1,x"], "--budgets / --windows: expected comma-separated numbers"),
    (["--shapes", "olmoe:6"], "--shapes: expected preset:NODESxGPUS"),
    (["--shapes", "nosuch:2x2"], "got 'nosuch:2x2'"),
    (["--layers", "0"], "--layers, --test-tokens and --windows must be positive"),
])
def test_bad_options_are_refused_by_name(bench, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse(argv)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_a_tiny_run_prints_every_budget_within_80_columns(bench, capsys):
    assert bench.main(["--budgets", "0.2,1", "--layers", "1", "--test-tokens", "500",
                       "--shapes", "mixtral:4x2", "--windows", "1000"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| mixtral 4x2 1k |")]
    assert [row.split(" | ")[1] for row in rows] == ["0.2", "1"]
    assert rows[-1].endswith("| 1.000 | 1.000 |")  # the largest budget is its own reference
    assert "- 0.2 units/layer: s per unit median" in out and "- 1 units/layer:" in out
    assert max(len(line) for line in out.splitlines()) <= 80
