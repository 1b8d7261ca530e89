"""Excluded (failed) GPUs: no expert or replica lands on them, capacities follow the live GPUs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import random_trace, topo

from placer.bundled import sample_trace
from placer.eplb import rebalance_experts
from placer.errors import InputError
from placer.evaluation.replay import evaluate
from placer.graph import summarize
from placer.placement import contiguous_gpus, from_expert_gpu
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve
from placer.solvers.problem import build_problems, connectivity
from placer.topology import Model, Topology
from placer.trace import Trace, load_trace


def check_live(placement, excluded, num_gpus: int, slots: int, distinct: bool = True) -> None:
    """Excluded GPUs' slots empty, every expert present, slot rows cover every GPU.

    distinct: no GPU holds two copies of one expert (EPLB's own packing may do so).
    """
    assert placement.num_gpus == num_gpus
    assert placement.slots_per_gpu == slots
    assert placement.metadata["excluded_gpus"] == sorted(set(excluded))
    assert placement.excluded_gpus == sorted(set(excluded))
    per_gpu = placement.phy2log.reshape(placement.num_layers, num_gpus, slots)
    assert (per_gpu[:, sorted(set(excluded))] == -1).all()
    assert (placement.expert_copies() >= 1).all()
    live = np.setdiff1d(np.arange(num_gpus), excluded)
    assert np.array_equal(placement.live_gpus(), live)
    for layer in range(placement.num_layers if distinct else 0):  # never two copies on one GPU
        for row in per_gpu[layer]:
            held = row[row >= 0]
            assert len(set(held.tolist())) == len(held)


@pytest.mark.parametrize("solver", ["spectral", "auto", "eplb"])
def test_no_expert_on_excluded_gpus(solver):
    trace = random_trace(300, 2, 32, 4, 1)
    excluded = [5, 1]
    placement, _ = solve(
        trace, PlacementProblem(topo(4, 4), exclude_gpus=excluded), SolverSettings(solver=solver, time_limit=1)
    )
    slots = math.ceil(32 / 14)  # default: ceil(E / live GPUs)
    check_live(placement, excluded, 16, slots, distinct=solver != "eplb")
    if solver != "eplb":
        assert (placement.expert_copies() == 1).all()
        node = placement.expert_gpu() // 4
        counts = np.stack([np.bincount(row, minlength=4) for row in node])
        assert (counts <= np.array([3, 3, 4, 4]) * slots).all()  # live GPUs x slots per node


@pytest.mark.parametrize("solver", ["spectral", "auto"])
def test_replicas_only_on_live_gpus(solver):
    trace = random_trace(300, 2, 24, 4, 2, skew=2.0)
    excluded = [0, 1, 2, 6]  # node 0 keeps one GPU, node 1 three
    placement, report = solve(
        trace,
        PlacementProblem(topo(3, 4), exclude_gpus=excluded, slots_per_gpu=4),
        SolverSettings(solver=solver, time_limit=1),
    )
    check_live(placement, excluded, 12, 4)
    # every live slot filled: 8 live GPUs x 4 slots
    assert placement.expert_copies().sum(axis=1).tolist() == [32, 32]
    assert any("8 spare slots" in message for message in report.messages)


def test_uneven_live_counts_per_node():
    trace = random_trace(400, 2, 40, 4, 3)
    excluded = [0, 1, 2, 9, 15]  # live per node: 1, 4, 3, 3
    problem = build_problems(summarize(trace), 4, 4, None, None, excluded)[0]
    slots = math.ceil(40 / 11)
    assert problem.slots_per_gpu == slots
    assert problem.node_live().tolist() == [1, 4, 3, 3]
    assert problem.node_capacity().tolist() == [4, 16, 12, 12]
    counts = problem.node_counts()  # proportional to live capacity, as even as possible
    assert counts.sum() == 40 and (counts <= problem.node_capacity()).all()
    assert counts.tolist() == [4, 14, 11, 11]
    placement, _ = solve(
        trace, PlacementProblem(topo(4, 4), exclude_gpus=excluded), SolverSettings(solver="auto", time_limit=1)
    )
    check_live(placement, excluded, 16, slots)
    assert (placement.gpu_expert_counts() <= slots).all()
    node = placement.expert_gpu() // 4
    for row in node:
        assert (np.bincount(row, minlength=4) <= problem.node_capacity()).all()


def test_whole_node_excluded():
    trace = random_trace(200, 1, 16, 3, 4)
    excluded = [0, 1, 5]  # node 0 entirely out of service
    placement, _ = solve(
        trace, PlacementProblem(topo(3, 2), exclude_gpus=excluded), SolverSettings(solver="auto", time_limit=1)
    )
    check_live(placement, excluded, 6, 6)
    assert set(placement.expert_gpu().ravel().tolist()) <= {2, 3, 4}


def test_node_counts_without_exclusions_unchanged():
    trace = random_trace(100, 1, 30, 3, 5)
    problem = build_problems(summarize(trace), 4, 2)[0]
    assert problem.node_counts().tolist() == [8, 8, 7, 7]
    assert problem.live is None


def brute_force_cut(problem) -> int:
    """Min sum_j w_j * lambda_j over node assignments within each node's live capacity."""
    E, N, cap = problem.num_experts, problem.num_nodes, problem.node_capacity()
    best = None
    for assign in itertools.product(range(N), repeat=E):
        a = np.array(assign)
        if (np.bincount(a, minlength=N) > cap).any():
            continue
        cut = int((problem.weights * connectivity(problem, a)).sum())
        best = cut if best is None else min(best, cut)
    return best


def test_exact_model_with_uneven_capacities_matches_brute_force():
    trace = random_trace(60, 1, 8, 3, 7, skew=3.0)
    excluded = [1, 2, 5]  # live GPUs per node 1, 2, 3; slots ceil(8 / 6) = 2
    placement, report = solve(
        trace,
        PlacementProblem(topo(3, 3), exclude_gpus=excluded),
        SolverSettings(solver="ilp", time_limit=5, alpha=0.0),
    )
    problem = build_problems(summarize(trace), 3, 3, None, None, excluded)[0]
    assert problem.node_capacity().tolist() == [2, 4, 6]
    layer = report.layers[0]
    assert layer.status == "optimal"
    assert layer.objective == brute_force_cut(problem)
    check_live(placement, excluded, 9, 2)


def test_invalid_exclusions_raise():
    trace = random_trace(50, 1, 16, 2, 6)
    for bad, match in [
        ([8], "out of range"),
        ([-1], "out of range"),
        (list(range(8)), "all 8 GPUs"),
        ([1.5], "integer"),
        ([True], "integer"),
    ]:
        for solver in ("spectral", "eplb"):
            with pytest.raises(InputError, match=match) as err:
                solve(trace, PlacementProblem(topo(2, 4), exclude_gpus=bad), SolverSettings(solver=solver))
            assert err.value.field == "exclude_gpus"
    with pytest.raises(InputError, match="6 live GPUs x 2 slots = 12 slots < 16 experts") as err:
        solve(
            trace, PlacementProblem(topo(2, 4), exclude_gpus=[0, 7], slots_per_gpu=2), SolverSettings(solver="spectral")
        )
    assert err.value.field == "exclude_gpus"
    with pytest.raises(InputError, match="exclude_gpus"):
        solve(trace, PlacementProblem(topo(2, 4), exclude_gpus=[0, 7], slots_per_gpu=2), SolverSettings(solver="eplb"))


def test_deterministic_and_worker_independent():
    trace = random_trace(200, 2, 24, 4, 9)
    problem = PlacementProblem(topo(3, 4), exclude_gpus=[3, 4, 5])
    a, _ = solve(trace, problem, SolverSettings(solver="auto", seed=3, time_limit=1, workers=1))
    b, _ = solve(trace, problem, SolverSettings(solver="auto", seed=3, time_limit=1, workers=2))
    assert np.array_equal(a.phy2log, b.phy2log)


def test_eplb_runs_on_the_live_gpus_as_a_smaller_cluster():
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(16)[:4] for _ in range(200 * 2)]).reshape(200, 2, 4)
    trace = Trace(topk_ids=ids.astype(np.int16), num_experts=16)
    loads = summarize(trace).loads
    model = Model("m", 16, 4, 8, 8, 2, num_groups=4)
    # two live GPUs on each node: hierarchical EPLB on 2 nodes x 2 GPUs, mapped back to the live ids
    placement, _ = solve(
        trace,
        PlacementProblem(topo(2, 4), model=model, exclude_gpus=[1, 2, 4, 7], slots_per_gpu=5),
        SolverSettings(solver="eplb"),
    )
    expected, _, _ = rebalance_experts(loads, 20, 4, 2, 4)
    live = [0, 3, 5, 6]
    per_gpu = placement.phy2log.reshape(2, 8, 5)
    assert np.array_equal(per_gpu[:, live].reshape(2, 20), expected)
    assert placement.metadata["solver"]["policy"] == "hierarchical"
    check_live(placement, [1, 2, 4, 7], 8, 5, distinct=False)
    # uneven live GPUs per node: EPLB's global policy over the 5 live GPUs
    placement, _ = solve(
        trace, PlacementProblem(topo(2, 4), model=model, exclude_gpus=[1, 2, 4]), SolverSettings(solver="eplb")
    )
    expected, _, _ = rebalance_experts(loads, 5 * 4, 1, 1, 5)
    assert placement.slots_per_gpu == 4
    assert np.array_equal(placement.phy2log.reshape(2, 8, 4)[:, [0, 3, 5, 6, 7]].reshape(2, 20), expected)
    assert placement.metadata["solver"]["policy"] == "global"


