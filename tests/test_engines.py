"""Engine exports (TensorRT-LLM, EPLB, contiguous permutation) and low-churn re-placement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from placer.eplb import rebalance_experts
from placer.errors import InputError
from placer.formats.engines import (
    dumps_trtllm_yaml,
    expert_permutation,
    invert_permutation,
    to_eplb,
    to_sglang,
    to_trtllm,
    write_eplb,
)
from placer.migration import minimize_moves, moved_weights
from placer.placement import Placement, baseline, contiguous_gpus, from_expert_gpu
from placer.topology import Model

LOADS = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
         [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]


def model(layers: int, experts: int, dense: int = 0, groups: int = 0, per_token: int = 0) -> Model:
    return Model("toy", experts, 2, 16, 8, layers, dense, num_groups=groups, groups_per_token=per_token)


def eplb_placement() -> Placement:
    """DeepSeek's README example: 12 experts on 16 slots, 8 GPUs, 4 per node."""
    phy2log, _, _ = rebalance_experts(np.array(LOADS), 16, 4, 2, 8)
    return Placement(phy2log, 12, 4, 2)


def random_placement(rng, layers, experts, gpus, gpn, slots) -> Placement:
    """Every expert once, the remaining slots random replicas, shuffled over slots."""
    extra = gpus * slots - experts
    rows = [rng.permutation(np.concatenate([np.arange(experts), rng.integers(0, experts, extra)]))
            for _ in range(layers)]
    return Placement(np.array(rows), experts, gpn, slots)


def relabeled(placement: Placement, rng) -> Placement:
    """The same placement with nodes, GPUs within nodes and slots within GPUs shuffled, per layer."""
    gpn, slots, nodes = placement.gpus_per_node, placement.slots_per_gpu, placement.num_nodes
    rows = []
    for row in placement.phy2log:
        gpu_order = np.concatenate([n * gpn + rng.permutation(gpn) for n in rng.permutation(nodes)])
        by_gpu = row.reshape(-1, slots)[gpu_order]
        rows.append(np.stack([rng.permutation(s) for s in by_gpu]).ravel())
    return Placement(np.array(rows), placement.num_experts, gpn, slots)


def gpu_sets(placement: Placement, layer: int) -> list[tuple[int, ...]]:
    per_gpu = placement.phy2log[layer].reshape(placement.num_gpus, -1)
    return [tuple(sorted(s[s >= 0].tolist())) for s in per_gpu]


def node_sets(placement: Placement, layer: int) -> list[tuple[int, ...]]:
    per_node = placement.phy2log[layer].reshape(placement.num_nodes, -1)
    return sorted(tuple(sorted(s[s >= 0].tolist())) for s in per_node)


def gpu_sets_by_node(placement: Placement, layer: int) -> list[list[tuple[int, ...]]]:
    sets, gpn = gpu_sets(placement, layer), placement.gpus_per_node
    return sorted(sorted(sets[n * gpn:(n + 1) * gpn]) for n in range(placement.num_nodes))


def padding_last(log2phy: np.ndarray) -> np.ndarray:
    """-1 padding replaced by the largest int64, so that sorting puts it last."""
    return np.where(log2phy < 0, np.iinfo(np.int64).max, log2phy)


def one_layer(placement: Placement, layer: int) -> Placement:
    return Placement(placement.phy2log[layer:layer + 1], placement.num_experts, placement.gpus_per_node,
                     placement.slots_per_gpu)


# ---------------------------------------------------------------- TensorRT-LLM


def test_trtllm_doc_keys_model_layers_and_lists_slots_in_order():
    placement = eplb_placement()
    doc = to_trtllm(placement)
    assert doc["num_slots"] == 16 and doc["layer_updates_per_iter"] == 0
    assert list(doc["initial_global_assignments"]) == [0, 1]
    assert doc["initial_global_assignments"][1] == placement.phy2log[1].tolist()
    with_dense = to_trtllm(placement, model(2, 12, dense=3))
    assert list(with_dense["initial_global_assignments"]) == [3, 4]
    assert with_dense["initial_global_assignments"][3] == doc["initial_global_assignments"][0]


