"""The hindsight frontier of benchmarks/bench_generalise.py is exact (checked by enumeration)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generalise.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_generalise", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def nondominated(points: np.ndarray) -> set[tuple[float, float]]:
    return {tuple(p) for p in points
            if not any((q <= p).all() and (q < p).any() for q in points)}


@pytest.mark.parametrize("seed", range(5))
def test_pareto_sums_is_the_frontier_of_every_per_layer_choice(bench, seed):
    rng = np.random.default_rng(seed)
    per_layer = [rng.integers(0, 12, size=(5, 2)).astype(float) for _ in range(3)]
    every = np.array([sum(layer[i] for layer, i in zip(per_layer, choice))
                      for choice in itertools.product(range(5), repeat=3)])
    front = bench.pareto_sums(per_layer)
    assert {tuple(p) for p in front} == nondominated(np.unique(every, axis=0))
    assert len(front) == len({tuple(p) for p in front})
