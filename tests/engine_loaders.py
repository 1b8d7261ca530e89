"""Re-implementations of the engines' placement loaders, for the contract tests.

Written here from the engines' documented behaviour (never calling placer's own
export or dispatch code, so a contract test can fail):

- SGLang ``python/sglang/srt/eplb/expert_location.py`` (release 0.5.23, with PRs #9849 and
  #10874; run with an all-to-all backend, as ``place`` prints):
  ``compute_initial_expert_location_metadata`` reads the JSON and calls
  ``ExpertLocationMetadata.init_by_mapping(server_args, model_config, **doc, moe_ep_rank=r)``
  (so the document's keys are keyword arguments); ``_init_common`` sets physical experts =
  logical + ``ep_num_redundant_experts`` and asserts divisibility by ``ep_size``;
  ``_compute_logical_to_all_physical_map`` lists, per layer and logical expert, the
  physical ids holding it in ascending order, then replaces the list by rank r's nearest
  copy when r has one (``_find_nearest_expert``: the only copy; else the first on r (GPU of
  physical p = p // local slots); else the first on r's node (node of p = p // (local
  slots x ranks per node), ranks per node = ep_size // nnodes) when some but not all
  copies are there). ``compute_logical_to_rank_dispatch_physical_map``
  (``--ep-dispatch-algorithm static``), run by rank r on that list with a fresh
  ``random.Random(42)``, goes layer by layer (every decoder layer) and expert by expert:
  every rank takes its nearest copy among the candidates; the ranks without one get a
  "fair" draw: every candidate ``missing // candidates`` times plus ``random.sample`` of
  the remainder, shuffled, assigned in rank order; r keeps its own entry.
- TensorRT-LLM ``moe_config.load_balancer``: ``num_slots``, and
  ``initial_global_assignments`` keyed by the MoE module's ``layer_idx``; rank r owns
  slots r*S/EP .. (r+1)*S/EP - 1; every expert must appear in every row.
- vLLM PR #49572 ``initial_expert_map_path``: one list (all MoE layers) or one list per
  MoE layer, physical slot -> logical expert; physical = logical + num_redundant_experts,
  divisible by the EP size; every logical expert covered. PR #34811
  ``--expert-placement-file``: ``{"expert_to_ep_rank": [...]}``, one EP rank per expert.
"""

from __future__ import annotations

import random
import shlex

import numpy as np


def flag(lines: list[str], name: str) -> str:
    """The value after ``name`` in the printed launch line."""
    words = shlex.split(next(line for line in lines if name in line))
    return words[words.index(name) + 1]


def sglang_metadata(doc: dict, num_logical: int, num_hidden_layers: int, ep_size: int, redundant: int,
                    nnodes: int = 1) -> dict:
    """What SGLang builds from an ``--init-expert-location`` document (``--nnodes`` ``nnodes``).

    Returns p2l [layers, physical], copies [layers, logical] (logical_to_all_physical_map_num_valid),
    all_physical[layer][expert] -> physical ids, dispatch [ranks, layers, logical] -> physical id.
    """
    assert set(doc) == {"physical_to_logical_map"}, "init_by_mapping(**doc) takes this one keyword"
    p2l = np.asarray(doc["physical_to_logical_map"], dtype=np.int64)
    physical = num_logical + redundant
    assert physical % ep_size == 0, "num_physical_experts % ep_size == 0"
    assert p2l.shape == (num_hidden_layers, physical), (p2l.shape, num_hidden_layers, physical)
    assert p2l.min() >= 0 and p2l.max() < num_logical
    local = physical // ep_size
    all_physical = [[[] for _ in range(num_logical)] for _ in range(num_hidden_layers)]
    for layer in range(num_hidden_layers):
        for p in range(physical):
            all_physical[layer][int(p2l[layer, p])].append(p)
    per_node = ep_size // nnodes

    def nearest(candidates: list[int], rank: int) -> int:
        if len(candidates) == 1:
            return candidates[0]
        here = [p for p in candidates if p // local == rank]
        if here:
            return here[0]
        if per_node:
            node = [p for p in candidates if p // (local * per_node) == rank // per_node]
            if 0 < len(node) < len(candidates):
                return node[0]
        return -1

    dispatch = np.full((ep_size, num_hidden_layers, num_logical), -1, dtype=np.int64)
    for me in range(ep_size):  # every rank computes the whole table, then keeps its own row
        rng = random.Random(42)
        for layer in range(num_hidden_layers):
            for expert in range(num_logical):
                full = all_physical[layer][expert]
                assert full, f"layer {layer} logical expert {expert} has no physical copy"
                mine = nearest(full, me)
                candidates = [mine] if mine >= 0 else full
                table = [nearest(candidates, rank) for rank in range(ep_size)]
                missing = [rank for rank in range(ep_size) if table[rank] < 0]
                if missing:
                    whole, rest = divmod(len(missing), len(candidates))
                    picks = candidates * whole + rng.sample(candidates, k=rest)
                    rng.shuffle(picks)
                    for rank, pick in zip(missing, picks):
                        table[rank] = pick
                dispatch[me, layer, expert] = table[me]
    copies = np.array([[len(c) for c in row] for row in all_physical])
    return {"p2l": p2l, "copies": copies, "all_physical": all_physical, "dispatch": dispatch, "local": local}


def trtllm_holdings(doc: dict, num_experts: int, ep_size: int, layer_ids: list[int]) -> dict[int, np.ndarray]:
    """layer_idx -> [ranks, slots per rank] experts, as TensorRT-LLM's static load balancer assigns them."""
    slots = doc["num_slots"]
    table = doc["initial_global_assignments"]
    assert sorted(table) == layer_ids, (sorted(table), layer_ids)
    assert slots % ep_size == 0
    result = {}
    for layer in layer_ids:
        row = np.asarray(table[layer])
        assert len(row) == slots
        assert set(row.tolist()) == set(range(num_experts)), "every expert must appear in every row"
        result[layer] = row.reshape(ep_size, slots // ep_size)
    return result


def vllm_initial_map(doc: list, num_logical: int, num_moe_layers: int, ep_size: int, redundant: int) -> np.ndarray:
    """PR #49572: the per-MoE-layer physical -> logical map [moe_layers, physical] vLLM commits."""
    rows = np.asarray(doc if isinstance(doc[0], list) else [doc] * num_moe_layers, dtype=np.int64)
    physical = num_logical + redundant
    assert physical % ep_size == 0
    assert rows.shape == (num_moe_layers, physical), (rows.shape, num_moe_layers, physical)
    for layer, row in enumerate(rows):
        assert row.min() >= 0 and row.max() < num_logical
        assert len(set(row.tolist())) == num_logical, f"layer {layer} misses a logical expert"
    return rows


def vllm_rank_map(doc: dict, num_experts: int, ep_size: int) -> np.ndarray:
    """PR #34811: the EP rank of every expert [experts] (all layers)."""
    ranks = np.asarray(doc["expert_to_ep_rank"])
    assert ranks.shape == (num_experts,) and ranks.min() >= 0 and ranks.max() < ep_size
    return ranks
