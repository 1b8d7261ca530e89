"""Kept expert groups: node sets sized to group load; the layer splits into exact independent blocks;
replicas stay in their group's nodes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import random_trace, topo

from placer.constraints import Constraints, group_mask, group_node_counts
from placer.errors import InfeasibleError
from placer.graph import summarize
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve
from placer.solvers.cpsat import merge_projected_array
from placer.solvers.groups import split_blocks
from placer.solvers.problem import build_problems, net_spans
from placer.topology import Model
from placer.trace import Trace

MODEL = Model("m", 24, 4, 8, 8, 1, num_groups=4, groups_per_token=2)


def _problem(seed: int, nodes: int = 8):
    trace = random_trace(300, 1, 24, 4, seed, skew=2.0)
    constraints = Constraints(groups=np.arange(24) // 6)
    return trace, build_problems(summarize(trace), nodes, 1, 3, constraints)[0]


def _sets(nets: np.ndarray, weights: np.ndarray) -> dict[tuple[int, ...], int]:
    return {tuple(int(e) for e in row if e >= 0): int(w) for row, w in zip(nets, weights)}


@pytest.mark.parametrize("seed", [0, 1])
def test_blocks_are_exact(seed):
    """For any assignment, the blocks' cuts and node touches add up to the layer's."""
    _, problem = _problem(seed)
    blocks = split_blocks(problem)
    assert sorted(b.nodes.tolist() for b in blocks) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    rng = np.random.default_rng(seed)
    node = np.empty(24, dtype=np.int64)
    parts = []
    for b in blocks:
        part = rng.integers(len(b.nodes), size=len(b.experts))
        node[b.experts] = b.nodes[part]
        parts.append(part)
        expected, weights = merge_projected_array(problem.nets, problem.weights, b.experts)
        assert _sets(b.problem.nets, b.problem.weights) == _sets(expected, weights)
    lam, touch = net_spans(problem.nets, problem.weights, node, 8)
    sub = [net_spans(b.problem.nets, b.problem.weights, p, len(b.nodes)) for b, p in zip(blocks, parts)]
    assert (problem.weights * lam).sum() == sum((b.problem.weights * s[0]).sum() for b, s in zip(blocks, sub))
    block_touch = np.zeros(8, dtype=np.int64)
    for b, s in zip(blocks, sub):
        block_touch[b.nodes] = s[1]
    np.testing.assert_array_equal(touch, block_touch)


def test_no_blocks_without_groups_or_with_max_nodes():
    trace, _ = _problem(0)
    assert split_blocks(build_problems(summarize(trace), 8, 1, 3)[0]) is None
    limited = Constraints(max_nodes=6, groups=np.arange(24) // 6)
    assert split_blocks(build_problems(summarize(trace), 8, 1, 3, limited)[0]) is None


def test_kept_groups_beat_contiguous_and_keep_replicas_home():
    """Solving by blocks keeps groups on their nodes; spare slots hold copies only there."""
    trace, problem = _problem(2)
    placement, report = solve(
        trace, PlacementProblem(topo(8, 1), keep_groups=True, model=MODEL), SolverSettings(solver="spectral")
    )
    node = placement.expert_gpu()[0]
    assert all(set(node[6 * g : 6 * g + 6]) <= {2 * g, 2 * g + 1} for g in range(4))
    contiguous = np.arange(24) // 3
    cut = (problem.weights * net_spans(problem.nets, problem.weights, contiguous, 8)[0]).sum()
    assert report.objective <= cut
    replicated, _ = solve(
        trace,
        PlacementProblem(topo(8, 2), keep_groups=True, model=MODEL, slots_per_gpu=3),
        SolverSettings(solver="spectral"),
    )
    row = replicated.phy2log[0]
    gpu_node = np.arange(len(row)) // 6  # 2 GPUs x 3 slots per node: 24 spare slots
    assert (row >= 0).all()
    home = group_mask(np.arange(24) // 6, summarize(trace).loads[0], 8, 6)  # node sets sized to group load
    assert home[row, gpu_node].all()


def _minimax(load: np.ndarray, need: np.ndarray, nodes: int) -> float:
    """Brute force: the least max load per node over every apportionment of ``nodes``."""
    best = np.inf
    for counts in itertools.product(*(range(n, nodes + 1) for n in need)):
        if sum(counts) == nodes:
            best = min(best, float(np.max(load / np.array(counts))))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_group_node_counts_minimax(seed):
    """Greedy apportionment reaches the brute-force minimax, keeps every need, fills every node."""
    rng = np.random.default_rng(seed)
    load = rng.integers(0, 100, size=4).astype(float)
    need = rng.integers(1, 3, size=4)
    nodes = int(need.sum()) + int(rng.integers(0, 6))
    counts = group_node_counts(load, need, nodes)
    assert counts.sum() == nodes and (counts >= need).all()
    assert np.max(load / counts) == pytest.approx(_minimax(load, need, nodes))
    np.testing.assert_array_equal(counts, group_node_counts(load, need, nodes))


def test_group_node_counts_ties_and_errors():
    assert group_node_counts(np.array([5.0, 2.0, 1.5, 1.5]), np.full(4, 2), 12).tolist() == [5, 3, 2, 2]
    assert group_node_counts(np.ones(4), np.ones(4, int), 10).tolist() == [3, 3, 2, 2]
    assert group_node_counts(np.zeros(3), np.ones(3, int), 8).tolist() == [3, 3, 2]
    with pytest.raises(InfeasibleError, match=r"need 9 nodes .*\[3, 3, 3\].* has 8 nodes"):
        group_node_counts(np.ones(3), np.full(3, 3), 8)


def test_group_mask_sized_to_load():
    """Disjoint contiguous ranges covering every node, wider for heavier groups, never below a
    group's need; the node count need not be a multiple of the group count."""
    groups = np.arange(24) // 6
    loads = np.where(groups == 0, 100.0, 1.0)
    for nodes, node_slots, widths in ((9, 4, [3, 2, 2, 2]), (10, 6, [7, 1, 1, 1]), (13, 2, [4, 3, 3, 3])):
        mask = group_mask(groups, loads, nodes, node_slots)
        assert (mask == mask[groups * 6]).all()  # one node set per group
        ranges = [np.flatnonzero(mask[6 * g]) for g in range(4)]
        assert np.concatenate(ranges).tolist() == list(range(nodes))  # disjoint, contiguous, covering
        assert [len(r) for r in ranges] == widths
        assert all(len(r) * node_slots >= 6 for r in ranges)
    with pytest.raises(InfeasibleError, match="need 8 nodes"):
        group_mask(groups, loads, 7, 4)


