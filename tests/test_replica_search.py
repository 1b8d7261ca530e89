"""The replica-aware swap search: invariants, its cost against the replay, and its use online."""

import numpy as np

from placer.evaluation.replay import evaluate
from placer.instances import load_topology
from placer.online import RebalanceConfig, Rebalancer
from placer.placement import Placement
from placer.solvers.replica_search import seat_replicas, window_cost
from placer.trace import Trace


def _instance(seed: int, experts: int = 16, nodes: int = 4, gpus_per_node: int = 2, slots: int = 3):
    rng = np.random.default_rng(seed)
    nets = np.array([np.sort(rng.choice(experts, 3, replace=False)) for _ in range(60)])
    weights = rng.integers(1, 20, len(nets)).astype(float)
    loads = np.bincount(nets.ravel(), weights=np.repeat(weights, 3), minlength=experts)
    affinity = np.zeros((experts, experts))
    for net, w in zip(nets, weights):
        for a in net:
            affinity[a, net] += w
    np.fill_diagonal(affinity, 0)
    gpus = nodes * gpus_per_node
    row = np.full(gpus * slots, -1)
    row[:experts] = rng.permutation(experts)
    spare = np.flatnonzero(row < 0)[: gpus * slots - experts - 2]  # two slots stay empty
    for j in spare:
        held = set(row[(j // slots) * slots:(j // slots + 1) * slots])
        row[j] = next(e for e in rng.permutation(experts) if e not in held)
    return row, nets, weights, loads, affinity


def _per_gpu_load(row, loads, slots):
    held = row >= 0
    copies = np.bincount(row[held], minlength=len(loads))
    per_copy = np.where(held, loads[np.maximum(row, 0)] / np.maximum(copies[np.maximum(row, 0)], 1), 0.0)
    return per_copy.reshape(-1, slots).sum(axis=1)


def test_search_keeps_copies_and_slots_and_never_costs_more():
    for seed in range(6):
        row, nets, weights, loads, affinity = _instance(seed)
        new = seat_replicas(row, nets, weights, loads, affinity, 2, 3, passes=4)
        assert np.array_equal(np.bincount(new[new >= 0], minlength=16), np.bincount(row[row >= 0], minlength=16))
        assert np.array_equal((new >= 0).reshape(-1, 3).sum(1), (row >= 0).reshape(-1, 3).sum(1))
        for gpu in new.reshape(-1, 3):
            held = gpu[gpu >= 0]
            assert len(held) == len(set(held.tolist())), "a GPU holds an expert twice"
        assert _per_gpu_load(new, loads, 3).max() <= _per_gpu_load(row, loads, 3).max() + 1e-9
        assert window_cost(new, nets, weights, 3, 2) <= window_cost(row, nets, weights, 3, 2)


def test_search_finds_the_copy_that_belongs_elsewhere():
    # the heavy set {0, 1, 2} spans both nodes (2 sits on node 1); swapping 2 with the light
    # expert 4 on node 0 serves it on one node
    nets = np.array([[0, 1, 2], [3, 4, 5]])
    weights = np.array([100.0, 1.0])
    loads = np.array([100.0, 100, 100, 1, 1, 1])
    affinity = np.zeros((6, 6))
    row = np.array([0, 4, 1, -1, 2, 5, 3, -1])  # 2 nodes x 2 GPUs x 2 slots
    before = window_cost(row, nets, weights, 2, 2)
    new = seat_replicas(row, nets, weights, loads, affinity, 2, 2, load_cap=1e9)
    assert window_cost(new, nets, weights, 2, 2) < before
    assert {0, 1, 2} <= set(new[:4].tolist()), "node 0 should serve the heavy set alone"


def test_window_cost_is_the_replay_dedup_count_without_replicas():
    rng = np.random.default_rng(3)
    experts, nodes, gpn = 12, 3, 2
    sets = np.array([np.sort(rng.choice(experts, 3, replace=False)) for _ in range(20)])
    row = rng.permutation(experts)
    ids = np.repeat(sets, nodes * gpn, axis=0)  # every set once from every GPU (t mod P)
    trace = Trace(ids[:, None, :], experts)
    placement = Placement(row[None, :], experts, gpn, 2)
    topology = load_topology("h100-dgx").resized(nodes, gpn)
    replayed = evaluate(trace, placement, topology, None).totals["internode_tokens_dedup"]
    assert window_cost(row, sets, np.ones(len(sets)), 2, gpn) * gpn == replayed


def test_rebalancer_with_the_search_is_complete_and_deterministic():
    rng = np.random.default_rng(0)
    ids = np.stack([np.stack([rng.choice(16, 2, replace=False) for _ in range(2)]) for _ in range(800)])
    results = []
    for _ in range(2):
        online = Rebalancer(2, 16, 4, 2, 3, RebalanceConfig(replica_passes=2, move_budget=1.0, min_gain=0.0))
        online.observe(ids)
        result = online.rebalance()
        for layer in result.placement.phy2log:
            assert set(range(16)) <= set(layer.tolist())
        results.append(result.placement.phy2log)
    assert np.array_equal(*results)
