"""Redundant experts: how many copies each expert gets and where they go.

Given a placement of every expert once (the node and GPU stages), spare slots
receive replicas:

1. counts: each spare slot goes to the expert with the highest load per copy
   (as EPLB does; ties to the lower id), which bounds the per-copy load; a
   copy that finds no GPU without the expert is given instead to the
   hottest expert (per copy) that GPU lacks, so every slot is filled;
2. nodes: a replica goes to the node, among those not holding the expert and
   with a free slot, whose experts it is most co-activated with (tokens
   reaching that node anyway then find the expert there); once every node
   holds the expert, an extra copy goes to the least-loaded open node;
3. GPUs: inside each node the copies are re-packed longest-first by the load
   each one serves when the layer's tokens are dispatched with the rule the
   engine will run (``nearest`` by default, or ``sglang-static`` / ``lp``, see
   :mod:`placer.dispatch`; a few rounds), never two copies of one expert on one GPU.

Excluded GPUs (``metadata["excluded_gpus"]``) receive no copy: their slots stay
empty, and the replay that measures served load sends tokens from live GPUs only.

Kept expert groups (``allowed`` masks): copies stay on their group's nodes, so
a token still reaches only its groups' nodes; the copy counts are then drawn
per group node set, from that set's slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from placer.dispatch import LP_BATCH_TOKENS, Dispatcher
from placer.placement import EMPTY, Placement

REPACK_ROUNDS = 3


def replica_counts(loads: np.ndarray, num_slots: int) -> np.ndarray:
    """Copies per expert filling ``num_slots``: loads [E] -> counts [E] (each >= 1)."""
    counts = np.ones(len(loads), dtype=np.int64)
    per_copy = loads.astype(np.float64)
    for _ in range(num_slots - len(loads)):
        counts[int(np.argmax(per_copy / counts))] += 1
    return counts


def block_counts(loads: np.ndarray, allowed: np.ndarray, live: np.ndarray, gpus_per_node: int,
                 slots_per_gpu: int) -> np.ndarray:
    """Copies per expert [E] when experts keep to node sets: each set's live slots go to its
    own experts by load per copy. loads: [E]; allowed: [E, nodes] bool; live: [gpus] bool."""
    node_sets, block_of = np.unique(allowed, axis=0, return_inverse=True)
    block_of = block_of.ravel()
    live_per_node = live.reshape(-1, gpus_per_node).sum(axis=1)
    counts = np.empty(len(loads), dtype=np.int64)
    for b, nodes in enumerate(node_sets):
        members = np.flatnonzero(block_of == b)
        counts[members] = replica_counts(loads[members], int(live_per_node[nodes].sum()) * slots_per_gpu)
    return counts


def add_replicas(
    expert_gpu: np.ndarray,
    counts: np.ndarray,
    coactivation: sp.csr_matrix,
    loads: np.ndarray,
    num_gpus: int,
    gpus_per_node: int,
    slots_per_gpu: int,
    live: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """One layer's slot map with replicas placed by co-activation affinity.

    expert_gpu: [E] GPU of each expert's first copy; counts: [E] copies wanted;
    coactivation: [E, E]; loads: [E]; live: [num_gpus] bool GPUs in service (None = all;
    the others get no copy); allowed: [E, nodes] bool nodes each expert may use (None =
    all). Returns phy2log: [num_gpus * slots_per_gpu].
    """
    experts = len(expert_gpu)
    live = np.ones(num_gpus, dtype=bool) if live is None else np.asarray(live, dtype=bool)
    if allowed is None:
        allowed = np.ones((experts, num_gpus // gpus_per_node), dtype=bool)
    held: list[list[int]] = [[] for _ in range(num_gpus)]
    for expert in np.argsort(expert_gpu, kind="stable"):
        held[expert_gpu[expert]].append(int(expert))
    on_node = np.zeros((num_gpus // gpus_per_node, experts), dtype=bool)
    on_node[expert_gpu // gpus_per_node, np.arange(experts)] = True
    gpu_load = np.bincount(expert_gpu, weights=loads / counts, minlength=num_gpus)
    affinity = coactivation.toarray().astype(np.float64)
    hottest_first = np.argsort(-loads, kind="stable")
    copies = np.ones(experts, dtype=np.int64)
    for expert in np.repeat(hottest_first, counts[hottest_first] - 1):
        open_gpus = [g for g in range(num_gpus) if live[g] and allowed[expert, g // gpus_per_node]
                     and len(held[g]) < slots_per_gpu and expert not in held[g]]
        if not open_gpus:
            continue
        open_nodes = sorted({g // gpus_per_node for g in open_gpus})
        fresh = [n for n in open_nodes if not on_node[n, expert]]
        if fresh:
            node = fresh[int(np.argmax([affinity[expert, on_node[n]].sum() for n in fresh]))]
        else:
            node_load = [gpu_load[n * gpus_per_node:(n + 1) * gpus_per_node].sum() for n in open_nodes]
            node = open_nodes[int(np.argmin(node_load))]
        gpu = min((g for g in open_gpus if g // gpus_per_node == node), key=lambda g: (gpu_load[g], g))
        held[gpu].append(int(expert))
        gpu_load[gpu] += loads[expert] / counts[expert]
        on_node[node, expert] = True
        copies[expert] += 1
    for gpu, members in enumerate(held):
        while live[gpu] and len(members) < slots_per_gpu:
            fits = allowed[:, gpu // gpus_per_node] & ~np.isin(np.arange(experts), members)
            if not fits.any():
                break
            expert = int(np.argmax(np.where(fits, loads / copies, -1.0)))
            members.append(expert)
            copies[expert] += 1
    return _slot_map(held, slots_per_gpu)


def _slot_map(held: list[list[int]], slots_per_gpu: int) -> np.ndarray:
    """phy2log [gpus * slots] from the experts each GPU holds, in order."""
    phy2log = np.full(len(held) * slots_per_gpu, EMPTY, dtype=np.int64)
    for gpu, members in enumerate(held):
        phy2log[gpu * slots_per_gpu: gpu * slots_per_gpu + len(members)] = members
    return phy2log


def repack_node(phy2log: np.ndarray, slot_load: np.ndarray, node: int, gpus_per_node: int, slots_per_gpu: int,
                live: np.ndarray | None = None) -> None:
    """Re-pack one node's copies onto its live GPUs longest-first by served load (in place).

    phy2log: [slots] one layer; slot_load: [slots] pairs each copy served;
    live: [gpus] bool GPUs in service (None = all). When every GPU with a free slot
    already holds the next copy's expert, :func:`_make_room` moves a copy to free a GPU.
    """
    first_gpu = node * gpus_per_node
    usable = [g for g in range(gpus_per_node) if live is None or live[first_gpu + g]]
    first = node * gpus_per_node * slots_per_gpu
    span = np.arange(first, first + gpus_per_node * slots_per_gpu)
    span = span[phy2log[span] >= 0]
    held: list[list[int]] = [[] for _ in range(gpus_per_node)]
    served: list[list[float]] = [[] for _ in range(gpus_per_node)]
    for slot in span[np.argsort(-slot_load[span], kind="stable")]:
        expert = int(phy2log[slot])
        open_gpus = [g for g in usable if len(held[g]) < slots_per_gpu and expert not in held[g]]
        gpu = (min(open_gpus, key=lambda g: (sum(served[g]), g)) if open_gpus
               else _make_room(held, served, expert, float(slot_load[slot]), usable, slots_per_gpu))
        held[gpu].append(expert)
        served[gpu].append(float(slot_load[slot]))
    phy2log[first: first + gpus_per_node * slots_per_gpu] = _slot_map(held, slots_per_gpu)


def _make_room(held: list[list[int]], served: list[list[float]], expert: int, load: float,
               usable: list[int], slots_per_gpu: int) -> int:
    """A GPU for a copy of ``expert`` when every GPU with a free slot holds it already.

    Moves one copy from a full GPU ``h`` lacking the expert to a GPU ``g`` with a free slot
    that lacks that copy's expert (one always exists while the expert has fewer copies than
    GPUs: ``h`` holds more distinct experts than ``g``), choosing the move with the lowest
    resulting max(load of g, load of h with the new copy), ties to the lowest ids; returns h.
    held / served: per local GPU the experts and the load each copy serves (updated in place).
    """
    best = None
    for g in (g for g in usable if len(held[g]) < slots_per_gpu):
        for h in (h for h in usable if expert not in held[h]):
            for i, other in enumerate(held[h]):
                if other not in held[g]:
                    cost = max(sum(served[g]) + served[h][i], sum(served[h]) - served[h][i] + load)
                    if best is None or cost < best[0]:
                        best = (cost, g, h, i)
    assert best is not None, f"expert {expert} has more copies than the node has GPUs"
    _, g, h, i = best
    held[g].append(held[h].pop(i))
    served[g].append(served[h].pop(i))
    return h


def replicate(
    placement: Placement,
    tokens: list[np.ndarray],
    coactivation: list[sp.csr_matrix],
    loads: np.ndarray,
    slots_per_gpu: int,
    excluded_gpus: Sequence[int] | None = None,
    allowed: Sequence[np.ndarray] | None = None,
    rule: str = "nearest",
    lp_batch: int = LP_BATCH_TOKENS,
) -> Placement:
    """Fill ``slots_per_gpu`` slots per live GPU with replicas of a one-copy placement.

    tokens: per layer [tokens, k] expert ids replayed to measure served load
    (sources: token t on the (t mod L)-th of the L live GPUs); coactivation: per layer
    [E, E]; loads: [layers, E]. excluded_gpus: GPUs out of service (no copies); None
    reads ``placement.metadata["excluded_gpus"]`` (absent = none). allowed: per layer
    [E, nodes] bool, the nodes each expert's copies may use (kept groups), or None.
    rule, lp_batch: the dispatch rule the copies' served load is measured under (as replayed).
    """
    gpus, per_node = placement.num_gpus, placement.gpus_per_node
    if excluded_gpus is None:
        excluded_gpus = placement.metadata.get("excluded_gpus", [])
    live = np.ones(gpus, dtype=bool)
    live[np.asarray(list(excluded_gpus), dtype=np.int64)] = False
    live_ids = np.flatnonzero(live)
    expert_gpu = placement.expert_gpu()
    rows = []
    for layer in range(placement.num_layers):
        mask = None if allowed is None else allowed[layer]
        counts = (replica_counts(loads[layer], len(live_ids) * slots_per_gpu) if mask is None
                  else block_counts(loads[layer], mask, live, per_node, slots_per_gpu))
        rows.append(add_replicas(expert_gpu[layer], counts, coactivation[layer], loads[layer],
                                 gpus, per_node, slots_per_gpu, live, mask))
    phy2log = np.stack(rows)
    for _ in range(REPACK_ROUNDS):
        current = Placement(phy2log, placement.num_experts, per_node, slots_per_gpu)
        dispatcher = Dispatcher(current, rule, lp_batch)
        for layer, ids in enumerate(tokens):
            dispatcher.route(layer, ids, live_ids[np.arange(len(ids)) % len(live_ids)])
            for node in range(placement.num_nodes):
                repack_node(phy2log[layer], dispatcher.slot_load[layer], node, per_node, slots_per_gpu, live)
    return Placement(phy2log, placement.num_experts, per_node, slots_per_gpu, dict(placement.metadata))
