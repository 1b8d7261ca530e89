"""auto: candidates chosen on a validation split of the training window."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import random_trace

from placer.constraints import Constraints
from placer.graph import summarize
from placer.solvers import mtk, validation
from placer.solvers.options import Options
from placer.solvers.pipeline import place_layer, solve_layer
from placer.solvers.problem import build_problems
from placer.studies import synth


def _problems(tokens=3000, nodes=3, gpus=4, preset="qwen1.5-moe", layers=2, seed=0):
    trace = synth.generate(replace(synth.PRESETS[preset], num_layers=layers), tokens, seed=seed)
    return build_problems(summarize(trace), nodes, gpus)


def test_split_keeps_every_token_once_and_is_deterministic():
    problem = _problems()[1]
    fit, valid = validation.split_problem(problem, 0.25, seed=4)
    again = validation.split_problem(problem, 0.25, seed=4)
    assert np.array_equal(valid.weights, again[1].weights) and np.array_equal(valid.nets, again[1].nets)
    assert fit.weights.sum() + valid.weights.sum() == problem.weights.sum()
    assert (fit.weights > 0).all() and (valid.weights > 0).all()
    assert 0.2 < valid.weights.sum() / problem.weights.sum() < 0.3
    assert np.array_equal(fit.loads + valid.loads, problem.loads)
    other = validation.split_problem(problem, 0.25, seed=5)[1]
    assert not (len(other.weights) == len(valid.weights) and np.array_equal(other.nets, valid.nets))


@pytest.mark.parametrize("case", [("qwen1.5-moe", 3, 4, 2000, None), ("mixtral", 4, 2, 1500, None),
                                  ("olmoe", 6, 2, 4000, None), ("seed001", 5, 4, 2000, 0.0)])
def test_auto_is_never_worse_on_its_validation_split_than_any_candidate(case):
    preset, nodes, gpus, tokens, alpha = case
    opts = Options(solver="auto", alpha=alpha, layer_budget=0.5)
    for problem in _problems(tokens, nodes, gpus, preset):
        chosen = solve_layer(problem, opts)
        fit, valid = validation.split_problem(problem, validation.VALIDATION_SHARE, opts.seed)
        inner = validation.auto_options(opts)
        scores = {name: validation.validation_score(valid, validation._candidate(name, fit, inner, place_layer)
                                                    .expert_gpu) for name in validation.candidates(inner.alpha)}
        reference = validation.reference_of(scores)
        mine = validation.validation_score(valid, chosen.expert_gpu)
        keys = validation.ranking({**scores, "auto": mine}, reference, validation.nic_weight(inner.alpha))
        for name in scores:
            assert keys["auto"] <= keys[name], name
        if alpha == 0:  # the NIC is not weighed: the fewest validation inter-node copies
            assert mine[0] <= min(score[0] for score in scores.values())
        assert any("auto chose" in m for m in chosen.messages)
        counts = np.bincount(chosen.expert_gpu, minlength=nodes * gpus)
        assert counts.max() <= problem.slots_per_gpu and counts.sum() == problem.num_experts


def test_alpha_zero_compares_only_the_candidates_that_weigh_no_nic():
    cut_only = validation.candidates(0.0)
    assert set(cut_only) < set(validation.candidates()) == set(validation.candidates(validation.AUTO_ALPHA))
    assert {"search", "spectral", "contiguous", "spectral@0"} <= set(cut_only)
    assert all(not validation.CANDIDATES[name].alpha for name in cut_only)
    assert not any(name.startswith("capped") for name in cut_only)


def test_candidates_include_mtkahypar_exactly_when_installed(monkeypatch):
    assert any("mtkahypar" in name for name in validation.candidates()) == mtk.installed()
    monkeypatch.setenv("PLACER_NO_MTKAHYPAR", "1")
    assert not any("mtkahypar" in name for name in validation.candidates())


def test_ranking_credits_nic_balance_down_to_the_target_only():
    # "a" has the lowest cut; its peak (200) is the reference
    scores = {"a": (1000.0, 200.0, 9.0), "b": (1050.0, 160.0, 9.0), "c": (1100.0, 100.0, 9.0),
              "d": (1030.0, 180.0, 1.0), "e": (1020.0, 190.0, 9.0)}
    assert validation.reference_of(scores) == (1000.0, 200.0)
    keys = validation.ranking(scores)
    w, target = validation.NIC_WEIGHT, validation.NIC_TARGET
    assert keys["a"][1] == pytest.approx(1.0 + w)
    assert keys["d"][1] == pytest.approx(1.03 + w * 0.9)
    assert keys["c"][1] == pytest.approx(1.10 + w * target)  # 0.5 x the reference earns only the target
    assert keys["b"][1] == pytest.approx(1.05 + w * max(0.8, target))
    assert keys["c"][1] > keys["b"][1]  # halving the peak earns no more than the target does
    assert min(keys, key=keys.__getitem__) == "d"  # 3% more cut for 10% off the busiest NIC


def test_nic_weight_follows_alpha_and_zero_ranks_by_cut_alone():
    assert validation.nic_weight(validation.AUTO_ALPHA) == validation.NIC_WEIGHT
    assert validation.nic_weight(2 * validation.AUTO_ALPHA) == pytest.approx(2 * validation.NIC_WEIGHT)
    scores = {"a": (1000.0, 200.0, 9.0), "b": (1010.0, 100.0, 1.0), "c": (1000.0, 150.0, 5.0)}
    keys = validation.ranking(scores, weight=validation.nic_weight(0.0))
    assert keys["a"][1] == keys["c"][1] == 1.0 and keys["b"][1] == pytest.approx(1.01)
    assert min(keys, key=keys.__getitem__) == "c"  # equal cut: the lower GPU peak
    assert min(validation.ranking(scores), key=validation.ranking(scores).__getitem__) == "b"


def test_ranking_buys_nic_balance_with_at_most_the_cut_slack():
    scores = {"a": (1000.0, 200.0, 9.0), "b": (1050.0, 160.0, 9.0), "d": (1030.0, 180.0, 1.0)}
    keys = validation.ranking(scores)
    assert validation.CUT_SLACK == pytest.approx(0.03)
    assert keys["b"][1] < keys["d"][1]  # b's weighted rank is better ...
    assert keys["b"] > keys["d"] and keys["b"] > keys["a"]  # ... but 5% more cut is beyond the slack
    assert not keys["d"][0] and keys["b"][0]


def test_capped_candidates_lower_the_busiest_nic_of_the_cut_only_search():
    from placer.solvers.problem import net_spans

    problem = _problems(6000, 5, 4, "seed001", layers=1)[0]
    opts = Options(solver="auto", layer_budget=0.5)
    starts: dict = {}
    cut_only = {name: validation._candidate(name, problem, opts, place_layer, starts).expert_gpu // 4
                for name in validation.candidates() if name.endswith("@0")}
    best = min(cut_only.values(), key=lambda node: validation.validation_score(problem, node * 4)[0])
    peak = net_spans(problem.nets, problem.weights, best, 5)[1].max()
    for cap in validation.CAPS:
        node = validation._candidate(f"capped@{cap:g}", problem, opts, place_layer, starts).expert_gpu // 4
        assert net_spans(problem.nets, problem.weights, node, 5)[1].max() <= peak


def test_auto_packs_each_node_by_load_alone():
    """auto's GPU stage is longest-first packing without the spread search: co-locating
    co-activated experts raises the held-out GPU peak when the workload shifts."""
    from placer.solvers.gpu_stage import longest_first_pack

    checked = 0
    for problem in _problems(3000, 3, 4, layers=3):
        result = solve_layer(problem, Options(solver="auto", layer_budget=0.5))
        if any("kept as solved on the fit split" in m for m in result.messages):
            continue  # packed on the fit split's loads
        checked += 1
        for n in range(3):
            members = np.flatnonzero(result.expert_gpu // 4 == n)
            packed = longest_first_pack(members, problem.loads, 4, problem.slots_per_gpu)
            assert np.array_equal(result.expert_gpu[members] % 4, packed)
    assert checked


def test_hard_limits_fall_back_to_the_full_search():
    trace = random_trace(300, 1, 16, 4, 3)
    problem = build_problems(summarize(trace), 2, 2, constraints=Constraints(max_nodes=2))[0]
    result = solve_layer(problem, Options(solver="auto", layer_budget=0.5))
    assert not any("auto chose" in m for m in result.messages)
    assert result.objective == solve_layer(problem, Options(solver="ilp", layer_budget=0.5)).objective


def test_auto_is_deterministic_with_every_candidate():
    for problem in _problems(2000, 3, 4):
        opts = Options(solver="auto", layer_budget=0.5, seed=2)
        first, second = solve_layer(problem, opts), solve_layer(problem, opts)
        assert np.array_equal(first.expert_gpu, second.expert_gpu)


def test_the_whole_window_re_solve_reuses_only_a_start_partitioned_on_a_small_sample(monkeypatch):
    pins = []

    def km1_parts(nets, weights, experts, parts, preset, seed):
        pins.append(int((nets >= 0).sum()))
        return np.arange(experts) % parts

    monkeypatch.setattr(mtk, "installed", lambda: True)
    monkeypatch.setattr(mtk, "km1_parts", km1_parts)
    problem = _problems(tokens=20000, layers=1)[0]
    for budget, reused in ((0.05, True), (4.0, False)):
        starts: dict = {}
        validation.candidate_placements(problem, validation.auto_options(Options(layer_budget=budget)), place_layer,
                                        starts)
        share = starts["refine-mtkahypar", "pin share"]
        assert 0 < share <= 1 and pins[-1] > 0
        assert (share <= validation.START_REUSE_SHARE) == reused
        kept = validation._reused_starts(starts)
        assert (kept.get("refine-mtkahypar") is starts["refine-mtkahypar"]) == reused and len(kept) == int(reused)
