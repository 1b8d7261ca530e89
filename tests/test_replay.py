"""Trace-replay figures checked against a case worked out by hand.

Topology: 2 nodes x 2 GPUs. Expert e sits on GPU e (nodes: GPUs 0,1 -> node 0; 2,3 -> node 1).
One layer, top-2, four tokens starting on GPUs 0..3:
  t0 (GPU 0, node 0): experts {0, 1}  -> GPUs 0, 1       (all local)
  t1 (GPU 1, node 0): experts {2, 3}  -> GPUs 2, 3       (one remote node, two remote GPUs)
  t2 (GPU 2, node 1): experts {0, 3}  -> GPUs 0, 3       (node 0 remote, GPU 3 local)
  t3 (GPU 3, node 1): experts {1, -1} -> GPU 1           (padding ignored)
"""

from __future__ import annotations

import numpy as np
import pytest

from placer.errors import InputError
from placer.evaluation.replay import evaluate
from placer.placement import baseline, from_expert_gpu
from placer.topology import Model, Topology
from placer.trace import TraceSource, save_trace, validate_arrays

TOPOLOGY = Topology("tiny", nodes=2, gpus_per_node=2, gpu_memory_bytes=1e9, gpu_flops=60.0,
                    nvlink_bandwidth=100.0, nic_bandwidth=5.0, latency_s=0.5)
MODEL = Model("tiny", num_experts=4, top_k=2, hidden_size=10, moe_intermediate_size=1, num_moe_layers=1,
              dispatch_bytes_per_element=1.0, combine_bytes_per_element=2.0)
IDS = np.array([[[0, 1]], [[2, 3]], [[0, 3]], [[1, -1]]])


@pytest.fixture
def trace():
    return validate_arrays("hand", {"topk_ids": IDS, "num_experts": np.int64(4)})


@pytest.fixture
def identity():
    return from_expert_gpu(np.array([[0, 1, 2, 3]]), num_gpus=4, gpus_per_node=2)


def test_token_counts_match_hand_computation(trace, identity):
    report = evaluate(trace, identity, TOPOLOGY, max_nodes=1)
    t = report.totals
    assert t["internode_tokens_dedup"] == 3
    assert t["internode_tokens_naive"] == 4
    assert t["intranode_tokens"] == 2
    assert t["forward_tokens"] == 4
    assert t["nic_recv_tokens_per_node"] == [2, 1]
    assert t["nic_sent_tokens_per_node"] == [1, 2]
    assert t["nic_peak_tokens"] == 2
    assert report.per_layer["gpu_load"].tolist() == [[2, 2, 1, 2]]
    assert t["gpu_peak_load"] == 2
    assert t["gpu_load_imbalance"] == pytest.approx(2 / 1.75)
    assert t["nodes_per_token_histogram"] == [0, 3, 1]
    assert t["share_over_max_nodes"] == pytest.approx(0.25)


def test_normal_mode_nvlink_relays_from_the_landing_gpu(trace, identity):
    report = evaluate(trace, identity, TOPOLOGY)
    # t0: 0->1 and t2: 2->3 on the source node; t1 lands on GPU 3 (same local index as GPU 1),
    # which relays to GPU 2; t2 and t3 land on their target GPU directly.
    assert report.per_layer["nvlink_sent"].tolist() == [[1, 0, 1, 1]]
    assert report.per_layer["nvlink_recv"].tolist() == [[0, 1, 1, 1]]


def test_low_latency_mode_counts_every_remote_expert(trace, identity):
    report = evaluate(trace, identity, TOPOLOGY, dispatch="low-latency")
    assert report.per_layer["node_sent_naive"].tolist() == [[2, 2]]
    assert report.per_layer["node_recv_naive"].tolist() == [[2, 2]]
    assert report.per_layer["nvlink_sent"].tolist() == [[1, 0, 1, 0]]
    assert report.per_layer["nvlink_recv"].tolist() == [[0, 1, 0, 1]]


