"""Solvers: exactness on small instances (vs brute force), constraints, infeasibility, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from placer.bundled import sample_trace
from placer.errors import InfeasibleError
from placer.graph import summarize
from placer.replay import evaluate
from placer.solvers import place
from placer.solvers.api import Options, solve_layer
from placer.solvers.problem import build_problems, connectivity
from placer.topology import Topology
from placer.trace import Trace, load_trace, validate_arrays


def topo(nodes: int, gpus: int) -> Topology:
    return Topology("t", nodes, gpus, 80e9, 1e15, 4.5e11, 5e10, 5e-6)


def random_trace(tokens: int, layers: int, experts: int, k: int, seed: int, skew: float = 1.0) -> Trace:
    rng = np.random.default_rng(seed)
    p = rng.random(experts) ** skew
    p /= p.sum()
    ids = np.stack([
        np.stack([rng.choice(experts, size=k, replace=False, p=p) for _ in range(tokens)])
        for _ in range(layers)
    ], axis=1)
    return Trace(topk_ids=ids.astype(np.int16), num_experts=experts)


def brute_force_cut(problem, max_nodes=None) -> int:
    """Min sum_j w_j * lambda_j over all node assignments with node slots respected."""
    E, N, cap = problem.num_experts, problem.num_nodes, problem.node_slots
    best = None
    for assign in itertools.product(range(N), repeat=E):
        a = np.array(assign)
        if np.bincount(a, minlength=N).max() > cap or a[0] != 0:
            continue
        lam = connectivity(problem, a)
        if max_nodes is not None and (lam > max_nodes).any():
            continue
        cut = int((problem.weights * lam).sum())
        best = cut if best is None else min(best, cut)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ilp_proves_optimal_and_matches_brute_force(seed):
    trace = random_trace(60, 1, 8, 3, seed, skew=3.0)
    pl, report = place(trace, topo(2, 2), solver="ilp", seed=0, time_limit=5)
    layer = report.layers[0]
    problem = build_problems(summarize(trace), 2, 2)[0]
    assert layer.status == "optimal"
    assert layer.objective == brute_force_cut(problem)
    assert layer.bound == pytest.approx(layer.objective)
    assert layer.gap == 0.0
    # the placement realises the reported objective
    node = pl.expert_gpu()[0] // 2
    assert int((problem.weights * connectivity(problem, node)).sum()) == layer.objective


def test_spectral_close_to_brute_force_on_small():
    trace = random_trace(80, 1, 9, 3, 5, skew=2.0)
    problem = build_problems(summarize(trace), 3, 1)[0]
    _, report = place(trace, topo(3, 1), solver="spectral", alpha=0.0)
    assert report.layers[0].objective <= 1.05 * brute_force_cut(problem)


def test_uneven_expert_count_and_slots():
    trace = random_trace(200, 2, 60, 4, 3)
    pl, _ = place(trace, topo(2, 4), solver="spectral")
    assert pl.slots_per_gpu == 8
    counts = pl.gpu_expert_counts()
    assert counts.max() <= 8
    for layer in range(2):
        held = np.sort(pl.phy2log[layer][pl.phy2log[layer] >= 0])
        assert np.array_equal(held, np.arange(60))


def test_balance_respected_and_infeasible_explained():
    trace = random_trace(300, 1, 16, 2, 4, skew=1.0)
    pl, _ = place(trace, topo(2, 4), solver="spectral", balance=0.5)
    loads = np.bincount(trace.topk_ids[:, 0].ravel(), minlength=16)
    gpu_load = np.bincount(pl.expert_gpu()[0], weights=loads, minlength=8)
    assert gpu_load.max() <= 1.5 * gpu_load.mean() + 1e-9
    hot = np.zeros((100, 1, 2), np.int16)
    hot[:, 0, 1] = np.arange(100) % 15 + 1  # expert 0 in every token
    with pytest.raises(InfeasibleError, match="expert 0 alone carries 100.*best achievable is balance >="):
        place(Trace(hot, 16), topo(2, 4), solver="spectral", balance=0.1)


def clustered_trace(tokens: int, seed: int) -> Trace:
    """16 experts in 4 hidden clusters of 4; each token picks 3 experts from 2 clusters."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(16).reshape(4, 4)
    rows = []
    for _ in range(tokens):
        c1, c2 = rng.choice(4, size=2, replace=False)
        rows.append(rng.choice(np.concatenate([perm[c1], perm[c2]]), size=3, replace=False))
    return Trace(topk_ids=np.array(rows, np.int16)[:, None, :], num_experts=16)


