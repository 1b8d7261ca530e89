"""Dispatch rules: which replica of an expert serves each (token, expert) pair.

Without replicas every rule sends a pair to the expert's only GPU. With
replicas (an expert in several slots) the rule decides, and every figure
names its rule:

- ``nearest``: tokens in trace order, each token's experts in top-k order;
  take the replica on the source GPU; else the replica with the least load so
  far (per layer) on the source node; else the least-loaded replica on a node
  the token already reaches through its earlier experts; else the
  least-loaded replica. Load = pairs the replica has served so far in this
  layer; ties go to the lowest GPU id (then the lowest slot).
- ``sglang-static``: SGLang's static rule: a fixed map (source GPU, expert) ->
  replica: the only replica; else the first on the source GPU; else the first
  on the source node when that narrows the choice; else a "fair" seeded choice
  (each replica used about equally often by the GPUs without a near one),
  drawn per GPU from Python's ``random.Random(42)`` over layers, then experts,
  in order (:func:`sglang_static_map`).
- ``sglang-dynamic``: SGLang's dynamic rule as it runs without an all-to-all backend
  (``--moe-a2a-backend none``, where it is SGLang's default for a placement file since PR
  #32962): a pair goes to copy ``row mod copies`` of its expert's copies in slot order,
  ``row`` = the token's row in its batch of ``batch_tokens`` (counted per layer from the
  first token replayed), whatever the source (``_topk_ids_logical_to_physical_dynamic``,
  ``rank_invariant``, SGLang 0.5.23).
- ``lp``: SGLang's LP rule (``--ep-dispatch-algorithm=lp``, DeepSeek's LPLB): per batch of
  ``batch_tokens`` consecutive tokens (counted per layer from the first token replayed), each
  expert's pairs are split over its copies to minimise the busiest GPU, whatever the
  tokens' sources (:mod:`placer.lp_dispatch`).
"""

from __future__ import annotations

import random

import numba
import numpy as np

from placer.lp_dispatch import lp_route
from placer.placement import Placement, decoder_layer_ids
from placer.request import LP_BATCH_TOKENS, RULES

__all__ = ["LP_BATCH_TOKENS", "RULES", "Dispatcher", "replica_slots", "sglang_static_map"]


