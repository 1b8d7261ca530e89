"""The EP sweep (``placer sweep``): hand-checked uniform figures, replay against calc, CLI files and errors."""

from __future__ import annotations

import json
import pickle
from functools import partial
from itertools import combinations

import numpy as np
import pytest

from placer.errors import InputError
from placer.evaluation.calc import expected_nvlink_copies, expected_remote_nodes
from placer.instances import load_model, load_topology
from placer.placement import baseline
from placer.studies.sweep import (
    StepModel,
    check_eps,
    ep_point,
    replay_shares,
    run_sweep,
    uniform_shares,
)
from placer.topology import Model, Topology
from placer.trace import Trace, save_trace

SEED_MODEL = load_model("seed001")
CLUSTER = load_topology("h100-512")
TINY = Model("tiny", 8, 2, hidden_size=16, moe_intermediate_size=8, num_moe_layers=2)
TINY_CLUSTER = Topology("tiny4", 2, 2, 80e9, 1e12, 4e9, 1e9, 1e-6)  # 2 nodes x 2 GPUs


def every_pair_on_every_gpu(num_experts: int, gpus: int, layers: int = 2) -> Trace:
    """Each of the C(E, 2) expert pairs once from every GPU (token t starts on GPU t mod P)."""
    pairs = np.repeat(np.array(list(combinations(range(num_experts), 2))), gpus, axis=0)
    ids = np.repeat(pairs[:, None, :], layers, axis=1).astype(np.int16)
    return Trace(ids, num_experts)


