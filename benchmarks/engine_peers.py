"""The engines' own co-activation-aware placement, as a peer in the benchmarks.

TensorRT-LLM ships, beside its load-only EPLB config generator, an example that reads
the co-occurrence of experts from its statistics dump and fills each EP rank with
experts often picked together (``examples/ep_load_balancer/generate_eplb_config_cooccurrence.py``
and ``utils.do_placement_with_cooccurrence``, stored versions 7b88df19 / 6bf781a4; read
there, written here). Its rule, per layer:

1. copies per expert by load per copy (as EPLB; one copy each when slots = experts);
2. rank by rank, start from the copy of highest load per copy still unplaced, then keep
   adding the unplaced copy most co-occurring with the experts already on the rank (the
   sum of their co-occurrence rows; an expert with itself counts -1e9), while the rank
   stays under ``alpha`` of its slots and of the mean rank load;
3. the copies left, highest load per copy first, each to the least-loaded rank with a free
   slot.

Ranks are GPUs in id order; it sees GPUs, not nodes.
"""

from __future__ import annotations

import heapq

import numpy as np

from placer import Placement, Topology
from placer.graph import TraceSummary
from placer.solvers.replicas import replica_counts

__all__ = ["TRTLLM_ALPHA", "cooccurrence_ranks", "trtllm_cooccurrence_placement"]

#: the example's default share of a rank's slots and of the mean load filled by co-occurrence
TRTLLM_ALPHA = 0.8


def cooccurrence_ranks(loads: np.ndarray, copies: np.ndarray, cooccurrence: np.ndarray, ranks: int,
                       alpha: float = TRTLLM_ALPHA) -> np.ndarray:
    """Experts held by each rank: loads [E], copies [E], cooccurrence [E, E] -> [ranks, slots per rank].
    Ties go to the lower expert id."""
    per_copy = loads / copies
    by_load = np.argsort(-per_copy, kind="stable")
    slots = int(copies.sum()) // ranks
    target = float(loads.sum()) / ranks
    scores = cooccurrence.astype(np.float64)
    np.fill_diagonal(scores, -1e9)
    left = copies.astype(np.int64).copy()
    held: list[list[int]] = [[] for _ in range(ranks)]
    load = np.zeros(ranks)
    for rank in range(ranks):
        order = by_load
        while left.any():
            expert = int(order[np.argmax(left[order] > 0)])
            if len(held[rank]) + 1 > slots * alpha or load[rank] + per_copy[expert] > target * alpha:
                break
            held[rank].append(expert)
            load[rank] += per_copy[expert]
            left[expert] -= 1
            order = np.argsort(-scores[held[rank]].sum(axis=0), kind="stable")
    free = [(load[rank], rank) for rank in range(ranks) if len(held[rank]) < slots]
    heapq.heapify(free)
    for expert in by_load:
        while left[expert] > 0:
            _, rank = heapq.heappop(free)
            held[rank].append(int(expert))
            load[rank] += per_copy[expert]
            left[expert] -= 1
            if len(held[rank]) < slots:
                heapq.heappush(free, (load[rank], rank))
    return np.array(held, dtype=np.int64)


def trtllm_cooccurrence_placement(summary: TraceSummary, topology: Topology, slots_per_gpu: int | None = None,
                                  alpha: float = TRTLLM_ALPHA) -> Placement:
    """Every layer of ``summary`` placed by TensorRT-LLM's co-occurrence rule on the GPUs of
    ``topology`` with ``slots_per_gpu`` slots (default E / GPUs, which must divide)."""
    gpus, experts = topology.num_gpus, summary.num_experts
    slots = slots_per_gpu or experts // gpus
    if slots * gpus < experts or (slots_per_gpu is None and experts % gpus):
        raise ValueError(f"{gpus} GPUs x {slots} slots do not hold {experts} experts with every slot filled")
    rows = []
    for part, loads in zip(summary.layers, summary.loads):
        copies = replica_counts(loads, slots * gpus)
        rows.append(cooccurrence_ranks(loads, copies, part.coactivation.toarray(), gpus, alpha).ravel())
    return Placement(np.stack(rows), experts, topology.gpus_per_node, slots, {"solver": {"name": "trtllm-cooc"}})