def replica_slots(phy2log: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Slots of every expert's replicas in slot order.

    phy2log: [slots] one layer. Returns log2phy: [experts, max copies] (-1 padded) and copies: [experts].
    """
    held = np.flatnonzero(phy2log >= 0)
    experts = phy2log[held]
    order = np.argsort(experts, kind="stable")
    copies = np.bincount(experts, minlength=num_experts)
    log2phy = np.full((num_experts, max(int(copies.max()), 1)), -1, dtype=np.int64)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(copies) - copies, copies)
    log2phy[experts[order], rank] = held[order]
    return log2phy, copies


@numba.njit(cache=True)
def _least_loaded(candidates, count, slot_load, slot_gpu):  # pragma: no cover - compiled
    best = -1
    for c in range(count):
        slot = candidates[c]
        if best < 0 or slot_load[slot] < slot_load[best] or (
            slot_load[slot] == slot_load[best] and slot_gpu[slot] < slot_gpu[best]
        ):
            best = slot
    return best


@numba.njit(cache=True)
def _nearest_kernel(ids, src_gpu, log2phy, copies, slot_gpu, gpus_per_node, slot_load):  # pragma: no cover
    tokens, k = ids.shape
    out = np.full((tokens, k), -1, dtype=np.int64)
    reached = np.empty(k, dtype=np.int64)
    picks = np.empty(log2phy.shape[1], dtype=np.int64)
    for t in range(tokens):
        src = src_gpu[t]
        src_node = src // gpus_per_node
        n_reached = 0
        for j in range(k):
            expert = ids[t, j]
            if expert < 0:
                continue
            chosen = -1
            for c in range(copies[expert]):
                if slot_gpu[log2phy[expert, c]] == src:
                    chosen = log2phy[expert, c]
                    break
            for tier in range(3):
                if chosen >= 0:
                    break
                n = 0
                for c in range(copies[expert]):
                    node = slot_gpu[log2phy[expert, c]] // gpus_per_node
                    keep = tier == 2 or (tier == 0 and node == src_node)
                    if tier == 1:
                        for r in range(n_reached):
                            keep = keep or reached[r] == node
                    if keep:
                        picks[n] = log2phy[expert, c]
                        n += 1
                if n:
                    chosen = _least_loaded(picks, n, slot_load, slot_gpu)
            slot_load[chosen] += 1
            gpu = slot_gpu[chosen]
            out[t, j] = gpu
            node = gpu // gpus_per_node
            seen = False
            for r in range(n_reached):
                seen = seen or reached[r] == node
            if not seen:
                reached[n_reached] = node
                n_reached += 1
    return out


def _fair_choices(replicas: list[int], count: int, rng: random.Random) -> list[int]:
    """``count`` picks using each replica equally often, the remainder sampled, then shuffled."""
    whole, rest = divmod(count, len(replicas))
    picks = replicas * whole + rng.sample(replicas, k=rest)
    rng.shuffle(picks)
    return picks


def _nearest_copies(log2phy: np.ndarray, copies: np.ndarray, local: int, per_node: int, ranks: int) -> np.ndarray:
    """Each EP rank's nearest copy of every expert, as SGLang picks it: the only copy; else the
    first on the rank; else, when some but not all copies are on the rank's node, the first
    there; else -1. log2phy: [E, C] slots in EP-rank order (-1 padded); copies: [E];
    local: slots per rank; per_node: ranks per node (0: no node tier). Returns [E, ranks]."""
    near = np.full((len(copies), ranks), -1, dtype=np.int64)
    rows = np.arange(len(copies))
    for c in range(log2phy.shape[1] - 1, -1, -1):  # the lowest slot written last wins
        held = copies > c
        near[rows[held], log2phy[held, c] // local] = log2phy[held, c]
    near[copies == 1] = log2phy[copies == 1, :1]
    if per_node:
        node_of_rank = np.arange(ranks) // per_node
        slot_node = np.where(log2phy >= 0, log2phy // (local * per_node), -1)
        on_node = slot_node[:, :, None] == node_of_rank[None, None, :]  # [E, C, ranks]
        count = on_node.sum(axis=1)
        first = log2phy[rows[:, None], on_node.argmax(axis=1)]
        narrows = (near < 0) & (count > 0) & (count < copies[:, None])
        near[narrows] = first[narrows]
    return near


def sglang_static_map(placement: Placement) -> np.ndarray:
    """SGLang's static dispatch map: [layers, gpus, experts] -> serving slot (-1 rows: GPUs out
    of service).

    Computed as SGLang computes it from placer's export (``--ep-dispatch-algorithm static``;
    ``python/sglang/srt/eplb/expert_location.py`` since PRs #9849 and #10874): over the GPUs in
    service only (EP rank r = r-th live GPU; ``--nnodes`` = the topology's nodes, so a rank's
    node is r // (ranks // nodes)), and over every decoder layer in order. Each rank takes its
    nearest copy (:func:`_nearest_copies`); a rank with none draws from its own
    ``random.Random(42)``: every copy ``k // copies`` times plus a sample of the remainder,
    shuffled, over the k ranks without a nearest copy, and takes its place among them. A
    rank's generator advances only where it has no nearest copy, the dense layers' trivial
    rows (slot p -> p mod E) included.
    """
    live = placement.live_gpus()
    ranks, local, experts = len(live), placement.slots_per_gpu, placement.num_experts
    per_node = ranks // (placement.num_gpus // placement.gpus_per_node)
    per_gpu = placement.phy2log.reshape(placement.num_layers, placement.num_gpus, local)
    rows = per_gpu[:, live].reshape(placement.num_layers, -1)
    slot_of = (live[:, None] * local + np.arange(local)).ravel()
    trivial = np.arange(rows.shape[1]) % experts
    decoder_rows, moe_index = [], []
    decoder = 0
    for layer, layer_id in enumerate(decoder_layer_ids(placement)):
        decoder_rows += [trivial] * (int(layer_id) - decoder) + [rows[layer]]
        moe_index.append(len(decoder_rows) - 1)
        decoder = int(layer_id) + 1
    tables = [replica_slots(row, experts) for row in decoder_rows]
    nearest = [_nearest_copies(log2phy, copies, local, per_node, ranks) for log2phy, copies in tables]
    result = np.full((placement.num_layers, placement.num_gpus, experts), -1, dtype=np.int64)
    for rank in range(ranks):
        rng = random.Random(42)
        chosen = []
        for (log2phy, copies), near in zip(tables, nearest):
            pick = near[:, rank].copy()
            for e in np.flatnonzero(pick < 0):
                without = np.flatnonzero(near[e] < 0)
                draws = _fair_choices(log2phy[e, : copies[e]].tolist(), len(without), rng)
                pick[e] = draws[int(np.searchsorted(without, rank))]
            chosen.append(pick)
        result[:, live[rank]] = slot_of[np.stack([chosen[i] for i in moe_index])]
    return result


class Dispatcher:
    """Maps (token, expert) pairs of one placement to GPUs, layer by layer, keeping per-layer state."""

    def __init__(self, placement: Placement, rule: str = "nearest", batch_tokens: int = LP_BATCH_TOKENS) -> None:
        self.placement = placement
        self.rule = rule
        self.batch_tokens = batch_tokens
        self.routed = np.zeros(placement.num_layers, dtype=np.int64)  # tokens routed so far per layer
        self.slot_gpu = np.arange(placement.phy2log.shape[1]) // placement.slots_per_gpu
        self.tables = [replica_slots(row, placement.num_experts) for row in placement.phy2log]
        self.has_replicas = any(int(copies.max()) > 1 for _, copies in self.tables)
        self.slot_load = np.zeros(placement.phy2log.shape, dtype=np.int64)
        self.static = sglang_static_map(placement) if self.has_replicas and rule == "sglang-static" else None

    def route(self, layer: int, ids: np.ndarray, src_gpu: np.ndarray) -> np.ndarray:
        """GPU serving each pair: ids [tokens, k] (-1 padding) -> [tokens, k] (-1 for padding)."""
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        log2phy, copies = self.tables[layer]
        if not self.has_replicas:
            slots = log2phy[safe, 0]
        elif self.static is not None:
            slots = self.static[layer][src_gpu[:, None], safe]
        elif self.rule == "lp":
            slots = self._lp_slots(layer, ids)
        elif self.rule == "sglang-dynamic":
            row = (self.routed[layer] + np.arange(len(ids))) % self.batch_tokens
            slots = log2phy[safe, row[:, None] % copies[safe]]
        else:
            gpus = _nearest_kernel(
                ids.astype(np.int64), src_gpu.astype(np.int64), log2phy, copies,
                self.slot_gpu, self.placement.gpus_per_node, self.slot_load[layer],
            )
            self.routed[layer] += len(ids)
            return gpus
        self.routed[layer] += len(ids)
        self.slot_load[layer] += np.bincount(slots[valid], minlength=self.slot_load.shape[1])
        return np.where(valid, self.slot_gpu[slots], -1)

    def _lp_slots(self, layer: int, ids: np.ndarray) -> np.ndarray:
        """Slots of the ``lp`` rule for one chunk of a layer, cut into batches of
        ``batch_tokens`` counted from the layer's first token (a batch straddling two
        chunks is balanced in two parts). ids: [tokens, k] -> [tokens, k] (-1 padding)."""
        log2phy, copies = self.tables[layer]
        first = int(self.routed[layer])
        cuts = np.arange((first // self.batch_tokens + 1) * self.batch_tokens, first + len(ids),
                         self.batch_tokens) - first
        parts = []
        for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(ids)]):
            batch = (first + start) // self.batch_tokens
            parts.append(lp_route(ids[start:stop], log2phy, copies, self.slot_gpu, self.placement.num_gpus,
                                  seed=(layer << 32) | batch))
        return np.concatenate(parts) if parts else np.empty(ids.shape, dtype=np.int64)
