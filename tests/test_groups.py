"""Kept expert groups: the layer splits into exact independent blocks; replicas stay in their group's nodes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_trace, topo

from placer.graph import summarize
from placer.solvers import place
from placer.solvers.cpsat import merge_projected_array
from placer.solvers.groups import split_blocks
from placer.solvers.problem import Constraints, build_problems, net_spans
from placer.topology import Model

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
    placement, report = place(trace, topo(8, 1), solver="spectral", keep_groups=True, model=MODEL)
    node = placement.expert_gpu()[0]
    assert all(set(node[6 * g: 6 * g + 6]) <= {2 * g, 2 * g + 1} for g in range(4))
    contiguous = np.arange(24) // 3
    cut = (problem.weights * net_spans(problem.nets, problem.weights, contiguous, 8)[0]).sum()
    assert report.objective <= cut
    replicated, _ = place(trace, topo(8, 2), solver="spectral", keep_groups=True, model=MODEL, slots_per_gpu=3)
    row = replicated.phy2log[0]
    gpu_node = np.arange(len(row)) // 6  # 2 GPUs x 3 slots per node: 24 spare slots
    assert (row >= 0).all()
    for g in range(4):
        assert set(gpu_node[(row // 6) == g]) <= {2 * g, 2 * g + 1}