def _group_skewed_trace(tokens: int, seed: int) -> Trace:
    """Top-2 within one group of 6 of 24 experts; group 0 carries about half the tokens."""
    rng = np.random.default_rng(seed)
    group = rng.choice(4, size=tokens, p=[0.5, 0.2, 0.15, 0.15])
    pairs = np.stack([rng.permutation(6)[:2] for _ in range(tokens)])
    return Trace((6 * group[:, None] + pairs)[:, None, :].astype(np.int16), 24)


def test_kept_groups_sized_to_load_end_to_end():
    """Spare slots: the busiest group gets the most nodes (one copy needs 2 nodes of 2 GPUs x 2
    slots per group), and every expert and replica stays on its group's nodes, every slot filled."""
    trace = _group_skewed_trace(400, 5)
    model = Model("m", 24, 2, 8, 8, 1, num_groups=4, groups_per_token=1)
    placement, _ = solve(
        trace,
        PlacementProblem(topo(12, 2), keep_groups=True, model=model, slots_per_gpu=2),
        SolverSettings(solver="spectral"),
    )
    groups = np.arange(24) // 6
    loads = summarize(trace).loads[0]
    mask = group_mask(groups, loads, 12, 4)
    widths = mask[::6].sum(axis=1)
    assert widths[0] > widths[1:].max() and widths.sum() == 12
    row = placement.phy2log[0]
    assert (row >= 0).all()
    slot_node = np.arange(len(row)) // 4
    assert mask[row, slot_node].all()
    assert (np.bincount(row, minlength=24) >= 1).all()