def test_bytes_and_times(trace, identity):
    t = evaluate(trace, identity, TOPOLOGY, MODEL).totals
    assert t["internode_bytes"] == 3 * (10 * 1 + 10 * 2)
    # NIC bottleneck: 2 copies; node NIC = 2 GPUs x 5 B/s. Dispatch 20 B -> 2 s, combine 40 B -> 4 s.
    assert t["dispatch_s"] == pytest.approx(2.0 + 0.5)
    assert t["combine_s"] == pytest.approx(4.0 + 0.5)
    assert t["compute_s"] == pytest.approx(2 * 60 / 60)
    assert t["a2a_to_compute_ratio"] == pytest.approx(7.0 / 2.0)


def test_sequence_source_puts_whole_sequences_on_one_gpu(identity):
    trace = validate_arrays("hand", {"topk_ids": IDS, "num_experts": np.int64(4), "seq_lens": np.array([3, 1])})
    t = evaluate(trace, identity, TOPOLOGY, source="sequence").totals
    # Sequence 0 (t0..t2) on GPU 0, sequence 1 (t3) on GPU 1: only t1 (node 1) and t2 (GPU 3) leave node 0.
    assert t["internode_tokens_dedup"] == 2
    assert t["internode_tokens_naive"] == 3


def test_src_rank_overrides_the_default_source(identity):
    trace = validate_arrays("hand", {"topk_ids": IDS, "src_rank": np.array([2, 2, 2, 2])})
    t = evaluate(trace, identity, TOPOLOGY).totals
    # From node 1: t0 -> node 0, t1 local, t2 -> node 0, t3 -> node 0.
    assert t["internode_tokens_dedup"] == 3
    assert t["nic_recv_tokens_per_node"] == [3, 0]


def test_src_rank_beyond_topology_is_an_input_error(identity, tmp_path):
    trace = validate_arrays("hand", {"topk_ids": IDS, "src_rank": np.array([0, 1, 2, 9])})
    with pytest.raises(InputError, match=r"src_rank: GPU rank 9 is not a GPU in service \(expected 0\.\.3\)"):
        evaluate(trace, identity, TOPOLOGY)
    save_trace(trace, tmp_path / "t.npz")
    with pytest.raises(InputError, match=r"t\.npz: src_rank: GPU rank 9 .*expected 0\.\.3"):
        evaluate(TraceSource(tmp_path / "t.npz"), identity, TOPOLOGY)


def test_sharded_trace_gives_the_same_figures(tmp_path, trace, identity):
    shards = tmp_path / "shards"
    save_trace(validate_arrays("a", {"topk_ids": IDS[:3], "num_experts": np.int64(4)}), shards / "00.npz")
    save_trace(validate_arrays("b", {"topk_ids": IDS[3:], "num_experts": np.int64(4)}), shards / "01.npz")
    whole = evaluate(trace, identity, TOPOLOGY, MODEL).totals
    streamed = evaluate(TraceSource(shards), identity, TOPOLOGY, MODEL).totals
    assert streamed == whole


def test_single_node_has_no_internode_traffic():
    rng = np.random.default_rng(1)
    ids = np.stack([rng.permutation(16)[:4] for _ in range(200)]).reshape(200, 1, 4)
    trace = validate_arrays("r", {"topk_ids": ids})
    one_node = Topology("one", 1, 8, 1e9, 1e12, 1e9, 1e9, 0.0)
    t = evaluate(trace, baseline("random", 1, 16, 8, 8), one_node).totals
    assert t["internode_tokens_dedup"] == t["internode_tokens_naive"] == t["nic_peak_tokens"] == 0
    assert t["gpu_peak_load"] >= 200 * 4 / 8


def test_dedup_never_exceeds_naive_and_loads_conserve_pairs():
    rng = np.random.default_rng(2)
    ids = np.stack([rng.permutation(32)[:6] for _ in range(300 * 3)]).reshape(300, 3, 6)
    trace = validate_arrays("r", {"topk_ids": ids})
    topology = Topology("t", 4, 2, 1e9, 1e12, 1e9, 1e9, 0.0)
    for name in ("contiguous", "round-robin", "random"):
        report = evaluate(trace, baseline(name, 3, 32, 8, 2), topology)
        assert report.totals["internode_tokens_dedup"] <= report.totals["internode_tokens_naive"]
        assert report.per_layer["gpu_load"].sum() == ids.size
        assert report.per_layer["node_sent_dedup"].sum() == report.per_layer["node_recv_dedup"].sum()