def test_sample_trace_beats_contiguous_on_live_gpus():
    train = load_trace(sample_trace("train"))
    topology = topo(4, 8)
    excluded = [0, 1]
    placement, _ = solve(
        train, PlacementProblem(topology, exclude_gpus=excluded), SolverSettings(solver="spectral", time_limit=2)
    )
    check_live(placement, excluded, 32, math.ceil(64 / 30))
    live = np.arange(2, 32)
    contiguous = from_expert_gpu(
        np.tile(live[contiguous_gpus(64, 30)], (train.num_layers, 1)), 32, 8, placement.slots_per_gpu
    )
    ours = evaluate(train, placement, topology).totals["internode_tokens_dedup"]
    base = evaluate(train, contiguous, topology).totals["internode_tokens_dedup"]
    assert ours < 0.8 * base


def test_replay_sources_skip_excluded_gpus():
    from placer.evaluation.replay import evaluate
    from placer.placement import Placement
    from placer.trace import validate_arrays

    # 2 nodes x 2 GPUs, GPU 0 out of service; experts 0, 1, 2 on GPUs 1, 2, 3.
    placement = Placement(np.array([[-1, 0, 1, 2]]), 3, 2, 1, {"excluded_gpus": [0]})
    trace = validate_arrays("hand", {"topk_ids": np.array([[[0]], [[0]], [[0]]])})
    result = evaluate(trace, placement, Topology("t", 2, 2, 1e9, 1e12, 1e9, 1e9, 0.0))
    # tokens start on GPUs 1, 2, 3 (live ids in turn): only the first is on expert 0's node
    assert result.totals["internode_tokens_dedup"] == 2
    assert result.totals["gpu_load_imbalance"] == pytest.approx(3 / 1.0)


