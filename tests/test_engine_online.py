"""The drop-ins with a Rebalancer attached: window fed by the routing recorder, or a prior trace."""

from pathlib import Path

import numpy as np
import pytest
import torch

from placer.engine_policies import (
    PlacerEplbPolicy,
    RebalancerProposer,
    RoutingRecorder,
    attach,
    detach,
    gpu_peaks,
    rebalance_experts,
)
from placer.eplb import rebalance_experts as eplb
from placer.online import RebalanceConfig, Rebalancer

LAYERS, EXPERTS, NODES, GPUS_PER_NODE, SLOTS, TOP_K = 2, 32, 4, 2, 4, 2
RANKS = NODES * GPUS_PER_NODE
SAMPLE = Path(__file__).resolve().parents[1] / "traces" / "sample" / "esft-intent-train.npz"


@pytest.fixture(autouse=True)
def _load_only():
    detach()
    yield
    detach()


def clustered_routing(seed: int, tokens: int = 4000) -> np.ndarray:
    """Tokens pick 2 experts inside one of 4 clusters of 8 scattered ids: [tokens, layers, 2]."""
    rng = np.random.default_rng(seed)
    clusters = rng.permutation(EXPERTS).reshape(4, EXPERTS // 4)
    picks = rng.integers(0, 4, size=(tokens, LAYERS))
    return np.stack([[rng.choice(clusters[c], TOP_K, replace=False) for c in row] for row in picks])


def inter_node_pairs(phy2log: np.ndarray, ids: np.ndarray) -> int:
    """Tokens whose two experts sit on different nodes (one copy each), summed over layers."""
    total = 0
    for layer in range(LAYERS):
        node = np.empty(EXPERTS, dtype=np.int64)
        node[phy2log[layer]] = np.arange(phy2log.shape[1]) // (GPUS_PER_NODE * SLOTS)
        where = node[ids[:, layer]]
        total += int((where[:, 0] != where[:, 1]).sum())
    return total


def test_window_fed_by_recorder_is_served_within_peak_tolerance():
    ids = clustered_routing(0)
    proposer = RebalancerProposer(Rebalancer(LAYERS, EXPERTS, NODES, GPUS_PER_NODE, SLOTS,
                                             RebalanceConfig(move_budget=1.0)))
    recorder = RoutingRecorder(proposer.observe, num_layers=LAYERS, top_k=TOP_K, capacity=1000)
    for start in range(0, len(ids), 100):
        recorder.record(torch.from_numpy(ids[start : start + 100]))
    recorder.flush()
    attach(proposer, peak_tolerance=1.05)
    loads = torch.from_numpy(np.stack([np.bincount(ids[:, layer].ravel(), minlength=EXPERTS)
                                       for layer in range(LAYERS)]).astype(np.int32))
    served = PlacerEplbPolicy.rebalance_experts(loads, EXPERTS, 0, NODES, RANKS).numpy()
    assert proposer.last.mode == "routing"
    weight = loads.numpy().astype(np.float64)
    base = eplb(weight, EXPERTS, 1, 1, RANKS)[0]
    assert (gpu_peaks(served, weight, RANKS) <= 1.05 * gpu_peaks(base, weight, RANKS) + 1e-9).all()
    assert inter_node_pairs(served, ids) < 0.5 * inter_node_pairs(base, ids)
    assert np.array_equal(proposer.rebalancer.placement.phy2log, served)  # in step with what is served


def test_prior_trace_builds_the_rebalancer_from_the_first_sglang_call():
    from placer.trace import load_trace

    ids = load_trace(SAMPLE).topk_ids  # [tokens, 26 layers, 6] over 64 experts
    layers, experts = ids.shape[1], 64
    counts = np.stack([np.bincount(ids[:, layer].ravel(), minlength=experts) for layer in range(layers)])
    proposer = RebalancerProposer(trace=SAMPLE)
    attach(proposer, peak_tolerance=1.02)
    phy2log, log2phy, logcnt = rebalance_experts(torch.from_numpy(counts)[None], 96, 6, None, 4)
    assert proposer.rebalancer.num_gpus == 16 and proposer.last.mode == "routing"
    weight = counts.astype(np.float64)
    base = eplb(weight, 96, 1, 1, 16)[0]
    assert (gpu_peaks(phy2log.numpy(), weight, 16) <= 1.02 * gpu_peaks(base, weight, 16) + 1e-9).all()
    assert (logcnt >= 1).all() and log2phy.shape[:2] == (layers, experts)


def test_shape_mismatch_or_empty_window_means_eplb():
    proposer = RebalancerProposer(Rebalancer(LAYERS, EXPERTS, NODES, GPUS_PER_NODE, SLOTS))
    attach(proposer)
    weight = np.random.default_rng(1).integers(0, 100, (LAYERS, EXPERTS))
    empty = PlacerEplbPolicy.rebalance_experts(weight, EXPERTS, 0, NODES, RANKS)
    assert proposer.last is None and np.array_equal(empty, eplb(weight, EXPERTS, 1, 1, RANKS)[0])
    proposer.observe(clustered_routing(2, tokens=200))
    other = PlacerEplbPolicy.rebalance_experts(weight, 2 * EXPERTS, 0, NODES, RANKS)  # 8 slots per GPU
    assert proposer.last is None and other.shape == (LAYERS, 2 * EXPERTS)
