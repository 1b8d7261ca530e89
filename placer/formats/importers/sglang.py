"""Importer for SGLang expert-distribution dumps (``torch.save`` files).

Follows sgl-project/sglang ``python/sglang/srt/eplb/expert_distribution.py``
(``_StatAccumulator.dump`` and ``_DetailAccumulator.dump``), the files that
``/dump_expert_distribution_record`` writes under
``--expert-distribution-recorder-mode``:

- ``stat`` / ``stat_approx``: ``{"rank", "logical_count": [passes, layers,
  logical_experts] int, "average_utilization_rate_over_window"}``. Read as
  :class:`ExpertCounts` summed over passes (unused ring-buffer passes are zero).
- ``per_token``: ``{"records": [...], "last_physical_to_logical_map": [layers,
  physical] int}``, one record per forward pass with ``"rank"`` and
  ``"topk_ids_of_layer": [layers, tokens, 8]`` physical ids, ``-1`` padded.
  Read as a :class:`Trace`: ids mapped to logical experts through the map (the
  map in force at dump time, as upstream warns), ``-1`` kept as padding (tokens
  of a dense layer stay all ``-1``), passes joined in record order, ``src_rank``
  = the record's rank, and trailing top-k columns that are padding in every
  token dropped (the recorder's width 8 exceeds smaller top-k). The expert
  count is the map's largest logical id + 1 unless ``num_experts`` is given.

Files are loaded with ``torch.load(weights_only=True)``: nothing but tensors
and plain containers is ever unpickled. PyTorch is an optional dependency.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.counts import ExpertCounts, validate_counts
from placer.inputs import open_input
from placer.trace import PADDING, Trace, validate_arrays


def _load(path: Path) -> object:
    try:
        import torch
    except ImportError:
        raise InputError(
            path, None, "reading SGLang dumps needs PyTorch (pip install 'placer[sglang]')"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_input(path, "torch (.pt)") as handle:
                return torch.load(handle, weights_only=True, map_location="cpu")
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt or refused pickle raises many types
        detail = (str(err).splitlines() or [""])[0][:160]
        raise InputError(
            path, None, f"not a readable torch file ({err.__class__.__name__}: {detail})"
        ) from None


def _int_array(path: Path, field: str, value: object) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise InputError(path, field, f"expected a tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise InputError(path, field, f"expected an integer tensor, got {value.dtype}")
    return value.numpy()


def _stat_counts(path: Path, dump: dict) -> ExpertCounts:
    counts = _int_array(path, "logical_count", dump["logical_count"])
    if counts.ndim != 3:
        raise InputError(
            path, "logical_count", f"expected [passes, layers, experts], got shape {counts.shape}"
        )
    if (counts < 0).any():
        step, layer, expert = np.argwhere(counts < 0)[0]
        raise InputError(
            path, "logical_count", f"negative count at pass {step}, layer {layer}, expert {expert}"
        )
    return validate_counts(str(path), counts.sum(axis=0, dtype=np.int64), "logical_count")


def _logical_ids(path: Path, field: str, ids: np.ndarray, physical_to_logical: np.ndarray) -> np.ndarray:
    """Physical ids ``[layers, tokens, k]`` -> logical ids ``[tokens, layers, k]``, ``-1`` kept."""
    layers, physical = physical_to_logical.shape
    if ids.ndim != 3 or ids.shape[0] != layers:
        raise InputError(path, field, f"expected [layers={layers}, tokens, k], got shape {ids.shape}")
    bad = (ids < PADDING) | (ids >= physical)
    if bad.any():
        layer, token, slot = np.argwhere(bad)[0]
        raise InputError(
            path, field,
            f"physical expert id {ids[layer, token, slot]} outside -1..{physical - 1} "
            f"(layer {layer}, token {token})",
        )
    flat = np.maximum(ids, 0).reshape(layers, -1)
    logical = np.take_along_axis(physical_to_logical, flat, axis=1).reshape(ids.shape)
    return np.where(ids == PADDING, PADDING, logical).transpose(1, 0, 2)


def _per_token_trace(path: Path, dump: dict, num_experts: int | None) -> Trace:
    mapping = _int_array(path, "last_physical_to_logical_map", dump.get("last_physical_to_logical_map"))
    if mapping.ndim != 2 or 0 in mapping.shape or mapping.min() < 0:
        raise InputError(
            path, "last_physical_to_logical_map",
            f"expected [layers, physical_experts] non-negative logical ids, got shape {mapping.shape}",
        )
    records = dump["records"]
    if not isinstance(records, list) or not records:
        raise InputError(path, "records", "expected a non-empty list of forward-pass records")
    blocks, ranks = [], []
    for index, record in enumerate(records):
        field = f"records[{index}]"
        ids_field = f"{field}.topk_ids_of_layer"
        if not isinstance(record, dict):
            raise InputError(path, field, f"expected a dict, got {type(record).__name__}")
        if "topk_ids_of_layer" not in record:
            raise InputError(path, ids_field, "missing (only per_token mode dumps record tokens)")
        physical_ids = _int_array(path, ids_field, record["topk_ids_of_layer"])
        block = _logical_ids(path, ids_field, physical_ids, mapping)
        if blocks and block.shape[2] != blocks[0].shape[2]:
            raise InputError(
                path, ids_field,
                f"top-k width {block.shape[2]} differs from records[0]'s {blocks[0].shape[2]}",
            )
        rank = record.get("rank")
        if type(rank) is not int or rank < 0:
            raise InputError(path, f"{field}.rank", f"expected a non-negative integer, got {rank!r}")
        blocks.append(block)
        ranks.append(np.full(len(block), rank, dtype=np.int64))
    topk_ids = np.concatenate(blocks)
    used = np.flatnonzero((topk_ids != PADDING).any(axis=(0, 1)))
    if used.size:
        topk_ids = topk_ids[:, :, : used[-1] + 1]
    arrays = {"topk_ids": topk_ids, "src_rank": np.concatenate(ranks)}
    return validate_arrays(str(path), arrays, num_experts or int(mapping.max()) + 1)


def read_sglang_dump(path: str | Path, num_experts: int | None = None) -> Trace | ExpertCounts:
    """Read a ``stat`` dump as counts ``[layers, experts]`` or a ``per_token`` dump as a trace.

    num_experts: overrides the per_token expert count (unused for counts).
    """
    path = Path(path)
    dump = _load(path)
    if not isinstance(dump, dict):
        raise InputError(path, None, f"expected the dict an SGLang dump holds, got {type(dump).__name__}")
    if "logical_count" in dump:
        return _stat_counts(path, dump)
    if "records" in dump:
        return _per_token_trace(path, dump, num_experts)
    raise InputError(
        path, None,
        "holds neither 'logical_count' (stat mode) nor 'records' (per_token mode): not an SGLang dump",
    )
