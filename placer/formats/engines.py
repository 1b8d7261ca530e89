"""Placement exports in the formats serving and training engines load.

Every function takes a :class:`Placement` (``phy2log: [layers, gpus * slots_per_gpu]``,
-1 = empty slot, slot ``p`` on GPU ``p // slots_per_gpu``) and returns plain data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from placer.atomic import atomic_output, write_text_atomic
from placer.checks import check_type
from placer.errors import InputError
from placer.formats.layers import placement_layer_ids
from placer.formats.placement_io import write_placement
from placer.placement import EMPTY, Placement, contiguous_gpus
from placer.topology import Model

__all__ = [
    "OUTPUT_FORMATS", "EngineMap", "dumps_trtllm_yaml", "engine_map", "expert_permutation", "invert_permutation",
    "sglang_launch", "to_eplb", "to_sglang", "to_trtllm", "to_vllm_expert_map", "to_vllm_rank_map", "vllm_launch",
    "write_eplb", "write_output",
]


@dataclass(frozen=True)
class EngineMap:
    """A placement as an engine with static expert placement loads it.

    rows: [moe_layers, ep_size * slots_per_gpu] expert of every slot, live GPUs only,
        in rank order. layer_ids: [moe_layers] decoder-layer index of each row.
    rank_gpus: [ep_size] placer GPU id serving as EP rank r (GPUs out of service are
        left out, so the engine never sees them). num_redundant: slots - experts.
    """

    rows: np.ndarray
    layer_ids: np.ndarray
    rank_gpus: np.ndarray
    num_experts: int

    @property
    def ep_size(self) -> int:
        return len(self.rank_gpus)

    @property
    def num_slots(self) -> int:
        return int(self.rows.shape[1])

    @property
    def num_redundant(self) -> int:
        return self.num_slots - self.num_experts


def engine_map(placement: Placement, model: Model | None, field: str) -> EngineMap:
    """The slots of the GPUs in service, for engines that need every slot filled.

    Raises unless every live slot holds an expert, every expert has a slot and
    ``model`` fits. GPUs out of service are dropped from the map (never filled with
    placeholders: an engine would count a placeholder as a real copy and dispatch
    tokens to it), so the engine is launched with EP size = live GPUs.
    """
    check_type(placement, "placement", Placement)
    check_type(model, "model", Model, optional=True)
    if model is not None and (model.num_experts, model.num_moe_layers) != (
        placement.num_experts, placement.num_layers
    ):
        raise InputError(
            None, field,
            f"placement has {placement.num_layers} MoE layers of {placement.num_experts} experts; "
            f"model {model.name} has {model.num_moe_layers} of {model.num_experts}",
        )
    live = placement.live_gpus()
    per_gpu = placement.phy2log.reshape(placement.num_layers, placement.num_gpus, placement.slots_per_gpu)
    rows = per_gpu[:, live].reshape(placement.num_layers, -1)
    slot_of = (live[:, None] * placement.slots_per_gpu + np.arange(placement.slots_per_gpu)).ravel()
    if (rows < 0).any():
        layer, slot = np.argwhere(rows < 0)[0]
        raise InputError(
            None, field,
            f"the engine needs every slot filled, but layer {layer} slot {slot_of[slot]} is empty "
            f"({placement.num_experts} experts on {rows.shape[1]} live slots); "
            "choose slots_per_gpu so that GPUs x slots equals the expert count",
        )
    missing = np.argwhere(placement.expert_copies() == 0)
    if missing.size:
        layer, expert = missing[0]
        raise InputError(None, field, f"layer {layer} expert {expert} has no slot")
    return EngineMap(rows.copy(), placement_layer_ids(placement, model, field), live, placement.num_experts)


def _hidden_layers(mapped: EngineMap, model: Model | None) -> int:
    return model.num_hidden_layers if model is not None else int(mapped.layer_ids.max()) + 1


def to_sglang(placement: Placement, model: Model | None = None) -> dict:
    """SGLang ``--init-expert-location`` JSON: ``{"physical_to_logical_map": [[...]]}``.

    One row per decoder layer (``num_hidden_layers`` rows, as SGLang's
    ``ExpertLocationMetadata`` has; the model's, or the largest traced layer + 1):
    MoE layers at their decoder-layer ids, every other row trivial (slot p -> p mod E,
    as SGLang's ``init_trivial``). Only the GPUs in service have slots: launch with
    :func:`sglang_launch`'s flags. The document holds that one key only (SGLang passes
    the keys to ``init_by_mapping`` as arguments). Upstream read:
    ``python/sglang/srt/eplb/expert_location.py`` at 01fec5c2.
    """
    mapped = engine_map(placement, model, "to_sglang")
    rows = np.tile(np.arange(mapped.num_slots) % placement.num_experts, (_hidden_layers(mapped, model), 1))
    rows[mapped.layer_ids] = mapped.rows
    return {"physical_to_logical_map": rows.tolist()}


def sglang_launch(placement: Placement, model: Model | None, path: str) -> list[str]:
    """What to launch SGLang with for :func:`to_sglang`'s file at ``path``: lines for the user.

    SGLang derives slots = logical experts + ``--ep-num-redundant-experts`` and needs
    them divisible by ``--ep-size``; EP rank r runs on placer GPU ``rank_gpus[r]``. The
    static dispatch needs an all-to-all backend (SGLang refuses it with the default
    ``--moe-a2a-backend none`` since PR #32962; DeepEP sets the EP size to ``--tp-size``),
    and its node tier reads ``--nnodes`` (:func:`placer.dispatch.sglang_static_map`).
    """
    mapped = engine_map(placement, model, "to_sglang")
    nodes = placement.num_gpus // placement.gpus_per_node
    flags = (f"launch SGLang with: --init-expert-location {path} --ep-num-redundant-experts "
             f"{mapped.num_redundant} --moe-a2a-backend deepep --tp-size {mapped.ep_size} --ep-size "
             f"{mapped.ep_size} --nnodes {nodes} --ep-dispatch-algorithm static")
    lines = [flags, "without an all-to-all backend (--moe-a2a-backend none) SGLang refuses static dispatch and "
                    "serves this file with its dynamic rule: replay it with --rule sglang-dynamic"]
    if model is None:
        lines.append(f"the map has {_hidden_layers(mapped, model)} decoder-layer rows (largest MoE layer + 1); "
                     "SGLang needs num_hidden_layers rows: pass --model to check")
    return lines + _rank_note(placement, mapped)


def _rank_note(placement: Placement, mapped: EngineMap) -> list[str]:
    if not placement.excluded_gpus:
        return []
    note = (f"GPUs {placement.excluded_gpus} are out of service and absent from the map: EP ranks "
            f"0..{mapped.ep_size - 1} must run on placer GPUs {mapped.rank_gpus.tolist()} in that order")
    return [note]


def to_trtllm(placement: Placement, model: Model | None = None) -> dict:
    """TensorRT-LLM static MoE load-balancer config (``moe_config.load_balancer`` YAML).

    ``{"num_slots": S, "layer_updates_per_iter": 0, "initial_global_assignments":
    {layer_index: [S expert ids]}}``; slot j of a layer holds expert ``[j]`` and
    rank r owns slots r*S/EP .. (r+1)*S/EP - 1, the same slot order as ``phy2log``
    restricted to the GPUs in service (EP size = live GPUs).
    ``layer_index`` is the model's decoder-layer index (the MoE module's
    ``layer_idx``): the trace's recorded layer ids, else ``first_dense_layers`` +
    MoE layer. Upstream: ``MoeLoadBalancerConfig.get_layer_initial_global_assignments``
    (tensorrt_llm/llmapi/llm_args.py) is called with the MoE module's
    ``layer_idx``; the static-EPLB accuracy test keys layers
    ``range(first_k_dense_replace, num_hidden_layers)``
    (tests/integration/defs/accuracy/test_llm_api_pytorch.py) and
    examples/wide_ep/ep_load_balancer/README.md shows DeepSeek-R1 keys 3..60.
    TensorRT-LLM asserts every expert appears in every row, so no slot may be empty.
    """
    mapped = engine_map(placement, model, "to_trtllm")
    return {
        "num_slots": mapped.num_slots,
        "layer_updates_per_iter": 0,
        "initial_global_assignments": {int(layer): row.tolist() for layer, row in zip(mapped.layer_ids, mapped.rows)},
    }


def to_vllm_expert_map(placement: Placement, model: Model | None = None) -> list[list[int]]:
    """EXPERIMENTAL: vLLM ``eplb_config.initial_expert_map_path`` JSON (open PR vllm-project/vllm#49572).

    As the PR defines it today: a list with one list per MoE layer (in MoE-layer order),
    each mapping physical slot -> logical expert; slots = logical experts +
    ``num_redundant_experts``, divisible by the EP size; every logical expert in every
    layer. Only the GPUs in service have slots (see :func:`vllm_launch`).
    """
    return engine_map(placement, model, "to_vllm").rows.tolist()


def to_vllm_rank_map(placement: Placement, model: Model | None = None) -> dict:
    """EXPERIMENTAL: vLLM ``--expert-placement-file`` JSON (open PR vllm-project/vllm#34811).

    ``{"expert_to_ep_rank": [rank of expert 0, 1, ...]}``: one map for every layer, one
    copy per expert. So the placement must hold each expert once and on the same GPU
    in every layer; otherwise :class:`InputError` (use ``--format vllm``, PR #49572,
    which wins where the two proposals differ). Ranks count the GPUs in service.
    """
    field = "to_vllm_rank_map"
    mapped = engine_map(placement, model, field)
    copies = placement.expert_copies()
    if (copies != 1).any():
        layer, expert = np.argwhere(copies != 1)[0]
        raise InputError(None, field, f"layer {layer} expert {expert} has {copies[layer, expert]} copies; "
                         "--expert-placement-file holds one rank per expert (use --format vllm for replicas)")
    slots = placement.slots_per_gpu
    rank = np.empty((placement.num_layers, placement.num_experts), dtype=np.int64)
    for layer, row in enumerate(mapped.rows):
        rank[layer, row] = np.arange(len(row)) // slots
    differs = np.flatnonzero((rank != rank[:1]).any(axis=1))
    if differs.size:
        layer = int(differs[0])
        expert = int(np.flatnonzero(rank[layer] != rank[0])[0])
        raise InputError(None, field, f"expert {expert} sits on EP rank {rank[0, expert]} in layer 0 but "
                         f"{rank[layer, expert]} in layer {layer}; --expert-placement-file applies one map to "
                         "every layer (use --format vllm for per-layer placements)")
    return {"expert_to_ep_rank": rank[0].tolist()}


def vllm_launch(placement: Placement, model: Model | None, path: str, output_format: str) -> list[str]:
    """Launch flags for the vLLM files: both proposals are unmerged PRs, and released vLLM
    (checked through 0.34.0) refuses their flags, so the lines say a build with the PR is needed."""
    mapped = engine_map(placement, model, output_format)
    if output_format == "vllm-ranks":
        pr, flags = 34811, (f"--enable-expert-parallel --expert-placement-strategy custom "
                            f"--expert-placement-file {path}")
    else:
        config = json.dumps({"num_redundant_experts": mapped.num_redundant, "initial_expert_map_path": path})
        pr, flags = 49572, f"--enable-expert-parallel --enable-eplb --eplb-config '{config}'"
    line = (f"launch a vLLM build with PR #{pr} (released vLLM, through 0.34.0, refuses these flags) with: "
            f"{flags} (EP size {mapped.ep_size})")
    return [line, *_rank_note(placement, mapped)]


def dumps_trtllm_yaml(doc: dict) -> str:
    """YAML text of a :func:`to_trtllm` document: scalars, then one flow list per layer.

    A fixed emitter rather than PyYAML: the schema is flat (int scalars and an
    int -> int-list mapping), the output is byte-identical everywhere, and the
    integer keys stay integers when TensorRT-LLM reads the file with ``yaml.safe_load``.
    """
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {int(k)}: [{', '.join(map(str, map(int, row)))}]" for k, row in value.items()]
        else:
            lines.append(f"{key}: {int(value)}")
    return "\n".join(lines) + "\n"


def to_eplb(placement: Placement) -> dict[str, np.ndarray]:
    """The EPLB triple, as DeepSeek's ``rebalance_experts`` returns it.

    Returns phy2log: [layers, slots] (-1 kept for empty slots),
    log2phy: [layers, experts, max copies] slots of each expert in increasing
    slot order, -1 padded, and logcnt: [layers, experts] copies per expert.
    """
    check_type(placement, "placement", Placement)
    phy2log = placement.phy2log.astype(np.int64)
    logcnt = placement.expert_copies()
    layers = placement.num_layers
    max_copies = max(int(logcnt.max()), 1)
    log2phy = np.full((layers, placement.num_experts, max_copies), EMPTY, dtype=np.int64)
    for layer, row in enumerate(phy2log):
        slots = np.flatnonzero(row >= 0)
        slots = slots[np.argsort(row[slots], kind="stable")]
        experts = row[slots]
        rank = np.arange(len(slots)) - np.searchsorted(experts, experts, side="left")
        log2phy[layer, experts, rank] = slots
    return {"phy2log": phy2log, "log2phy": log2phy, "logcnt": logcnt}


def write_eplb(placement: Placement, path: str | Path, model: Model | None = None) -> None:
    """Write :func:`to_eplb`'s arrays to ``path`` as an uncompressed .npz, atomically, plus
    ``layer_ids: [layers]`` the decoder-layer index of each row (the model's numbering)."""
    layer_ids = placement_layer_ids(placement, model, "write_eplb")
    with atomic_output(path, "wb") as handle:
        np.savez(handle, **to_eplb(placement), layer_ids=layer_ids)


def expert_permutation(placement: Placement, model: Model | None = None) -> np.ndarray:
    """Expert ids that make an engine's contiguous ownership realise the placement.

    Returns perm: [layers, experts]; contiguous position i (GPU r owns positions
    r*E/P .. (r+1)*E/P - 1; vLLM's ``linear`` strategy gives the first E mod P
    GPUs one more) must hold logical expert ``perm[l, i]``. Possible only when no
    expert is replicated or missing and GPU r holds exactly as many experts as
    contiguous ownership gives it; otherwise :class:`InputError`. With ``model``
    and group-limited routing (DeepSeek-V3 ``n_group``/``topk_group``), every
    block of E/G positions must also hold one whole expert group.

    Recipe for Megatron-Core and vLLM (row l is decoder layer ``layer_ids[l]``, written
    beside the permutation: the trace's recorded ids, else ``first_dense_layers + l``),
    at load time, for every MoE layer:

    - Router: gate weight ``W [experts, hidden]`` becomes ``W[perm[l]]``, and
      so do per-expert router vectors (``e_score_correction_bias`` /
      ``expert_bias [experts]``); router output column i is then logical
      expert ``perm[l, i]``.
    - Experts: position i loads the weights (gate, up, down projections and
      their scales) of checkpoint expert ``perm[l, i]``, i.e. rename
      ``experts.{perm[l, i]}.*`` to ``experts.{i}.*``. Shared experts are unchanged.
    - The top-k ids the engine routes with are positions: logical id =
      ``perm[l, ids]``; a logical id e sits at position ``inv[l, e]`` with
      ``inv = invert_permutation(perm)``. Per-position statistics (tokens per
      expert, EPLB loads) map back as ``logical_load = position_load[inv[l]]``.
    - To save a checkpoint trained in this layout, apply the inverse:
      checkpoint expert e (and router row e) comes from position ``inv[l, e]``.
    """
    check_type(placement, "placement", Placement)
    check_type(model, "model", Model, optional=True)
    field = "expert_permutation"
    layers, experts, gpus = placement.num_layers, placement.num_experts, placement.num_gpus
    copies = placement.expert_copies()
    wrong = np.argwhere(copies != 1)
    if wrong.size:
        layer, expert = wrong[0]
        raise InputError(
            None, field,
            f"layer {layer} expert {expert} has {copies[layer, expert]} copies; contiguous ownership "
            "holds every expert exactly once, so a permutation cannot realise replicas; "
            "export for SGLang, TensorRT-LLM or EPLB instead",
        )
    owned = np.bincount(contiguous_gpus(experts, gpus), minlength=gpus)
    counts = placement.gpu_expert_counts()
    uneven = np.argwhere(counts != owned)
    if uneven.size:
        layer, gpu = uneven[0]
        raise InputError(
            None, field,
            f"layer {layer} GPU {gpu} holds {counts[layer, gpu]} experts but contiguous ownership of "
            f"{experts} experts on {gpus} GPUs gives it {owned[gpu]}; a permutation cannot change "
            "how many experts a GPU owns",
        )
    perm = placement.phy2log[placement.phy2log >= 0].reshape(layers, experts)
    if model is not None and 0 < model.groups_per_token < model.num_groups:
        group = (perm // (experts // model.num_groups)).reshape(layers, model.num_groups, -1)
        split = np.argwhere((group != group[:, :, :1]).any(axis=2))
        if split.size:
            layer, block = split[0]
            raise InputError(
                None, field,
                f"layer {layer} positions of group {block} hold experts of groups "
                f"{sorted(set(group[layer, block].tolist()))}; {model.name} routes to "
                f"{model.groups_per_token} of {model.num_groups} contiguous expert groups, "
                "so each block of positions must hold one whole group (place with keep_groups)",
            )
    return perm


def invert_permutation(perm: np.ndarray) -> np.ndarray:
    """Row-wise inverse: perm [layers, experts] -> inv [layers, experts], inv[l, perm[l, i]] = i."""
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.arange(perm.shape[1])[None, :], axis=1)
    return inv


OUTPUT_FORMATS = ("placer", "sglang", "trtllm", "eplb", "permutation", "vllm", "vllm-ranks")


def write_output(placement: Placement, path: str | Path, output_format: str,
                 model: Model | None = None) -> list[str]:
    """Write ``placement`` atomically in one of :data:`OUTPUT_FORMATS`; return what to tell the
    user (the engine's launch flags), one line each."""
    if output_format == "placer":
        write_placement(placement, path)
    elif output_format == "sglang":
        write_text_atomic(path, json.dumps(to_sglang(placement, model)) + "\n")
        return sglang_launch(placement, model, str(path))
    elif output_format == "trtllm":
        write_text_atomic(path, dumps_trtllm_yaml(to_trtllm(placement, model)))
        mapped = engine_map(placement, model, "to_trtllm")
        return [f"TensorRT-LLM: use as moe_config.load_balancer with EP size {mapped.ep_size}",
                *_rank_note(placement, mapped)]
    elif output_format == "vllm":
        write_text_atomic(path, json.dumps(to_vllm_expert_map(placement, model)) + "\n")
        return vllm_launch(placement, model, str(path), output_format)
    elif output_format == "vllm-ranks":
        write_text_atomic(path, json.dumps(to_vllm_rank_map(placement, model)) + "\n")
        return vllm_launch(placement, model, str(path), output_format)
    elif output_format == "eplb":
        write_eplb(placement, path, model)
    elif output_format == "permutation":
        permutation = expert_permutation(placement, model)
        layer_ids = placement_layer_ids(placement, model, "expert_permutation").tolist()
        write_text_atomic(path, json.dumps({"expert_permutation": permutation.tolist(), "layer_ids": layer_ids}) + "\n")
    else:
        raise InputError(None, "output_format", f"expected one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    return []