def test_trtllm_and_sglang_refuse_empty_slots_and_a_mismatched_model():
    uneven = baseline("contiguous", 1, 10, 4, 2)  # 3 slots per GPU, 2 empty
    for export in (to_trtllm, to_sglang):
        with pytest.raises(InputError, match="slot 8 is empty"):
            export(uneven)
        with pytest.raises(InputError, match="model toy has 3 of 12"):
            export(eplb_placement(), model(3, 12))


def test_trtllm_yaml_text_is_fixed_and_parses_back():
    doc = {"num_slots": 4, "layer_updates_per_iter": 0,
           "initial_global_assignments": {3: [1, 0, 2, 1], 4: [0, 1, 2, 0]}}
    text = dumps_trtllm_yaml(doc)
    assert text == (
        "num_slots: 4\nlayer_updates_per_iter: 0\ninitial_global_assignments:\n"
        "  3: [1, 0, 2, 1]\n  4: [0, 1, 2, 0]\n"
    )
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(dumps_trtllm_yaml(to_trtllm(eplb_placement()))) == to_trtllm(eplb_placement())
    assert yaml.safe_load(text) == doc


# ---------------------------------------------------------------- EPLB triple


def test_eplb_triple_round_trips_rebalance_experts(tmp_path):
    phy2log, log2phy, logcnt = rebalance_experts(np.array(LOADS), 16, 4, 2, 8)
    triple = to_eplb(Placement(phy2log, 12, 4, 2))
    assert np.array_equal(triple["phy2log"], phy2log) and np.array_equal(triple["logcnt"], logcnt)
    assert triple["log2phy"].shape == log2phy.shape
    # Same slots per expert; ours in increasing slot order (EPLB's are in replica-rank order).
    assert np.array_equal(np.sort(padding_last(log2phy)), padding_last(triple["log2phy"]))
    write_eplb(Placement(phy2log, 12, 4, 2), tmp_path / "eplb.npz")
    with np.load(tmp_path / "eplb.npz") as back:
        assert sorted(back.files) == ["layer_ids", "log2phy", "logcnt", "phy2log"]
        assert all(np.array_equal(back[k], triple[k]) for k in triple)


def test_eplb_log2phy_inverts_phy2log_with_empty_slots():
    placement = baseline("random", 3, 10, 4, 2)
    triple = to_eplb(placement)
    assert triple["log2phy"].shape == (3, 10, 1) and (triple["logcnt"] == 1).all()
    for layer in range(3):
        slots = triple["log2phy"][layer, :, 0]
        assert (placement.phy2log[layer, slots] == np.arange(10)).all()


# ---------------------------------------------------------------- permutation


@pytest.mark.parametrize("experts, gpus", [(16, 4), (10, 4)])
def test_permutation_realises_the_placement_under_contiguous_ownership(experts, gpus):
    placement = baseline("random", 3, experts, gpus, 2)
    perm = expert_permutation(placement)
    owner = np.empty_like(perm)
    np.put_along_axis(owner, perm, np.tile(contiguous_gpus(experts, gpus), (3, 1)), axis=1)
    assert np.array_equal(owner, placement.expert_gpu())
    inv = invert_permutation(perm)
    assert np.array_equal(np.take_along_axis(perm, inv, axis=1), np.tile(np.arange(experts), (3, 1)))


def test_permutation_rejects_replicas_and_uneven_counts():
    with pytest.raises(InputError, match="copies"):
        expert_permutation(eplb_placement())
    lopsided = from_expert_gpu(np.array([[0, 0, 0, 1, 2, 2, 3, 3]]), 4, 2)
    with pytest.raises(InputError, match="GPU 0 holds 3 experts .* gives it 2"):
        expert_permutation(lopsided)