def paired_trace(tokens: int = 400) -> Trace:
    """Experts e and e + 4 always together (contiguous puts them on different nodes at EP 4)."""
    first = (np.arange(tokens) // 4) % 4  # each pair starts from every GPU in turn
    ids = np.stack([first, first + 4], axis=1)[:, None, :].repeat(2, axis=1).astype(np.int16)
    return Trace(ids, 8)


# ---- uniform routing: the seed-001 shape by hand -----------------------------------------


def test_uniform_ep16_lands_near_400_gb_per_step() -> None:
    point = run_sweep(SEED_MODEL, CLUSTER, eps=[16]).points[0]
    assert (point.gpus_per_node, point.nodes, point.groups) == (8, 2, 32)
    copies = 1 - 496 / 2016  # 1 - C(32, 2) / C(64, 2): the other node holds one of the two experts
    assert point.contiguous.internode_copies == pytest.approx(copies)
    # 2^19 tokens x copies x 32 layers x 4096 x (2 + 2) bytes x 2 (forward + backward)
    assert point.contiguous.internode_gb == pytest.approx(2**19 * copies * 32 * 4096 * 4 * 2 / 1e9)
    assert round(point.contiguous.internode_gb, 1) == 414.5


def test_uniform_ep16_time_ratio_by_hand() -> None:
    point = run_sweep(SEED_MODEL, CLUSTER, eps=[16]).points[0]
    copies = 1 - 496 / 2016
    group_tokens = 2**19 / 32  # 32 data-parallel groups of 16 GPUs
    phase = copies / 2 * group_tokens * 8192 / (8 * 50e9) + 5e-6  # busiest node: half the copies
    compute = 1024 * 2 * 6 * 4096 * 14336 / 989e12  # 1,024 tokens per GPU, top-2
    assert point.contiguous.all_to_all_s == pytest.approx(2 * 32 * 2 * phase)
    assert point.contiguous.compute_s == pytest.approx(3 * 32 * compute)
    assert point.contiguous.a2a_to_compute == pytest.approx(2 * 2 * phase / (3 * compute))


def test_uniform_growth_from_ep16_to_ep32() -> None:
    normal = {p.ep: p.contiguous for p in run_sweep(SEED_MODEL, CLUSTER, eps=[16, 32]).points}
    assert normal[32].internode_copies == pytest.approx(3 * (1 - 1128 / 2016))  # 3 other nodes
    assert normal[32].internode_gb / normal[16].internode_gb == pytest.approx(1.752, abs=1e-3)
    pairs = {p.ep: p.contiguous for p in
             run_sweep(SEED_MODEL, CLUSTER, eps=[16, 32], step=StepModel(dispatch="low-latency")).points}
    assert (pairs[16].internode_copies, pairs[32].internode_copies) == pytest.approx((1.0, 1.5))  # k (N-1)/N


def test_peer_latency_adds_per_inter_node_peer() -> None:
    base = run_sweep(SEED_MODEL, CLUSTER, eps=[16, 32]).points
    slow = run_sweep(SEED_MODEL, CLUSTER, eps=[16, 32], step=StepModel(peer_latency_s=1e-5)).points
    for b, s in zip(base, slow):
        assert s.internode_peers == b.nodes - 1
        assert s.contiguous.all_to_all_s - b.contiguous.all_to_all_s == pytest.approx(2 * 32 * 2 * 1e-5 * (b.nodes - 1))


def test_single_node_groups_send_nothing_between_nodes() -> None:
    for point in run_sweep(SEED_MODEL, CLUSTER, eps=[1, 2, 4, 8]).points:
        assert point.nodes == 1 and point.contiguous.internode_gb == 0.0 and point.internode_ratio is None
    assert run_sweep(SEED_MODEL, CLUSTER, eps=[1]).points[0].contiguous.intranode_gb == 0.0


# ---- replay against calc's expectations ---------------------------------------------------


@pytest.mark.parametrize("dispatch", ["normal", "low-latency"])
def test_exhaustive_replay_equals_uniform_expectation(dispatch: str) -> None:
    trace = every_pair_on_every_gpu(8, 4)
    placement = baseline("contiguous", 2, 8, 4, 2)
    measured = replay_shares(trace, placement, TINY_CLUSTER, dispatch)
    expected = uniform_shares(TINY, 4, 2, dispatch)
    for name in ("internode", "intranode", "nic_peak", "nvlink_peak", "gpu_peak"):
        assert getattr(measured, name) == pytest.approx(np.repeat(getattr(expected, name), 2)), name
    if dispatch == "normal":
        assert expected.internode[0] == pytest.approx(expected_remote_nodes(8, 2, 2))
        assert expected.intranode[0] == pytest.approx(expected_nvlink_copies(8, 2, 4, 2))


def test_placer_beats_contiguous_on_paired_experts() -> None:
    trace = paired_trace()
    point = run_sweep(TINY, TINY_CLUSTER, trace, trace, eps=[4]).points[0]
    assert point.routing == "trace"
    assert point.contiguous.internode_copies == pytest.approx(1.0)  # the partner is always on the other node
    assert point.placer.internode_copies == pytest.approx(0.5)  # pairs share a node: half the sources are there
    assert point.internode_ratio < 1.0
    assert point.placer.a2a_to_compute < point.contiguous.a2a_to_compute


def test_ep_point_is_picklable_and_mapped() -> None:
    seen: list[int] = []

    def mapper(function, sizes):
        function = pickle.loads(pickle.dumps(function))
        return [seen.append(size) or function(size) for size in sizes]

    result = run_sweep(TINY, TINY_CLUSTER, eps=[4, 2], mapper=mapper)
    assert seen == [2, 4] and [p.ep for p in result.points] == [2, 4]
    direct = partial(ep_point, model=TINY, topology=TINY_CLUSTER, step=StepModel())(4)
    assert direct == result.points[1]
    assert json.loads(json.dumps(result.to_dict()))["points"][1]["ep"] == 4


@pytest.mark.parametrize(("eps", "message"), [
    ([3], "does not divide"),
    ([1024], "whole groups"),
    ([0], "positive"),
    ([2, 2], "repeat"),
    ([], "at least one"),
])
def test_bad_ep_sizes(eps: list[int], message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_eps(eps, SEED_MODEL, CLUSTER)


def test_bad_step_and_traces() -> None:
    with pytest.raises(InputError, match="tokens_per_step"):
        run_sweep(TINY, TINY_CLUSTER, eps=[2], step=StepModel(tokens_per_step=0))
    with pytest.raises(InputError, match="alpha"):
        run_sweep(TINY, TINY_CLUSTER, eps=[2], alpha=-1.0)
    with pytest.raises(InputError, match="alpha"):
        run_sweep(TINY, TINY_CLUSTER, eps=[2], solver="eplb", alpha=1.0)
    with pytest.raises(InputError, match="eval_trace"):
        run_sweep(TINY, TINY_CLUSTER, None, paired_trace(), eps=[2])
    with pytest.raises(InputError, match="experts"):
        run_sweep(SEED_MODEL, CLUSTER, paired_trace(), eps=[2])


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_writes_json_and_png(cli, tmp_path) -> None:
    trace = tmp_path / "pairs.npz"
    save_trace(paired_trace(), trace)
    out = tmp_path / "out"
    model, topology = tmp_path / "tiny.toml", tmp_path / "tiny4.toml"
    model.write_text('[model]\nname = "tiny"\nnum_experts = 8\ntop_k = 2\nhidden_size = 16\n'
                     'moe_intermediate_size = 8\nnum_moe_layers = 2\n')
    topology.write_text('[topology]\nname = "tiny4"\nnodes = 2\ngpus_per_node = 2\ngpu_memory_bytes = 80e9\n'
                        'gpu_flops = 1e12\nnvlink_bytes_per_s = 4e9\nnic_bytes_per_s = 1e9\nlatency_s = 1e-6\n')
    result = cli("sweep", "--model", model, "--topology", topology, "--trace", trace, "--ep", "1,2,4",
                 "--tokens-per-step", 4096, "--out", out)
    assert result.code == 0, result.err
    assert "inter-node GB over" in " ".join(result.out.split()) and "wrote" in result.out
    saved = json.loads((out / "sweep.json").read_text())
    assert [p["ep"] for p in saved["points"]] == [1, 2, 4] and saved["trace"] == str(trace)
    assert saved["points"][2]["internode_ratio"] < 1.0
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("args", [
    ("--ep", "3"),
    ("--ep", "16,1024"),
    ("--ep", "two"),
    ("--tokens-per-step", "0"),
    ("--eval-trace", "x.npz"),
])
def test_cli_bad_input_exits_2(cli, args) -> None:
    result = cli("sweep", "--model", "seed001", "--topology", "h100-512", *args)
    assert result.code == 2
    assert result.err.startswith("placer: error:") and "Traceback" not in result.err


def test_cli_refuses_to_overwrite_its_trace(cli, tmp_path) -> None:
    trace = tmp_path / "sweep.json"
    save_trace(paired_trace(), trace.with_suffix(".npz"))
    trace.with_suffix(".npz").rename(trace)
    result = cli("sweep", "--model", "seed001", "--topology", "h100-512", "--trace", trace, "--out", tmp_path)
    assert result.code == 2 and "overwrite" in result.err
