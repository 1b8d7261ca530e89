"""Replica dispatch rules on hand-made placements."""

from __future__ import annotations

import numpy as np

from placer.dispatch import Dispatcher, replica_slots
from placer.evaluation.replay import evaluate
from placer.placement import Placement
from placer.topology import Topology
from placer.trace import validate_arrays


def test_replica_slots_lists_copies_in_slot_order():
    log2phy, copies = replica_slots(np.array([0, 1, 2, -1, 2, 0]), 3)
    assert copies.tolist() == [2, 1, 2]
    assert log2phy.tolist() == [[0, 5], [1, -1], [2, 4]]


def test_nearest_prefers_reached_nodes_then_least_loaded():
    # 3 nodes x 1 GPU, 2 slots each: GPU0 [0, -], GPU1 [1, 2], GPU2 [2, -].
    placement = Placement(np.array([[0, -1, 1, 2, 2, -1]]), 3, 1, 2)
    dispatcher = Dispatcher(placement, "nearest")
    ids = np.array([[2, -1], [1, 2], [2, -1]])
    gpus = dispatcher.route(0, ids, np.array([0, 0, 0]))
    # t0: expert 2 is nowhere near GPU 0: both copies unloaded, tie -> lower GPU 1.
    # t1: expert 1 only on GPU 1; expert 2 then stays on node 1, already reached, despite its load.
    # t2: nothing reached yet; GPU 1's copy served 2 pairs, GPU 2's none -> GPU 2.
    assert gpus.tolist() == [[1, -1], [1, 1], [2, -1]]


def test_nearest_takes_the_source_gpu_then_the_source_node():
    # 1 node x 2 GPUs, 2 slots each: GPU0 [0, 1], GPU1 [0, -].
    placement = Placement(np.array([[0, 1, 0, -1]]), 2, 2, 2)
    gpus = Dispatcher(placement, "nearest").route(0, np.array([[0, 1], [0, 1]]), np.array([1, 0]))
    assert gpus.tolist() == [[1, 0], [0, 0]]


def test_sglang_static_uses_same_gpu_replica_else_fair_choice():
    placement = Placement(np.array([[0, 1, 0, -1]]), 2, 2, 2)
    gpus = Dispatcher(placement, "sglang-static").route(0, np.array([[0, 1], [0, 1]]), np.array([1, 0]))
    assert gpus.tolist() == [[1, 0], [0, 0]]


def test_replicas_on_the_source_node_cut_internode_traffic():
    rng = np.random.default_rng(0)
    ids = np.stack([rng.permutation(4)[:2] for _ in range(400)]).reshape(400, 1, 2)
    trace = validate_arrays("r", {"topk_ids": ids})
    topology = Topology("t", 2, 1, 1e9, 1e12, 1e9, 1e9, 0.0)
    single = Placement(np.array([[0, 1, 2, 3]]), 4, 1, 2)
    replicated = Placement(np.array([[0, 1, 2, 3, 0, 1, 2, 3]]), 4, 1, 4)
    for rule in ("nearest", "sglang-static"):
        assert evaluate(trace, replicated, topology, rule=rule).totals["internode_tokens_dedup"] == 0
        assert evaluate(trace, single, topology, rule=rule).totals["internode_tokens_dedup"] > 0
