"""Engine-neutral rebalancing behind the drop-ins: EPLB floor, optional proposer, slot keeping.

One call of :func:`balance` does what both engines ask of a policy:

1. placer's EPLB (:mod:`placer.eplb`, DeepSeek's algorithm) on the engine's
   loads: the load-only answer and the GPU-peak reference;
2. when a proposer is attached (a rebalancer's window fed by a routing hook,
   or a prior trace), its placement replaces EPLB's layer by layer wherever
   it is valid (every expert held, ids in range, right shape) and its GPU peak
   under the engine's loads is at most ``peak_tolerance`` x EPLB's on that
   layer;
3. with the placement in service given, EPLB's layers are relabelled
   (:func:`placer.migration.minimize_moves`: nodes and GPUs) so that as many
   expert copies as possible stay on their GPU, each in its old slot.
   Relabelling permutes whole GPUs, so every GPU's load, and the peak, is
   unchanged. A proposer's layers keep its GPU contents (the online
   rebalancer warm-starts from the map in service itself); only the slot
   order inside each GPU is restored, so the slot-keeping guarantee holds
   whatever the proposer.

GPU load follows both engines' EPLB convention: an expert's load is split
evenly over its copies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from placer.engine_policies.inputs import EngineCall
from placer.eplb import rebalance_experts as eplb_rebalance
from placer.migration import arrange_slots, minimize_moves
from placer.placement import Placement

__all__ = ["Proposer", "balance", "gpu_peaks", "logical_maps", "valid_layers"]

log = logging.getLogger(__name__)

Proposer = Callable[[EngineCall], np.ndarray | None]
"""Given a checked call, a candidate phy2log [layers, num_replicas] or None (no opinion)."""


def gpu_peaks(phy2log: np.ndarray, weight: np.ndarray, num_ranks: int) -> np.ndarray:
    """Heaviest GPU per layer when each expert's load is split evenly over its copies: [layers].

    phy2log: [layers, num_replicas] with every expert present; weight: [layers, experts].
    """
    layers, experts = weight.shape
    copies = np.stack([np.bincount(row, minlength=experts) for row in phy2log])
    per_copy = weight / np.maximum(copies, 1)
    slot_load = np.take_along_axis(per_copy, phy2log, axis=1)
    return slot_load.reshape(layers, num_ranks, -1).sum(axis=2).max(axis=1)


def valid_layers(phy2log: object, layers: int, experts: int, num_replicas: int) -> np.ndarray:
    """Which layers of a candidate hold every expert with ids in range: [layers] bool.

    A candidate of the wrong shape or type has no valid layer.
    """
    array = np.asarray(phy2log)
    if array.shape != (layers, num_replicas) or not np.issubdtype(array.dtype, np.integer):
        return np.zeros(layers, dtype=bool)
    in_range = ((array >= 0) & (array < experts)).all(axis=1)
    held = np.array([np.unique(row[row >= 0]).size == experts for row in array])
    return in_range & held


def _eplb(call: EngineCall) -> np.ndarray:
    """placer's EPLB: hierarchical when groups divide by nodes, else global (as both engines)."""
    phy2log, _, _ = eplb_rebalance(call.weight, call.num_replicas, call.num_groups, call.num_nodes, call.num_ranks)
    return phy2log.astype(np.int64)


def _merge(call: EngineCall, base: np.ndarray, candidate: object, peak_tolerance: float) -> np.ndarray:
    """Which layers take the candidate: [layers] bool, valid and within ``peak_tolerance`` x base's GPU peak."""
    ok = valid_layers(candidate, call.num_layers, call.num_experts, call.num_replicas)
    if not ok.any():
        log.warning("proposed placement rejected (shape, range or missing experts); serving EPLB")
        return ok
    rows = np.flatnonzero(ok)
    candidate = np.asarray(candidate, dtype=np.int64)[rows]
    peak = gpu_peaks(candidate, call.weight[rows], call.num_ranks)
    limit = peak_tolerance * gpu_peaks(base[rows], call.weight[rows], call.num_ranks) + 1e-9
    ok[rows[peak > limit]] = False
    if ok.sum() < call.num_layers:
        log.info("proposed placement used on %d of %d layers (others: EPLB)", ok.sum(), call.num_layers)
    return ok


def _keep_slots(call: EngineCall, phy2log: np.ndarray) -> np.ndarray:
    """Relabel nodes and GPUs of these layers so copies already on a GPU stay there, in their slot.

    phy2log: [some layers, replicas]; call.old_phy2log must hold the same layers.
    """
    current = Placement(call.old_phy2log, call.num_experts, call.ranks_per_node, call.slots_per_rank)
    proposed = Placement(phy2log, call.num_experts, call.ranks_per_node, call.slots_per_rank)
    return minimize_moves(current, proposed).phy2log.astype(np.int64)


def _keep_in_gpu(old: np.ndarray, rows: np.ndarray, slots: int) -> np.ndarray:
    """Per layer and GPU, experts of ``rows`` already on that GPU in ``old`` back in their old slots.

    old, rows: [layers, replicas]; GPU contents are unchanged, only their slot order.
    """
    result = rows.copy()
    for layer in range(rows.shape[0]):
        for start in range(0, rows.shape[1], slots):
            span = slice(start, start + slots)
            result[layer, span] = arrange_slots(rows[layer, span], old[layer, span], slots)
    return result


def balance(call: EngineCall, proposer: Proposer | None = None, peak_tolerance: float = 1.0) -> np.ndarray:
    """The placement to serve next: phy2log [layers, num_replicas] int64, every expert held.

    proposer: None for load only (then the result is EPLB's, relabelled); its
    layers are kept only within ``peak_tolerance`` x EPLB's GPU peak. A
    proposer's GPU contents are served as proposed (it warm-starts from the map
    in service itself), with experts already on a GPU back in their old slots;
    EPLB's layers are relabelled against the map in service.
    """
    base = _eplb(call)
    proposed = np.zeros(call.num_layers, dtype=bool)
    candidate = proposer(call) if proposer is not None else None
    if candidate is not None:
        proposed = _merge(call, base, candidate, peak_tolerance)
    result = base
    if call.old_phy2log is not None and not proposed.all():
        rest = np.flatnonzero(~proposed)
        relabel = EngineCall(call.weight[rest], call.num_replicas, call.num_groups, call.num_nodes,
                             call.num_ranks, call.old_phy2log[rest])
        result = base.copy()
        result[rest] = _keep_slots(relabel, base[rest])
    if proposed.any():
        rows = np.asarray(candidate, dtype=np.int64)[proposed]
        if call.old_phy2log is not None:
            rows = _keep_in_gpu(call.old_phy2log[proposed], rows, call.slots_per_rank)
        result = result.copy() if result is base else result
        result[proposed] = rows
    return result


def logical_maps(phy2log: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """log2phy [layers, experts, max copies] (-1 padded, copies in slot order) and logcnt [layers, experts].

    phy2log: [layers, num_replicas] with every expert present.
    """
    layers, replicas = phy2log.shape
    logcnt = np.stack([np.bincount(row, minlength=num_experts) for row in phy2log]).astype(np.int64)
    width = int(logcnt.max())
    log2phy = np.full((layers, num_experts, width), -1, dtype=np.int64)
    for layer, row in enumerate(phy2log):
        order = np.argsort(row, kind="stable")
        experts = row[order]
        rank = np.arange(replicas) - np.searchsorted(experts, experts, side="left")
        log2phy[layer, experts, rank] = order
    return log2phy, logcnt