def test_max_nodes_hard_and_infeasible():
    trace = clustered_trace(150, 6)
    pl, report = place(trace, topo(4, 2), solver="spectral", max_nodes=2)
    problem = build_problems(summarize(trace), 4, 2)[0]
    lam = connectivity(problem, pl.expert_gpu()[0] // 2)
    assert lam.max() <= 2, report.messages
    with pytest.raises(InfeasibleError, match="max_nodes 1 is infeasible.*node holds only 2"):
        place(trace, topo(8, 1), solver="spectral", max_nodes=1)
    # every triple of 6 experts over 3 nodes of 2: no 2-node placement holds all of them
    ids = np.array(list(itertools.combinations(range(6), 3)), np.int16)[:, None, :]
    with pytest.raises(InfeasibleError, match="CP-SAT proved that no placement satisfies it"):
        place(Trace(ids, 6), topo(3, 1), solver="spectral", max_nodes=2, slots_per_gpu=2)


def test_max_nodes_coverage():
    trace = clustered_trace(200, 7)
    noisy = np.concatenate([trace.topk_ids, random_trace(20, 1, 16, 3, 7).topk_ids])
    trace = Trace(noisy, 16)
    pl, _ = place(trace, topo(4, 2), solver="spectral", max_nodes=2, max_nodes_coverage=0.8)
    problem = build_problems(summarize(trace), 4, 2)[0]
    lam = connectivity(problem, pl.expert_gpu()[0] // 2)
    assert problem.weights[lam <= 2].sum() >= 0.8 * problem.weights.sum()


def test_groups_kept_on_own_nodes():
    from placer.topology import Model

    model = Model("m", 16, 2, 8, 8, 1, num_groups=2, groups_per_token=1)
    trace = random_trace(100, 1, 16, 2, 8)
    pl, _ = place(trace, topo(4, 2), solver="spectral", keep_groups=True, model=model)
    node = pl.expert_gpu()[0] // 2
    assert set(node[:8]) <= {0, 1} and set(node[8:]) <= {2, 3}
    eight = Model("m", 16, 2, 8, 8, 1, num_groups=8, groups_per_token=2)
    pl, _ = place(trace, topo(4, 2), solver="spectral", keep_groups=True, model=eight)
    node = pl.expert_gpu()[0] // 2
    assert all(node[2 * g] == node[2 * g + 1] for g in range(8))  # each group whole on one node
    assert np.bincount(node, minlength=4).tolist() == [4, 4, 4, 4]
    with pytest.raises(InfeasibleError, match="groups"):
        place(trace, topo(3, 2), keep_groups=True, model=eight, solver="spectral")


def test_deterministic_and_worker_independent():
    trace = random_trace(200, 2, 32, 4, 9)
    a, _ = place(trace, topo(4, 2), solver="auto", seed=3, time_limit=1, workers=1)
    b, _ = place(trace, topo(4, 2), solver="auto", seed=3, time_limit=1, workers=2)
    assert np.array_equal(a.phy2log, b.phy2log)


def test_auto_never_worse_than_spectral():
    trace = random_trace(400, 1, 32, 4, 10, skew=2.0)
    problem = build_problems(summarize(trace), 4, 2)[0]
    opts = {"seed": 0, "alpha": 0.0, "kicks": 40, "layer_budget": 2.0}
    s = solve_layer(problem, Options(solver="spectral", **opts))
    a = solve_layer(problem, Options(solver="auto", **opts))
    assert a.objective <= s.objective


def test_spare_slots_hold_replicas_and_cut_traffic():
    trace = load_trace(sample_trace("train"))
    topology = Topology("t", 2, 4, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
    one_copy, _ = place(trace, topology, solver="spectral", time_limit=2)
    replicated, report = place(trace, topology, solver="spectral", slots_per_gpu=10, time_limit=2)
    copies = replicated.expert_copies()
    assert (copies >= 1).all() and copies.sum(axis=1).tolist() == [80] * trace.num_layers
    assert (replicated.gpu_expert_counts() <= 10).all()
    for layer in range(trace.num_layers):  # never two copies of one expert on one GPU
        per_gpu = replicated.phy2log[layer].reshape(8, 10)
        assert all(len(set(row[row >= 0])) == len(row[row >= 0]) for row in per_gpu)
    before = evaluate(trace, one_copy, topology).totals
    after = evaluate(trace, replicated, topology).totals
    assert after["internode_tokens_dedup"] < before["internode_tokens_dedup"]
    assert after["gpu_peak_load"] < before["gpu_peak_load"]
    assert any("spare slots" in message for message in report.messages)


def test_eplb_solver_matches_the_reference_function():
    from placer.eplb import rebalance_experts

    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(16)[:4] for _ in range(200 * 2)]).reshape(200, 2, 4)
    trace = validate_arrays("r", {"topk_ids": ids})
    topology = Topology("t", 2, 2, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
    placement, _ = place(trace, topology, solver="eplb", slots_per_gpu=5)
    expected, _, _ = rebalance_experts(summarize(trace).loads, 20, 1, 2, 4)
    assert np.array_equal(placement.phy2log, expected)