def test_permutation_keeps_expert_groups_whole_under_group_limited_routing():
    grouped = from_expert_gpu(np.array([[1, 1, 0, 0, 3, 3, 2, 2]]), 4, 2)  # groups {0..3}, {4..7}
    perm = expert_permutation(grouped, model(1, 8, groups=2, per_token=1))
    assert perm.tolist() == [[2, 3, 0, 1, 6, 7, 4, 5]]
    mixed = from_expert_gpu(np.array([[0, 0, 2, 2, 1, 1, 3, 3]]), 4, 2)
    assert expert_permutation(mixed).shape == (1, 8)
    with pytest.raises(InputError, match="one whole group"):
        expert_permutation(mixed, model(1, 8, groups=2, per_token=1))


# ---------------------------------------------------------------- re-placement


def test_relabeling_of_current_moves_nothing_and_restores_it():
    rng = np.random.default_rng(1)
    current = random_placement(rng, 4, 24, 8, 4, 4)
    proposed = relabeled(current, rng)
    assert moved_weights(current, proposed, 1.0)["experts_moved"] > 0
    result = minimize_moves(current, proposed)
    assert moved_weights(current, result, 10.0) == {
        "experts_moved_per_layer": [0] * 4, "experts_moved": 0, "bytes_moved": 0.0}
    no_replicas = baseline("random", 2, 32, 8, 4)
    restored = minimize_moves(no_replicas, relabeled(no_replicas, rng))
    assert np.array_equal(restored.phy2log, no_replicas.phy2log)


@pytest.mark.parametrize("seed", range(5))
def test_minimize_moves_beats_naive_and_keeps_node_and_gpu_sets(seed):
    rng = np.random.default_rng(seed)
    current = random_placement(rng, 3, 20, 8, 4, 3)
    proposed = random_placement(rng, 3, 20, 8, 4, 4)
    result = minimize_moves(current, proposed)
    assert result.slots_per_gpu == 4
    naive = moved_weights(current, proposed, 2.0)
    ours = moved_weights(current, result, 2.0)
    assert all(a <= b for a, b in zip(ours["experts_moved_per_layer"], naive["experts_moved_per_layer"]))
    assert ours["bytes_moved"] == 2.0 * ours["experts_moved"]
    for layer in range(3):
        assert node_sets(result, layer) == node_sets(proposed, layer)
        assert gpu_sets_by_node(result, layer) == gpu_sets_by_node(proposed, layer)


def test_minimize_moves_is_optimal_over_all_relabelings():
    rng = np.random.default_rng(7)
    current = random_placement(rng, 2, 10, 4, 2, 3)
    proposed = random_placement(rng, 2, 10, 4, 2, 3)
    best = []
    for layer in range(2):
        counts = []
        for nodes in itertools.permutations(range(2)):
            for inner in itertools.product(itertools.permutations(range(2)), repeat=2):
                order = np.concatenate([n * 2 + np.array(inner[i]) for i, n in enumerate(nodes)])
                moved = Placement(proposed.phy2log[layer].reshape(4, 3)[order].reshape(1, -1), 10, 2, 3)
                counts.append(moved_weights(one_layer(current, layer), moved, 1.0)["experts_moved"])
        best.append(min(counts))
    result = minimize_moves(current, proposed)
    assert moved_weights(current, result, 1.0)["experts_moved_per_layer"] == best


def test_an_expert_that_stays_keeps_its_slot():
    current = Placement(np.array([[0, 1, 2, 3, 4, 5, 6, 7]]), 8, 2, 2)
    proposed = Placement(np.array([[7, 6, 3, 0, 1, 4, 5, 2]]), 8, 2, 2)
    # Best: proposed node 0 ({7,6} {3,0}) becomes node 1, node 1 ({1,4} {5,2}) node 0: 4 of 8 stay.
    result = minimize_moves(current, proposed)
    for gpu in range(4):
        for slot in range(2):
            expert = current.phy2log[0, gpu * 2 + slot]
            if expert in result.phy2log[0, gpu * 2:gpu * 2 + 2]:
                assert result.phy2log[0, gpu * 2 + slot] == expert
    assert moved_weights(current, result, 1.0)["experts_moved"] == 4


def test_minimize_moves_needs_the_same_cluster():
    with pytest.raises(InputError, match="must match"):
        minimize_moves(baseline("contiguous", 1, 8, 4, 2), baseline("contiguous", 1, 8, 4, 4))
