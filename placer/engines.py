"""Placement exports in the formats serving and training engines load."""

from __future__ import annotations

import numpy as np

from placer.errors import InputError
from placer.placement import Placement
from placer.topology import Model


def to_sglang(placement: Placement, model: Model | None = None) -> dict:
    """SGLang ``--init-expert-location`` JSON: ``{"physical_to_logical_map": [[...]]}``.

    One row per MoE layer (slot p on GPU p // slots_per_gpu); with ``model``,
    preceded by trivial rows (slot p -> p mod E) for its ``first_dense_layers``.
    SGLang needs every slot filled.
    """
    if (placement.phy2log < 0).any():
        layer, slot = np.argwhere(placement.phy2log < 0)[0]
        raise InputError(
            None, "--format sglang",
            f"SGLang needs every slot filled, but layer {layer} slot {slot} is empty "
            f"({placement.num_experts} experts on {placement.phy2log.shape[1]} slots); "
            "choose --slots-per-gpu so that GPUs x slots equals the expert count",
        )
    slots = placement.phy2log.shape[1]
    dense = model.first_dense_layers if model is not None else 0
    trivial = (np.arange(slots) % placement.num_experts).tolist()
    return {"physical_to_logical_map": [trivial] * dense + placement.phy2log.tolist()}
