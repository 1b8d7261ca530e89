"""Solvers: exactness on small instances (vs brute force), constraints, infeasibility, determinism."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from conftest import random_trace, topo

from placer.bundled import sample_trace
from placer.constraints import Constraints
from placer.errors import InfeasibleError
from placer.evaluation.replay import evaluate
from placer.graph import summarize
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import api, solve
from placer.solvers import node_stage as node_stage_module
from placer.solvers.options import Options, layer_budget
from placer.solvers.pipeline import solve_layer
from placer.solvers.problem import build_problems, connectivity
from placer.solvers.refine import evaluate as objective
from placer.studies import synth
from placer.topology import Topology
from placer.trace import Trace, load_trace, validate_arrays


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
    pl, report = solve(trace, PlacementProblem(topo(2, 2)), SolverSettings(solver="ilp", seed=0, time_limit=5))
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
    _, report = solve(trace, PlacementProblem(topo(3, 1)), SolverSettings(solver="spectral", alpha=0.0))
    assert report.layers[0].objective <= 1.05 * brute_force_cut(problem)


def test_uneven_expert_count_and_slots():
    trace = random_trace(200, 2, 60, 4, 3)
    pl, _ = solve(trace, PlacementProblem(topo(2, 4)), SolverSettings(solver="spectral"))
    assert pl.slots_per_gpu == 8
    counts = pl.gpu_expert_counts()
    assert counts.max() <= 8
    for layer in range(2):
        held = np.sort(pl.phy2log[layer][pl.phy2log[layer] >= 0])
        assert np.array_equal(held, np.arange(60))


def test_balance_respected_and_infeasible_explained():
    trace = random_trace(300, 1, 16, 2, 4, skew=1.0)
    pl, _ = solve(trace, PlacementProblem(topo(2, 4), balance=0.5), SolverSettings(solver="spectral"))
    loads = np.bincount(trace.topk_ids[:, 0].ravel(), minlength=16)
    gpu_load = np.bincount(pl.expert_gpu()[0], weights=loads, minlength=8)
    assert gpu_load.max() <= 1.5 * gpu_load.mean() + 1e-9
    hot = np.zeros((100, 1, 2), np.int16)
    hot[:, 0, 1] = np.arange(100) % 15 + 1  # expert 0 in every token
    with pytest.raises(InfeasibleError, match="expert 0 alone carries 100.*best achievable is balance >="):
        solve(Trace(hot, 16), PlacementProblem(topo(2, 4), balance=0.1), SolverSettings(solver="spectral"))


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
    pl, report = solve(trace, PlacementProblem(topo(4, 2), max_nodes=2), SolverSettings(solver="spectral"))
    problem = build_problems(summarize(trace), 4, 2)[0]
    lam = connectivity(problem, pl.expert_gpu()[0] // 2)
    assert lam.max() <= 2, report.messages
    with pytest.raises(InfeasibleError, match="max_nodes 1 is infeasible.*node holds only 2"):
        solve(trace, PlacementProblem(topo(8, 1), max_nodes=1), SolverSettings(solver="spectral"))
    # every triple of 6 experts over 3 nodes of 2: no 2-node placement holds all of them
    ids = np.array(list(itertools.combinations(range(6), 3)), np.int16)[:, None, :]
    with pytest.raises(InfeasibleError, match="CP-SAT proved that no placement satisfies it"):
        solve(
            Trace(ids, 6), PlacementProblem(topo(3, 1), max_nodes=2, slots_per_gpu=2), SolverSettings(solver="spectral")
        )


def test_max_nodes_coverage():
    trace = clustered_trace(200, 7)
    noisy = np.concatenate([trace.topk_ids, random_trace(20, 1, 16, 3, 7).topk_ids])
    trace = Trace(noisy, 16)
    pl, _ = solve(
        trace, PlacementProblem(topo(4, 2), max_nodes=2, max_nodes_coverage=0.8), SolverSettings(solver="spectral")
    )
    problem = build_problems(summarize(trace), 4, 2)[0]
    lam = connectivity(problem, pl.expert_gpu()[0] // 2)
    assert problem.weights[lam <= 2].sum() >= 0.8 * problem.weights.sum()


def test_groups_kept_on_own_nodes():
    from placer.topology import Model

    model = Model("m", 16, 2, 8, 8, 1, num_groups=2, groups_per_token=1)
    trace = random_trace(100, 1, 16, 2, 8)
    pl, _ = solve(trace, PlacementProblem(topo(4, 2), keep_groups=True, model=model), SolverSettings(solver="spectral"))
    node = pl.expert_gpu()[0] // 2
    assert set(node[:8]) <= {0, 1} and set(node[8:]) <= {2, 3}
    eight = Model("m", 16, 2, 8, 8, 1, num_groups=8, groups_per_token=2)
    pl, _ = solve(trace, PlacementProblem(topo(4, 2), keep_groups=True, model=eight), SolverSettings(solver="spectral"))
    node = pl.expert_gpu()[0] // 2
    assert all(node[2 * g] == node[2 * g + 1] for g in range(8))  # each group whole on one node
    assert np.bincount(node, minlength=4).tolist() == [4, 4, 4, 4]
    with pytest.raises(InfeasibleError, match="groups"):
        solve(trace, PlacementProblem(topo(3, 2), keep_groups=True, model=eight), SolverSettings(solver="spectral"))


def test_deterministic_and_worker_independent():
    trace = random_trace(200, 2, 32, 4, 9)
    a, _ = solve(trace, PlacementProblem(topo(4, 2)), SolverSettings(solver="auto", seed=3, time_limit=1, workers=1))
    b, _ = solve(trace, PlacementProblem(topo(4, 2)), SolverSettings(solver="auto", seed=3, time_limit=1, workers=2))
    assert np.array_equal(a.phy2log, b.phy2log)


def test_ilp_never_worse_than_spectral():
    # auto chooses by a validation split (tests/test_validation.py), so its train objective may be higher
    trace = random_trace(400, 1, 32, 4, 10, skew=2.0)
    problem = build_problems(summarize(trace), 4, 2)[0]
    opts = {"seed": 0, "alpha": 0.0, "kicks": 40, "layer_budget": 2.0}
    s = solve_layer(problem, Options(solver="spectral", **opts))
    a = solve_layer(problem, Options(solver="ilp", **opts))
    assert a.objective <= s.objective


def test_spare_slots_hold_replicas_and_cut_traffic():
    trace = load_trace(sample_trace("train"))
    topology = Topology("t", 2, 4, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
    one_copy, _ = solve(trace, PlacementProblem(topology), SolverSettings(solver="spectral", time_limit=2))
    replicated, report = solve(
        trace, PlacementProblem(topology, slots_per_gpu=10), SolverSettings(solver="spectral", time_limit=2)
    )
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


def test_more_gpus_than_experts_fills_every_slot():
    """With fewer experts than GPUs (one slot each, as EPLB at 64 x 8 for 256 experts) the
    spare slots hold replicas instead of staying empty."""
    trace = random_trace(300, 2, 24, 4, 11, skew=2.0)
    placement, _ = solve(trace, PlacementProblem(topo(16, 2), slots_per_gpu=1), SolverSettings(solver="spectral"))
    assert (placement.phy2log >= 0).all()
    assert (placement.expert_copies() >= 1).all()


def test_repack_node_makes_room_when_longest_first_dead_ends():
    """2 GPUs x 2 slots, copies c (4), a (3), b (2), c (0.1): longest-first fills GPU 1 with a, b
    and leaves the second c only GPU 0, which holds c; a copy moves to make room."""
    from placer.solvers.replicas import repack_node

    row = np.array([2, 0, 1, 2])
    repack_node(row, np.array([4.0, 3.0, 2.0, 0.1]), 0, 2, 2)
    gpus = row.reshape(2, 2)
    assert sorted(row.tolist()) == [0, 1, 2, 2]
    assert all(len(set(g)) == 2 for g in gpus.tolist())


def test_eplb_solver_matches_the_reference_function():
    from placer.eplb import rebalance_experts

    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(16)[:4] for _ in range(200 * 2)]).reshape(200, 2, 4)
    trace = validate_arrays("r", {"topk_ids": ids})
    topology = Topology("t", 2, 2, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
    placement, _ = solve(trace, PlacementProblem(topology, slots_per_gpu=5), SolverSettings(solver="eplb"))
    expected, _, _ = rebalance_experts(summarize(trace).loads, 20, 1, 2, 4)
    assert np.array_equal(placement.phy2log, expected)


# ---------------------------------------------------------------- large layers (sampling, fast paths)


def _reference_spans(nets: np.ndarray, part: np.ndarray) -> np.ndarray:
    nodes = np.where(nets >= 0, part[np.maximum(nets, 0)], -1)
    nodes.sort(axis=1)
    return (nodes[:, :1] >= 0).sum(axis=1) + ((nodes[:, 1:] != nodes[:, :-1]) & (nodes[:, 1:] >= 0)).sum(axis=1)


def test_net_spans_match_a_numpy_reference():
    from placer.solvers.problem import net_spans

    rng = np.random.default_rng(0)
    sets, counts = summarize(random_trace(300, 1, 20, 5, 1)).layers[0].sets, None
    sets = np.where(rng.random(sets.shape) < 0.2, -1, sets)  # some padding inside rows
    counts = rng.integers(1, 9, len(sets))
    part = rng.integers(0, 6, 20)
    lam, touch = net_spans(sets, counts, part, 6)
    assert np.array_equal(lam, _reference_spans(sets, part))
    nodes = np.where(sets >= 0, part[np.maximum(sets, 0)], -1)
    assert touch.tolist() == [int(counts[(nodes == n).any(axis=1)].sum()) for n in range(6)]


def test_merge_projected_arrays_match_the_dict_reference():
    from placer.solvers.cpsat import merge_projected

    rng = np.random.default_rng(1)
    for trial in range(50):
        experts, k = int(rng.integers(3, 30)), int(rng.integers(1, 7))
        nets = np.full((int(rng.integers(0, 80)), k), -1, np.int32)
        for row in nets:
            size = int(rng.integers(1, min(k, experts) + 1))
            row[:size] = np.sort(rng.choice(experts, size, replace=False))
        weights = rng.integers(1, 100, len(nets))
        members = rng.choice(experts, int(rng.integers(1, experts + 1)), replace=False)
        for min_size in (1, 2):
            local = {int(e): i for i, e in enumerate(members)}
            acc: dict = {}
            for row, w in zip(nets.tolist(), weights.tolist()):
                key = tuple(sorted(local[e] for e in row if e in local))
                if len(key) >= min_size:
                    acc[key] = acc.get(key, 0) + w
            sets, w = merge_projected(nets, weights, members, min_size)
            assert sets == sorted(acc) and w.tolist() == [acc[s] for s in sorted(acc)], trial


def test_fast_descent_equals_the_general_path():
    """No load cap and no max-nodes: the O(1) cost and the bound-pruned swaps must choose exactly
    what the general path (taken with a never-binding finite cap) chooses."""
    from placer.solvers.node_stage import _spec
    from placer.solvers.refine import SearchSpec, local_search

    for seed in range(3):
        problem = build_problems(summarize(random_trace(600, 1, 48, 6, seed, skew=2.0)), 6, 2)[0]
        spec = _spec(problem, 2.0)
        capped = SearchSpec(**{**spec.__dict__, "load_cap": np.full(6, 1e300)})
        start = np.arange(48) % 6
        fast, fast_value = local_search(spec, start, seed=seed, kicks=8)
        slow, slow_value = local_search(capped, start, seed=seed, kicks=8)
        assert np.array_equal(fast, slow) and fast_value == slow_value
        floor = float(problem.weights.sum()) / 4
        fast, fast_value = local_search(replace(spec, touch_floor=floor), start, seed=seed, kicks=8)
        slow, slow_value = local_search(replace(capped, touch_floor=floor), start, seed=seed, kicks=8)
        assert np.array_equal(fast, slow) and fast_value == slow_value


def test_touch_floor_is_a_soft_cap_on_the_peak_node_touch():
    """Below the floor the peak costs nothing (a floor above every peak = the cut-only search);
    a binding floor trades cut for a lower peak."""
    from placer.solvers.node_stage import _spec
    from placer.solvers.problem import net_spans
    from placer.solvers.refine import evaluate, local_search

    problem = build_problems(summarize(random_trace(2000, 1, 32, 4, 3, skew=3.0)), 4, 2)[0]
    start = np.arange(32) % 4
    cut_only, _ = local_search(_spec(problem, 0.0), start, seed=1, kicks=20)
    unbinding = replace(_spec(problem, 5.0), touch_floor=float(problem.weights.sum()))
    assert np.array_equal(local_search(unbinding, start, seed=1, kicks=20)[0], cut_only)
    peak = net_spans(problem.nets, problem.weights, cut_only, 4)[1].max()
    capped_spec = replace(_spec(problem, 5.0), touch_floor=0.8 * peak)
    capped, value = local_search(capped_spec, cut_only, seed=1, kicks=20)
    capped_peak = net_spans(problem.nets, problem.weights, capped, 4)[1].max()
    assert capped_peak < peak
    assert evaluate(_spec(problem, 0.0), capped)[1] >= evaluate(_spec(problem, 0.0), cut_only)[1]
    assert value == evaluate(capped_spec, capped)[0] <= evaluate(capped_spec, cut_only)[0]


def test_sample_nets_keeps_heavy_sets_and_reweights_the_rest():
    from placer.solvers.problem import sample_nets

    problem = build_problems(summarize(random_trace(3000, 1, 24, 3, 2, skew=4.0)), 4, 2)[0]
    assert sample_nets(problem, len(problem.weights))[1] is None  # small enough: unchanged
    sampled, info = sample_nets(problem, 200, seed=5)
    r = info.rate
    heavy = problem.weights >= r
    assert info.nets == len(problem.weights) and info.kept == len(sampled.weights) <= 1.2 * 200
    kept = {tuple(row): w for row, w in zip(sampled.nets.tolist(), sampled.weights.tolist())}
    for row, w in zip(problem.nets[heavy].tolist(), problem.weights[heavy].tolist()):
        assert kept[tuple(row)] == w  # heavy sets: exact
    original = {tuple(row): w for row, w in zip(problem.nets.tolist(), problem.weights.tolist())}
    assert r > 1 and all(w == (max(original[row], r)) for row, w in kept.items())
    assert info.dropped_share > 0 and 0 < info.exact_share < 1
    again, _ = sample_nets(problem, 200, seed=5)
    assert np.array_equal(again.nets, sampled.nets)  # deterministic
    assert abs(sampled.weights.sum() / problem.weights.sum() - 1) < 0.15  # unbiased total


def test_large_layers_search_a_sample_but_report_exact_figures(monkeypatch):
    from placer.solvers import options
    from placer.solvers.problem import net_spans

    monkeypatch.setattr(options, "SAMPLE_NETS", 400)
    trace = random_trace(3000, 2, 64, 6, 4)
    summary = summarize(trace)
    placement, report = solve(summary, PlacementProblem(topo(8, 2)), SolverSettings(solver="spectral", time_limit=2))
    assert all(r.sample is not None and r.sample.kept < r.sample.nets for r in report.layers)
    assert any("weighted sample" in m for m in report.messages)
    for r, part in zip(report.layers, summary.layers):  # objective on every set, not the sample
        lam, touch = net_spans(part.sets, part.set_counts, r.expert_gpu // 2, 8)
        assert r.objective == float((part.set_counts * lam).sum()) and r.peak_touch == float(touch.max())
    again, _ = solve(summary, PlacementProblem(topo(8, 2)), SolverSettings(solver="spectral", time_limit=2, workers=2))
    assert np.array_equal(placement.phy2log, again.phy2log)
    contiguous = np.arange(64) // 8
    for r, part in zip(report.layers, summary.layers):  # the sampled search still beats contiguous
        cut = float((part.set_counts * net_spans(part.sets, part.set_counts, contiguous, 8)[0]).sum())
        assert r.objective < cut


def test_kicks_fit_the_layer_budget_and_small_layers_get_the_full_count():
    ks = node_stage_module
    problem = build_problems(summarize(synth.generate(replace(synth.PRESETS["olmoe"], num_layers=1), 4000)), 6, 2)[0]
    descent = ks.descent_cost(problem)
    counts = []
    for budget in (descent, 0.05, 0.2, 1.0, 3.0, 100.0):  # below two descents: none
        kicks = ks.kick_count(problem, Options("ilp", 0, None, 15, budget))
        assert kicks <= max(15, int(30 * budget))
        assert kicks == 0 or descent * (1 + kicks * ks.KICK_COST) <= 0.5 * budget  # the estimate fits half of it
        counts.append(kicks)
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 3000  # grows with the budget to the floor
    tiny = build_problems(summarize(random_trace(200, 1, 16, 2, 0)), 2, 2)[0]
    assert ks.kick_count(tiny, Options("ilp", 0, None, 15, 0.2)) == 15
    assert ks.kick_count(tiny, Options("spectral", 0, None, 40, 0.2)) == 40


def test_the_mtkahypar_start_takes_fewer_pins_on_a_short_budget_and_many_parts():
    from placer.solvers import validation

    assert validation.mtk_start_pins(100.0, 4) == validation.MTK_START_PINS
    for parts in (2, 4, 32, 48):
        short = validation.mtk_start_pins(0.025, parts)
        assert 0 < short < validation.MTK_START_PINS
        assert short * validation.mtk_pin_cost(parts) <= 2 * 0.025 + 1e-12
    assert validation.mtk_start_pins(0.1, 2) == validation.mtk_start_pins(0.1, 4)  # the fewest levels charged
    assert validation.mtk_start_pins(0.1, 32) < validation.mtk_start_pins(0.1, 8) < validation.mtk_start_pins(0.1, 4)


def test_one_blas_thread_restores_the_thread_count():
    from placer.solvers.spectral import _blas_controls, one_blas_thread

    before = [int(get()) for _, get in _blas_controls()]
    with one_blas_thread():
        assert all(int(get()) == 1 for _, get in _blas_controls())
    assert [int(get()) for _, get in _blas_controls()] == before


def test_streaming_cap_defaults_to_the_search_size_and_reports_what_it_dropped(monkeypatch):
    from placer.solvers import options

    trace = random_trace(3000, 2, 64, 6, 4)
    exact, _ = solve(
        trace, PlacementProblem(topo(8, 2)), SolverSettings(solver="spectral", time_limit=2, max_nets=None)
    )
    same, report = solve(
        trace, PlacementProblem(topo(8, 2)), SolverSettings(solver="spectral", time_limit=2)
    )  # sets fit the default cap
    assert np.array_equal(exact.phy2log, same.phy2log) and not any("streaming cap" in m for m in report.messages)
    assert api.stream_cap("spectral", 60, 58, None) == options.SAMPLE_NETS
    assert api.stream_cap("auto", 60, 58, None) == options.search_limit("auto", options.layer_budget(60, 58))
    assert api.stream_cap("auto", 60, 58, 2) is None and api.stream_cap("eplb", 60, 58, None) == 0
    monkeypatch.setattr(options, "SAMPLE_NETS", 400)
    capped, report = solve(trace, PlacementProblem(topo(8, 2)), SolverSettings(solver="spectral", time_limit=2))
    again, _ = solve(trace, PlacementProblem(topo(8, 2)), SolverSettings(solver="spectral", time_limit=2, max_nets=400))
    assert np.array_equal(capped.phy2log, again.phy2log)
    assert any("streaming cap kept at most 400" in m for m in report.messages)
    assert all(r.sample is None for r in report.layers)  # the search runs on the kept sets


def test_node_stage_is_never_worse_than_contiguous_on_its_objective():
    """64 experts in 8 groups of 8, top-4 groups: contiguous puts one group per node, a basin
    the spectral start alone misses on some layers; the node stage also searches from it."""
    params = replace(synth.preset("deepseek-v3"), num_experts=64, num_layers=6, top_k=8)
    summary = summarize(synth.generate(params, 20_000, seed=0))
    opts = Options("spectral", 0, None, 15, layer_budget(10, 6))
    contiguous = np.repeat(np.arange(8), 8)
    for problem in build_problems(summary, 8, 8, 1, Constraints()):
        spec = node_stage_module._spec(problem, node_stage_module.DEFAULT_ALPHA.get(8, 2.0))
        part = node_stage_module.node_stage(problem, opts)[0]
        assert objective(spec, part)[0] <= objective(spec, contiguous)[0], problem.layer


def test_summary_calls_an_unproven_bound_weak_instead_of_a_gap():
    def layer(status: str, objective: float, bound: float) -> api.LayerResult:
        return api.LayerResult(0, np.zeros(4, dtype=np.int64), objective, bound, status, 0.0, 0.0, 0.0, 0.0)

    proven = api.SolveReport("auto", [layer("optimal", 10, 10), layer("optimal", 12, 12)])
    assert "every layer proven optimal" in proven.summary() and "22 token-node copies" in proven.summary()
    weak = api.SolveReport("spectral", [layer("optimal", 10, 10), layer("feasible", 30, 9)])
    text = weak.summary()
    assert "1/2 layers proven optimal" in text and "weak" in text and "19 in all" in text
    assert "gap" not in text and "%" not in text
