"""Placement exports in the formats serving and training engines load.

Every function takes a :class:`Placement` (``phy2log: [layers, gpus * slots_per_gpu]``,
-1 = empty slot, slot ``p`` on GPU ``p // slots_per_gpu``) and returns plain data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from placer.atomic import atomic_output, write_text_atomic
from placer.errors import InputError
from placer.formats.placement_io import write_placement
from placer.placement import EMPTY, Placement, contiguous_gpus
from placer.topology import Model


def _engine_rows(placement: Placement, model: Model | None, field: str) -> np.ndarray:
    """phy2log for engines that need every slot filled: [layers, slots].

    Slots of GPUs out of service hold expert 0 as a placeholder, as SGLang's
    elasticity-aware EPLB writes them (the engine never dispatches to inactive
    ranks). Raises unless every live slot holds an expert, every expert has a
    slot and ``model`` fits.
    """
    if model is not None and (model.num_experts, model.num_moe_layers) != (
        placement.num_experts, placement.num_layers
    ):
        raise InputError(
            None, field,
            f"placement has {placement.num_layers} MoE layers of {placement.num_experts} experts; "
            f"model {model.name} has {model.num_moe_layers} of {model.num_experts}",
        )
    rows = placement.phy2log.copy()
    per_gpu = rows.reshape(placement.num_layers, placement.num_gpus, placement.slots_per_gpu)
    per_gpu[:, placement.excluded_gpus] = 0
    if (rows < 0).any():
        layer, slot = np.argwhere(rows < 0)[0]
        raise InputError(
            None, field,
            f"the engine needs every slot filled, but layer {layer} slot {slot} is empty "
            f"({placement.num_experts} experts on {placement.phy2log.shape[1]} slots); "
            "choose slots_per_gpu so that GPUs x slots equals the expert count",
        )
    missing = np.argwhere(placement.expert_copies() == 0)
    if missing.size:
        layer, expert = missing[0]
        raise InputError(None, field, f"layer {layer} expert {expert} has no slot")
    return rows


def to_sglang(placement: Placement, model: Model | None = None) -> dict:
    """SGLang ``--init-expert-location`` JSON: ``{"physical_to_logical_map": [[...]]}``.

    One row per MoE layer (slot p on GPU p // slots_per_gpu); with ``model``,
    preceded by trivial rows (slot p -> p mod E) for its ``first_dense_layers``,
    so there are ``num_hidden_layers`` rows as SGLang expects. SGLang needs every
    slot filled; slots = experts + redundant experts, a multiple of the EP size.
    Slots of excluded GPUs hold expert 0 as placeholders (see :func:`_engine_rows`).
    """
    rows = _engine_rows(placement, model, "to_sglang")
    dense = model.first_dense_layers if model is not None else 0
    trivial = (np.arange(rows.shape[1]) % placement.num_experts).tolist()
    return {"physical_to_logical_map": [trivial] * dense + rows.tolist()}


def to_trtllm(placement: Placement, model: Model | None = None) -> dict:
    """TensorRT-LLM static MoE load-balancer config (``moe_config.load_balancer`` YAML).

    ``{"num_slots": S, "layer_updates_per_iter": 0, "initial_global_assignments":
    {layer_index: [S expert ids]}}``; slot j of a layer holds expert ``[j]`` and
    rank r owns slots r*S/EP .. (r+1)*S/EP - 1, the same slot order as ``phy2log``.
    ``layer_index`` is the model's decoder-layer index (the MoE module's
    ``layer_idx``), so with ``model`` the keys start at ``first_dense_layers``;
    without it they are MoE-layer indices, right only for models without dense
    layers. Upstream: ``MoeLoadBalancerConfig.get_layer_initial_global_assignments``
    (tensorrt_llm/llmapi/llm_args.py) is called with the MoE module's
    ``layer_idx``; the static-EPLB accuracy test keys layers
    ``range(first_k_dense_replace, num_hidden_layers)``
    (tests/integration/defs/accuracy/test_llm_api_pytorch.py) and
    examples/wide_ep/ep_load_balancer/README.md shows DeepSeek-R1 keys 3..60.
    TensorRT-LLM asserts every expert appears in every row, so no slot may be empty.
    """
    rows = _engine_rows(placement, model, "to_trtllm")
    first = model.first_dense_layers if model is not None else 0
    return {
        "num_slots": int(rows.shape[1]),
        "layer_updates_per_iter": 0,
        "initial_global_assignments": {first + layer: row.tolist() for layer, row in enumerate(rows)},
    }


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


def write_eplb(placement: Placement, path: str | Path) -> None:
    """Write :func:`to_eplb`'s arrays to ``path`` as an uncompressed .npz, atomically."""
    with atomic_output(path, "wb") as handle:
        np.savez(handle, **to_eplb(placement))


def expert_permutation(placement: Placement, model: Model | None = None) -> np.ndarray:
    """Expert ids that make an engine's contiguous ownership realise the placement.

    Returns perm: [layers, experts]; contiguous position i (GPU r owns positions
    r*E/P .. (r+1)*E/P - 1; vLLM's ``linear`` strategy gives the first E mod P
    GPUs one more) must hold logical expert ``perm[l, i]``. Possible only when no
    expert is replicated or missing and GPU r holds exactly as many experts as
    contiguous ownership gives it; otherwise :class:`InputError`. With ``model``
    and group-limited routing (DeepSeek-V3 ``n_group``/``topk_group``), every
    block of E/G positions must also hold one whole expert group.

    Recipe for Megatron-Core and vLLM (MoE layer l = decoder layer
    ``first_dense_layers + l``), at load time, for every MoE layer:

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


OUTPUT_FORMATS = ("placer", "sglang", "trtllm", "eplb", "permutation")


def write_output(placement: Placement, path: str | Path, output_format: str, model: Model | None = None) -> None:
    """Write ``placement`` atomically in one of :data:`OUTPUT_FORMATS`."""
    if output_format == "placer":
        write_placement(placement, path)
    elif output_format == "sglang":
        write_text_atomic(path, json.dumps(to_sglang(placement, model)) + "\n")
    elif output_format == "trtllm":
        write_text_atomic(path, dumps_trtllm_yaml(to_trtllm(placement, model)))
    elif output_format == "eplb":
        write_eplb(placement, path)
    elif output_format == "permutation":
        permutation = expert_permutation(placement, model)
        write_text_atomic(path, json.dumps({"expert_permutation": permutation.tolist()}) + "\n")
    else:
        raise InputError(None, "output_format", f"expected one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
