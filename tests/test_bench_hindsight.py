"""benchmarks/bench_generalise.py: its frontiers are exact (checked by enumeration), its ratios
divide by the right peer, and a tiny grid runs end to end, the same twice."""

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


def test_headroom_ratios_divide_each_token_set_by_the_best_peer(bench):
    test = {"mtk-km1": _counters(200, [100, 100], [9, 9]), "mtk-km1-hq": _counters(190, [90, 110], [10, 8]),
            "mtk-steiner": _counters(195, [120, 80], [7, 11])}
    sets = {"window": _counters(199, [1, 1], [1, 1]), "10 x window": _counters(188, [1, 1], [1, 1]),
            "held-out tokens": _counters(171, [1, 1], [1, 1])}
    cases = [bench.Case("a", 2000, counters=test, headroom=sets),
             bench.Case("b", 2000, counters=test, headroom={k: _counters(380, [1, 1], [1, 1]) for k in sets})]
    names, table = bench.headroom_ratios(cases)
    assert names == list(sets)
    np.testing.assert_allclose(table, [[199 / 190, 188 / 190, 171 / 190], [2.0, 2.0, 2.0]])
    lines = bench.headroom(cases)
    assert "held-out tokens 1.450" in " ".join(lines)  # median of 0.9 and 2.0
    assert all(len(line) <= 80 for text in lines for line in text.splitlines())


def test_node_frontiers_match_the_replay_of_every_node_assignment(bench):
    from placer import Trace, load_topology
    from placer.placement import from_expert_gpu

    rng = np.random.default_rng(3)
    experts, topology = 5, load_topology("h100-dgx").resized(3, 2)  # 3 nodes: no mirror symmetry
    ids = np.stack([rng.choice(experts, size=2, replace=False) for _ in range(2 * 60)]).reshape(60, 2, 2)
    trace = Trace(topk_ids=ids.astype(np.int16), num_experts=experts, seq_lens=np.full(6, 10))
    slots = 1
    points = [set(), set()]
    for node in itertools.product(range(3), repeat=experts):
        node = np.array(node)
        if (np.bincount(node, minlength=3) > 2 * slots).any():
            continue
        rank = np.array([(node[:e] == node[e]).sum() for e in range(experts)])  # slot order within the node
        expert_gpu = np.tile(node * 2 + rank // slots, (2, 1))
        counters = bench.block_counters(trace, from_expert_gpu(expert_gpu, 6, 2, slots), topology, 1)
        for layer in range(2):
            points[layer].add((float(counters["internode_tokens_dedup"][0, layer]),
                               float(counters["node_recv_dedup"][0, layer].max())))
    fronts = bench.node_frontiers(trace, topology, slots)
    for layer in range(2):
        assert {tuple(p) for p in fronts[layer]} == nondominated(np.array(sorted(points[layer])))


def test_exhaustive_limits_names_the_cases_where_no_assignment_meets_both_floors(bench):
    every_cut, every_nic = bench.FLOORS["internode_tokens_dedup"][0], bench.FLOORS["nic_peak_tokens"][0]
    reachable = bench.Case("reachable", 2000, exhaustive=np.array([[every_cut, every_nic]]))
    apart = bench.Case("apart", 2000, exhaustive=np.array([[0.9, every_nic + 0.1], [every_cut + 0.1, 0.8]]))
    (line,) = bench.exhaustive_limits([reachable, apart, bench.Case("not searched", 2000)])
    assert "on 1 of the 2 cases searched: apart" in " ".join(line.split())
    assert bench.exhaustive_limits([bench.Case("not searched", 2000)]) == []


TINY = ["--shapes", "mixtral:4x2", "--windows", "1000", "--seeds", "0", "--layers", "1", "--test-tokens", "2000",
        "--boot", "10", "--blocks", "10", "--no-esft", "--headroom", "2"]


def test_a_tiny_grid_runs_every_section_the_same_twice(bench, capsys):
    if not bench.available():
        pytest.skip("Mt-KaHyPar >= 1.5 is not installed (pip install -e '.[bench]'): the bench has no peer")
    runs = []
    for _ in range(2):
        assert bench.main(TINY) == 0
        runs.append([line for line in capsys.readouterr().out.splitlines() if not line.startswith("wall ")])
    assert runs[0] == runs[1]
    text = "\n".join(runs[0])
    for section in ("### auto", "### Hindsight: 1 cases", "### Oracle: 1 cases", "- oracle median fewest inter-node x",
                    "### Headroom: 1 cases", "| case | window | 2 x window |",
                    "- exhaustive: no node assignment", "- headroom median inter-node x"):
        assert section in text
    assert max(len(line) for line in runs[0]) <= 80
