"""Decoder-layer numbering between engine dumps, traces and engine exports.

Engines index routing data by the model's decoder layer (``num_hidden_layers``
rows, dense layers included); placer's trace and placement rows are MoE layers
only. A trace carries the decoder-layer index of each of its layers
(``Trace.layer_ids``); this module finds the dense layers in a dump, drops
them, and maps placement rows back to decoder layers for the exports.

Dense layers in a per-token dump are *constant*: every entry the same value,
``0`` (vLLM ``routed_experts`` and SGLang ``return_routed_experts`` leave them
zero) or ``-1`` (SGLang's per_token recorder resets to ``-1``). A real MoE layer
with top-k > 1 is never constant (a token cannot choose one expert twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from placer.errors import InputError
from placer.placement import Placement, decoder_layer_ids
from placer.topology import Model

__all__ = [
    "DenseSplit",
    "check_model_layers",
    "constant_layers",
    "counts_layer_note",
    "drop_dense_layers",
    "drop_dense_rows",
    "placement_layer_ids",
    "recorded_layer_ids",
]


@dataclass(frozen=True)
class DenseSplit:
    """What :func:`drop_dense_layers` kept.

    keep: [moe_layers] indices into the dump's layer axis. layer_ids: [moe_layers] their
        decoder-layer ids (= keep when the dump holds every decoder layer). dropped: the
        dense layer ids removed. note: one sentence for the user, or "" when nothing was dropped.
    """

    keep: np.ndarray
    layer_ids: np.ndarray
    dropped: list[int]
    note: str


def constant_layers(ids: np.ndarray) -> np.ndarray:
    """Layers of ``ids: [tokens, layers, k]`` whose every entry is one value, 0 or -1: [layers] bool."""
    first = ids[:1, :, :1]
    constant = (ids == first).all(axis=(0, 2))
    return constant & np.isin(first[0, :, 0], (0, -1))


def _split(source: str, field: str, dense: np.ndarray, model: Model | None, what: str) -> DenseSplit:
    """Decide the MoE layers from a [layers] bool mask of layers that look dense."""
    layers = len(dense)
    if model is not None:
        if layers != model.num_hidden_layers:
            if layers == model.num_moe_layers and not dense.any():  # a dump of the MoE layers only
                return DenseSplit(np.arange(layers), model.first_dense_layers + np.arange(layers), [], "")
            raise InputError(source, field, f"{layers} layers; model {model.name} has {model.num_hidden_layers} "
                             f"decoder layers ({model.first_dense_layers} dense + {model.num_moe_layers} MoE)")
        expected = np.arange(layers) < model.first_dense_layers
        routed = np.flatnonzero(expected & ~dense)
        if routed.size:
            raise InputError(source, field, f"layer {int(routed[0])} holds {what}, but model {model.name} "
                             f"makes layers 0..{model.first_dense_layers - 1} dense")
        dense = expected
    keep = np.flatnonzero(~dense)
    dropped = np.flatnonzero(dense).tolist()
    if not keep.size:
        raise InputError(source, field, "every layer is dense (no routing recorded)")
    note = (f"dropped dense layers {dropped} (no {what}); kept {len(keep)} MoE layers with their "
            "decoder-layer ids" if dropped else "")
    return DenseSplit(keep, keep, dropped, note)


def drop_dense_layers(source: str, ids: np.ndarray, model: Model | None, field: str = "topk_ids") -> DenseSplit:
    """The MoE layers of a per-token dump ``ids: [tokens, num_hidden_layers, k]``.

    Without ``model``: every constant layer (see module docstring) is dense. With
    ``model``: the dump must have ``model.num_hidden_layers`` layers (or exactly its
    MoE layers, none constant), and the model's ``first_dense_layers`` are dropped;
    a layer the model calls dense that holds routing is refused.
    """
    return _split(source, field, constant_layers(ids), model, "routing decisions")


def drop_dense_rows(source: str, counts: np.ndarray, model: Model | None, field: str = "logical_count") -> DenseSplit:
    """The MoE rows of per-layer counts ``counts: [num_hidden_layers, experts]`` (dense rows are zero)."""
    return _split(source, field, ~counts.any(axis=1), model, "token counts")


def placement_layer_ids(placement: Placement, model: Model | None, field: str) -> np.ndarray:
    """Decoder-layer id of every placement row: [layers] int64 (see
    :func:`~placer.placement.decoder_layer_ids`), checked against ``model`` when given."""
    ids = decoder_layer_ids(placement, model.first_dense_layers if model is not None else None)
    if ids.shape != (placement.num_layers,):
        raise InputError(None, field, f"the placement records {ids.size} layer ids for {placement.num_layers} rows")
    if model is not None and (ids.max() >= model.num_hidden_layers or ids.min() < model.first_dense_layers):
        raise InputError(None, field, f"placement layers {_span(ids)} are not MoE layers of model {model.name} "
                         f"({model.first_dense_layers}..{model.num_hidden_layers - 1})")
    return ids


def check_model_layers(source: str, field: str, layer_ids: np.ndarray, model: Model | None) -> None:
    """Recorded MoE-layer ids [layers] must be the model's MoE layers (count and range)."""
    if model is None:
        return
    if len(layer_ids) != model.num_moe_layers or layer_ids.min() < model.first_dense_layers or \
            layer_ids.max() >= model.num_hidden_layers:
        raise InputError(source, field, f"MoE layers {_span(layer_ids)} ({len(layer_ids)}) are not model "
                         f"{model.name}'s {model.num_moe_layers} MoE layers {model.first_dense_layers}.."
                         f"{model.num_hidden_layers - 1} (pipeline-parallel stage-local ids?)")


def _span(ids: np.ndarray) -> str:
    """'3..12' for a contiguous run, else the list."""
    values = ids.tolist()
    contiguous = values == list(range(values[0], values[-1] + 1))
    return f"{values[0]}..{values[-1]}" if contiguous and len(values) > 2 else str(values)


def recorded_layer_ids(source: object) -> list[int] | None:
    """The decoder-layer ids a routing source records (``layer_ids``), as a JSON-ready list, or None."""
    ids = getattr(source, "layer_ids", None)
    return None if ids is None else [int(i) for i in ids]


def counts_layer_note(layer_ids: np.ndarray) -> str:
    """What a counts ``.npy`` loses: its rows' decoder-layer ids (exports number rows from the model)."""
    ids = np.asarray(layer_ids)
    contiguous = bool((np.diff(ids) == 1).all())
    head = f"rows are decoder layers {_span(ids)}; the counts .npy does not record them"
    if contiguous:
        return f"{head}: exports number rows from --model's first_dense_layers (must be {int(ids[0])})"
    return (f"{head} and they are not contiguous, so exports from the .npy would misnumber them: "
            "place from the dump itself")
