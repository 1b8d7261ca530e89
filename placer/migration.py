"""Migration between placements: relabelling that keeps experts in place, and what moves.

Both take two :class:`Placement` objects of one cluster (``phy2log: [layers, gpus *
slots_per_gpu]``, -1 = empty slot, slot ``p`` on GPU ``p // slots_per_gpu``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

from placer.checks import check_real, check_type
from placer.errors import InputError
from placer.placement import EMPTY, Placement

__all__ = ["arrange_slots", "minimize_moves", "moved_by_link", "moved_weights"]


def _gpu_counts(placement: Placement, layer: int) -> np.ndarray:
    """Copies of each expert on each GPU in one layer: [gpus, experts]."""
    row = placement.phy2log[layer]
    held = np.flatnonzero(row >= 0)
    counts = np.zeros((placement.num_gpus, placement.num_experts), dtype=np.int64)
    np.add.at(counts, (held // placement.slots_per_gpu, row[held]), 1)
    return counts


def _held(counts: np.ndarray, k: int) -> sp.csr_matrix:
    """Which GPU holds at least k copies of which expert: sparse [gpus, experts] float64."""
    return sp.csr_matrix((counts >= k).astype(np.float64))


def _check_same_cluster(current: Placement, proposed: Placement) -> None:
    """Raise unless both placements have the same layers, experts, GPUs and GPUs per node."""
    check_type(current, "current", Placement)
    check_type(proposed, "proposed", Placement)
    shapes = [(p.num_layers, p.num_experts, p.num_gpus, p.gpus_per_node) for p in (proposed, current)]
    if shapes[0] != shapes[1]:
        raise InputError(
            None,
            "proposed",
            "(layers, experts, GPUs, GPUs per node) must match the current placement's: "
            f"proposed {shapes[0]}, current {shapes[1]}",
        )


def moved_weights(current: Placement, proposed: Placement, expert_param_bytes: float) -> dict:
    """Expert copies that must be loaded onto a GPU to go from ``current`` to ``proposed``.

    A proposed copy counts as moved unless its GPU already holds that expert
    (copies counted as a multiset; dropping copies is free). Returns
    ``experts_moved_per_layer`` [layers], ``experts_moved`` and ``bytes_moved``
    (``experts_moved * expert_param_bytes``).
    """
    check_real(expert_param_bytes, "expert_param_bytes", 0.0)
    _check_same_cluster(current, proposed)
    per_layer = []
    for layer in range(current.num_layers):
        old, new = _gpu_counts(current, layer), _gpu_counts(proposed, layer)
        per_layer.append(int(new.sum() - np.minimum(old, new).sum()))
    total = sum(per_layer)
    return {
        "experts_moved_per_layer": per_layer,
        "experts_moved": total,
        "bytes_moved": total * float(expert_param_bytes),
    }


def moved_by_link(current: Placement, proposed: Placement) -> tuple[np.ndarray, np.ndarray]:
    """Copies loaded going from ``current`` to ``proposed`` (as :func:`moved_weights`), split by
    the link they arrive over: (nvlink [layers, gpus], nic [layers, gpus]) int64, per receiving
    GPU. A copy arrives over NVLink when another GPU of its node holds the expert in
    ``current``, else over the NIC."""
    _check_same_cluster(current, proposed)
    shape = (current.num_layers, current.num_gpus)
    nvlink, nic = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    gpn = current.gpus_per_node
    for layer in range(current.num_layers):
        old, new = _gpu_counts(current, layer), _gpu_counts(proposed, layer)
        added = new - np.minimum(old, new)
        on_node = old.reshape(-1, gpn, current.num_experts).sum(axis=1) > 0
        local = (added * np.repeat(on_node, gpn, axis=0)).sum(axis=1)
        nvlink[layer], nic[layer] = local, added.sum(axis=1) - local
    return nvlink, nic


def _relabel_gpus(overlap: np.ndarray, gpus_per_node: int) -> np.ndarray:
    """Best node permutation plus GPU permutations within nodes.

    overlap: [gpus, gpus] weight of giving proposed GPU h (column) the label of
    current GPU g (row). Returns label: [gpus], the current GPU id each proposed
    GPU becomes. Exact: each (current node, proposed node) pair is worth its own
    best GPU matching, and the node matching maximises the sum of those.
    """
    nodes = overlap.shape[0] // gpus_per_node
    blocks = np.ascontiguousarray(overlap.reshape(nodes, gpus_per_node, nodes, gpus_per_node).transpose(0, 2, 1, 3))
    inner = np.empty((nodes, nodes, gpus_per_node), dtype=np.int64)
    for m, n in np.ndindex(nodes, nodes):
        inner[m, n] = linear_sum_assignment(blocks[m, n], maximize=True)[1]
    value = np.take_along_axis(blocks, inner[..., None], axis=3)[..., 0].sum(axis=2)
    label = np.empty(overlap.shape[0], dtype=np.int64)
    for m, n in zip(*linear_sum_assignment(value, maximize=True)):
        label[n * gpus_per_node + inner[m, n]] = m * gpus_per_node + np.arange(gpus_per_node)
    return label


def arrange_slots(wanted: np.ndarray, here: np.ndarray, slots: int) -> np.ndarray:
    """One GPU's slots: ``wanted`` experts, each one already in ``here`` kept at its slot.

    wanted: experts of the proposed GPU in slot order; here: [current slots]
    of the GPU it replaces. Returns [slots], the rest filling free slots in order.
    """
    left = list(wanted)
    result = np.full(slots, EMPTY, dtype=np.int64)
    for slot, expert in enumerate(here[:slots]):
        if expert >= 0 and expert in left:
            result[slot] = expert
            left.remove(expert)
    result[np.flatnonzero(result < 0)[: len(left)]] = left
    return result


def minimize_moves(current: Placement, proposed: Placement) -> Placement:
    """Relabel ``proposed``'s nodes and GPUs so that as many experts as possible stay put.

    Per layer, solves assignment problems (scipy ``linear_sum_assignment``):
    for every (current node, proposed node) pair the GPU matching keeping the
    most expert copies, then the node matching maximising the total; ties keep
    proposed GPU ids; GPUs excluded in ``proposed`` stay out of service. An
    expert that stays on its GPU keeps its slot when the new slot count allows. Returns a placement
    with ``proposed``'s slots per
    GPU and metadata; per layer its GPU contents are ``proposed``'s, permuted.

    Node and within-node GPU relabelings leave the per-node and per-GPU expert
    sets unchanged, so load balance and traffic match ``proposed`` in
    expectation over which tokens start on which GPU. They are not exactly
    equal on a given trace: the evaluator's token source (``t mod P`` or the
    trace's ``src_rank``), DeepEP normal mode's landing GPU (the source's local
    index) and replica choice depend on GPU ids, and each layer is relabeled
    independently.
    """
    _check_same_cluster(current, proposed)
    gpus, gpn = proposed.num_gpus, proposed.gpus_per_node
    old_slots, new_slots = current.slots_per_gpu, proposed.slots_per_gpu
    result = np.full_like(proposed.phy2log, EMPTY)
    # a GPU out of service in ``proposed`` may only take the label of another excluded GPU
    dead_penalty = np.zeros((gpus, gpus))
    dead = proposed.excluded_gpus
    dead_penalty[np.ix_(dead, np.setdiff1d(np.arange(gpus), dead))] = (
        -(float(gpus + 1) ** 2) * proposed.phy2log.shape[1]
    )
    for layer in range(proposed.num_layers):
        old, new = _gpu_counts(current, layer), _gpu_counts(proposed, layer)
        # kept[g, h]: copies proposed GPU h keeps if it becomes GPU g (sum_e min(old[g,e], new[h,e]));
        # the identity bonus (< one copy in total) breaks ties towards unchanged GPU ids.
        # sparse products: a GPU holds a few experts (dense ones took most of the time at 256 GPUs)
        kept = sum((_held(old, k) @ _held(new, k).T).toarray() for k in range(1, int(min(old.max(), new.max())) + 1))
        label = _relabel_gpus(np.rint(kept) * (gpus + 1) + np.eye(gpus) + dead_penalty, gpn)
        for gpu, target in enumerate(label):
            wanted = proposed.phy2log[layer, gpu * new_slots : (gpu + 1) * new_slots]
            here = current.phy2log[layer, target * old_slots : (target + 1) * old_slots]
            arranged = arrange_slots(wanted[wanted >= 0], here, new_slots)
            result[layer, target * new_slots : (target + 1) * new_slots] = arranged
    return Placement(result, proposed.num_experts, gpn, new_slots, dict(proposed.metadata))
