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


def _counters(internode: float, recv: list[float], gpu: list[float]) -> dict[str, np.ndarray]:
    """Block counters of one block and one layer."""
    return {"internode_tokens_dedup": np.array([[internode]]), "node_recv_dedup": np.array([[recv]]),
            "gpu_load": np.array([[gpu]]), "nvlink_sent": np.array([[0.0]])}


def test_in_sample_and_held_out_divide_by_the_best_peer_on_each_token_set(bench):
    # in-sample the best peer per metric is a different variant than held out
    train = {"mtk-km1": _counters(100, [60, 40], [5, 5]), "mtk-km1-hq": _counters(90, [70, 30], [6, 4]),
             "mtk-steiner": _counters(95, [50, 50], [8, 2]), "auto": _counters(81, [55, 45], [5, 5])}
    test = {"mtk-km1": _counters(200, [100, 100], [9, 9]), "mtk-km1-hq": _counters(210, [90, 110], [10, 8]),
            "mtk-steiner": _counters(190, [120, 80], [7, 11]), "auto": _counters(209, [99, 101], [9, 9])}
    case = bench.Case("c", 2000, counters=test, train_counters=train)
    ratios = bench.in_sample_and_held_out(case, "auto")
    assert ratios.shape == (2, len(bench.METRICS))
    np.testing.assert_allclose(ratios, [[81 / 90, 55 / 50, 5 / 5], [209 / 190, 101 / 100, 9 / 9]])


def test_median_limits_reached_counts_each_limit_and_both_at_once(bench):
    cut, nic = bench.FLOORS["internode_tokens_dedup"][1], bench.FLOORS["nic_peak_tokens"][1]
    fronts = [np.array([[cut - 0.01, nic + 0.05], [cut + 0.01, nic - 0.01]]),  # each limit, never both
              np.array([[cut, nic]]),  # both, at the limits
              np.array([[cut + 0.001, nic + 0.001]])]  # neither
    assert bench.median_limits_reached(fronts) == (2, 2, 1)
