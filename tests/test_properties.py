"""Property-based checks of the evaluator, the solvers and the exports (hypothesis, capped examples)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placer.errors import InfeasibleError
from placer.evaluation.replay import evaluate
from placer.formats.engines import to_eplb, to_sglang, to_trtllm
from placer.formats.placement_io import read_placement
from placer.placement import Placement, from_expert_gpu
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve
from placer.topology import Model, Topology
from placer.trace import validate_arrays

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKEN_METRICS = (
    "internode_tokens_dedup",
    "internode_tokens_naive",
    "intranode_tokens",
    "forward_tokens",
    "nic_peak_tokens",
    "gpu_peak_load",
    "gpu_load_imbalance",
    "nodes_per_token_histogram",
)


@st.composite
def instances(draw, max_nodes: int = 4):
    """A random trace (with src_rank) and a random one-copy placement on a small cluster."""
    nodes = draw(st.integers(1, max_nodes))
    gpn = draw(st.integers(1, 3))
    gpus = nodes * gpn
    experts = draw(st.integers(max(2, gpus), 3 * gpus + 2))
    k = draw(st.integers(1, min(4, experts)))
    tokens = draw(st.integers(1, 40))
    layers = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(experts)[:k] for _ in range(tokens * layers)]).reshape(tokens, layers, k)
    padding = rng.random(ids.shape) < 0.1
    padding[:, :, 0] = False  # every token keeps its first expert
    ids[padding] = -1
    trace = validate_arrays(
        "h", {"topk_ids": ids, "num_experts": np.int64(experts), "src_rank": rng.integers(0, gpus, tokens)}
    )
    expert_gpu = np.stack([rng.integers(0, gpus, experts) for _ in range(layers)])
    placement = from_expert_gpu(expert_gpu, gpus, gpn)
    topology = Topology("h", nodes, gpn, 1e12, 1e12, 1e9, 1e8, 1e-6)
    return trace, placement, topology


def _relabel(placement: Placement, trace, gpu_map: np.ndarray):
    """The same instance with GPU g renamed gpu_map[g] (placement and token sources)."""
    slots = placement.slots_per_gpu
    phy2log = np.empty_like(placement.phy2log)
    for gpu, target in enumerate(gpu_map):
        phy2log[:, target * slots : (target + 1) * slots] = placement.phy2log[:, gpu * slots : (gpu + 1) * slots]
    moved = Placement(phy2log, placement.num_experts, placement.gpus_per_node, slots)
    return moved, replace(trace, src_rank=gpu_map[trace.src_rank])


@FAST
@given(instances(), st.data())
def test_relabelling_nodes_or_gpus_leaves_metrics_unchanged(instance, data):
    trace, placement, topology = instance
    base = evaluate(trace, placement, topology).totals
    nodes, gpn = topology.nodes, topology.gpus_per_node
    node_perm = np.array(data.draw(st.permutations(range(nodes))))
    by_node = (node_perm[:, None] * gpn + np.arange(gpn)).ravel()  # GPU g -> same local index on node perm
    moved, retraced = _relabel(placement, trace, by_node)
    after = evaluate(retraced, moved, topology).totals
    for key in (*TOKEN_METRICS, "nic_recv_tokens_max_over_mean"):
        assert after[key] == pytest.approx(base[key]), key
    assert sorted(after["nic_recv_tokens_per_node"]) == sorted(base["nic_recv_tokens_per_node"])
    within = np.concatenate([n * gpn + np.array(data.draw(st.permutations(range(gpn)))) for n in range(nodes)])
    moved, retraced = _relabel(placement, trace, within)
    after = evaluate(retraced, moved, topology).totals
    for key in TOKEN_METRICS:
        assert after[key] == pytest.approx(base[key]), key


@FAST
@given(instances(max_nodes=1))
def test_one_node_has_no_internode_traffic(instance):
    trace, placement, topology = instance
    totals = evaluate(trace, placement, topology).totals
    assert totals["internode_tokens_dedup"] == totals["internode_tokens_naive"] == totals["nic_peak_tokens"] == 0


@FAST
@given(instances(), st.sampled_from(["normal", "low-latency"]))
def test_counts_are_consistent_and_bytes_conserved(instance, dispatch):
    trace, placement, topology = instance
    model = Model(
        "m",
        trace.num_experts,
        trace.top_k,
        16,
        8,
        trace.num_layers,
        dispatch_bytes_per_element=1.0,
        combine_bytes_per_element=2.0,
    )
    report = evaluate(trace, placement, topology, model, dispatch=dispatch)
    t, layer = report.totals, report.per_layer
    assert t["internode_tokens_dedup"] <= t["internode_tokens_naive"]
    assert t["internode_tokens_dedup"] <= t["forward_tokens"] <= t["internode_tokens_naive"]
    for tier in ("dedup", "naive"):
        assert layer[f"node_sent_{tier}"].sum() == layer[f"node_recv_{tier}"].sum()
    assert layer["nvlink_sent"].sum() == layer["nvlink_recv"].sum()
    assert layer["gpu_load"].sum() == (trace.topk_ids >= 0).sum()
    copies = t["internode_tokens_dedup"] if dispatch == "normal" else t["internode_tokens_naive"]
    assert t["internode_bytes"] == copies * (16 * 1.0 + 16 * 2.0)
    assert sum(t["nic_bytes_sent_per_node"]) == sum(t["nic_bytes_recv_per_node"])


@st.composite
def solver_requests(draw):
    nodes = draw(st.integers(2, 3))
    gpn = draw(st.integers(1, 2))
    experts = draw(st.integers(nodes * gpn, 12))
    k = draw(st.integers(2, min(3, experts)))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(experts)[:k] for _ in range(60)]).reshape(60, 1, k)
    trace = validate_arrays("s", {"topk_ids": ids, "num_experts": np.int64(experts)})
    topology = Topology("s", nodes, gpn, 1e12, 1e12, 1e9, 1e8, 1e-6)
    max_nodes = draw(st.sampled_from([None, 1, 2]))
    balance = draw(st.sampled_from([None, 0.1, 1.0]))
    return trace, topology, max_nodes, balance


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(solver_requests())
def test_solver_output_meets_constraints_or_explains(request):
    trace, topology, max_nodes, balance = request
    try:
        placement, _ = solve(
            trace,
            PlacementProblem(topology, max_nodes=max_nodes, balance=balance),
            SolverSettings(solver="spectral", time_limit=1),
        )
    except InfeasibleError as err:
        assert str(err)
        return
    copies = placement.expert_copies()
    assert (copies >= 1).all()
    assert (placement.gpu_expert_counts() <= placement.slots_per_gpu).all()
    if max_nodes:
        node = placement.expert_gpu()[0] // topology.gpus_per_node
        assert max(len(set(node[row])) for row in trace.topk_ids[:, 0, :]) <= max_nodes


@FAST
@given(instances())
def test_exports_read_back_give_identical_metrics(tmp_path_factory, instance):
    trace, placement, topology = instance
    if (placement.phy2log < 0).any():  # engines need every slot filled
        return
    base = evaluate(trace, placement, topology).totals
    folder = tmp_path_factory.mktemp("exports")
    (folder / "s.json").write_text(json.dumps(to_sglang(placement)))
    sglang = read_placement(folder / "s.json", topology.num_gpus, topology.gpus_per_node)
    trtllm_rows = np.array(list(to_trtllm(placement)["initial_global_assignments"].values()))
    eplb_rows = to_eplb(placement)["phy2log"]
    for rows in (sglang.phy2log, trtllm_rows, eplb_rows):
        back = Placement(np.asarray(rows), placement.num_experts, placement.gpus_per_node, placement.slots_per_gpu)
        assert evaluate(trace, back, topology).totals == base