def test_cli_exclusions_survive_file_and_relabel(tmp_path, cli):
    from placer.bundled import sample_trace
    from placer.formats.placement_io import read_placement

    train = sample_trace("train")
    assert cli("place", "--trace", train, "--solver", "contiguous", "--out", tmp_path / "now.json").code == 0
    result = cli(
        "place",
        "--trace",
        train,
        "--solver",
        "spectral",
        "--exclude-gpus",
        "3,12",
        "--current",
        tmp_path / "now.json",
        "--out",
        tmp_path / "next.json",
    )
    assert result.code == 0, result.err
    placement = read_placement(tmp_path / "next.json")
    assert placement.excluded_gpus == [3, 12]
    per_gpu = placement.phy2log.reshape(placement.num_layers, placement.num_gpus, -1)
    assert (per_gpu[:, [3, 12]] == -1).all()
    bad = cli("place", "--trace", train, "--exclude-gpus", "1,x", "--out", tmp_path / "bad.json")
    assert bad.code == 2 and "--exclude-gpus" in bad.err


def test_engine_exports_leave_dead_gpus_out_of_the_map():
    """No placeholder copies: an engine would count them and dispatch tokens to the dead GPU."""
    from placer.formats.engines import sglang_launch, to_eplb, to_sglang, to_trtllm

    trace = random_trace(200, 1, 16, 2, 4)
    # 7 live GPUs x 4 slots: one copy needs 3 per GPU, the rest hold replicas; GPU 6 = slots 24..27
    placement, _ = solve(
        trace,
        PlacementProblem(topo(2, 4), exclude_gpus=[6], slots_per_gpu=4),
        SolverSettings(solver="spectral", time_limit=1),
    )
    live = np.delete(placement.phy2log, np.s_[24:28], axis=1)
    rows = np.array(to_sglang(placement)["physical_to_logical_map"])
    assert rows.shape == (1, 28) and (rows == live.reshape(1, -1)).all()
    assert to_trtllm(placement)["num_slots"] == 28
    flags = sglang_launch(placement, None, "map.json")[0]
    assert "--ep-size 7" in flags and "--ep-num-redundant-experts 12" in flags
    assert (to_eplb(placement)["phy2log"][:, 24:28] == -1).all()
