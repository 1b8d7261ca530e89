"""Importer for SGLang expert-distribution dumps (``torch.save`` files).

Follows sgl-project/sglang ``python/sglang/srt/eplb/expert_distribution.py`` at
02295fe5 (``_StatAccumulator.dump`` and ``_DetailAccumulator.dump``), the files that
``/dump_expert_distribution_record`` writes under
``--expert-distribution-recorder-mode`` into ``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR``:

- ``stat`` / ``stat_approx``: rank 0 alone writes ``expert_distribution_recorder_{time}.pt``
  = ``{"rank", "logical_count": [passes, num_hidden_layers, logical_experts] int
  (all-reduced over ranks), "average_utilization_rate_over_window"}``. Read as
  :class:`ExpertCounts` summed over passes (unused ring-buffer passes are zero) and
  over dumps; dense layers (all-zero rows) are dropped.
- ``per_token``: every rank writes ``expert_distribution_recorder_{time}_{rank}.pt`` =
  ``{"records": [...], "last_physical_to_logical_map": [num_hidden_layers, physical]
  int}``, one record per forward pass with ``"rank"`` and ``"topk_ids_of_layer":
  [num_hidden_layers, tokens, 8]`` physical ids (the buffer is reset to ``-1``, so
  dense layers stay all ``-1``). Read as a :class:`Trace`: ids mapped to logical
  experts through the map (the map in force at dump time, as upstream warns),
  dense layers dropped (``Trace.layer_ids`` keeps the decoder-layer ids), ranks
  merged (with attention data parallelism each rank routes its own tokens; a rank
  whose records repeat another's, as with tensor-parallel attention, is kept
  once), passes joined in file then record order, ``src_rank`` = the record's
  rank, and trailing top-k columns that are padding in every token dropped (the
  recorder's width 8 exceeds smaller top-k). The expert count is the map's
  largest logical id + 1 unless ``num_experts`` is given. The map itself is the
  placement in service (``Imported.in_service``).

Files are loaded with ``torch.load(weights_only=True)``: nothing but tensors
and plain containers is ever unpickled. PyTorch is an optional dependency.
"""

from __future__ import annotations

import glob
import hashlib
import re
import warnings
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.counts import ExpertCounts, validate_counts
from placer.formats.importers.imported import Imported
from placer.formats.layers import drop_dense_layers, drop_dense_rows
from placer.topology import Model
from placer.trace import PADDING, Trace, validate_arrays

__all__ = ["read_sglang", "read_sglang_dump", "sglang_files"]

_DUMP_NAME = re.compile(r"expert_distribution_recorder_(?P<time>[0-9.e+-]+?)(?:_(?P<rank>\d+))?\.pt")


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
            return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
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


def _stat_counts(path: Path, dump: dict) -> np.ndarray:
    """``logical_count`` summed over passes: [num_hidden_layers, experts] int64."""
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
    return counts.sum(axis=0, dtype=np.int64)


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


def _in_service(path: Path, dump: dict) -> np.ndarray:
    mapping = _int_array(path, "last_physical_to_logical_map", dump.get("last_physical_to_logical_map"))
    if mapping.ndim != 2 or 0 in mapping.shape or mapping.min() < 0:
        raise InputError(
            path, "last_physical_to_logical_map",
            f"expected [layers, physical_experts] non-negative logical ids, got shape {mapping.shape}",
        )
    return mapping.astype(np.int64)


def _per_token_blocks(path: Path, dump: dict, mapping: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(rank, logical ids [tokens, layers, 8]) of every record of one per_token dump."""
    records = dump["records"]
    if not isinstance(records, list) or not records:
        raise InputError(path, "records", "expected a non-empty list of forward-pass records")
    blocks = []
    for index, record in enumerate(records):
        field = f"records[{index}]"
        ids_field = f"{field}.topk_ids_of_layer"
        if not isinstance(record, dict):
            raise InputError(path, field, f"expected a dict, got {type(record).__name__}")
        if "topk_ids_of_layer" not in record:
            raise InputError(path, ids_field, "missing (only per_token mode dumps record tokens)")
        physical_ids = _int_array(path, ids_field, record["topk_ids_of_layer"])
        block = _logical_ids(path, ids_field, physical_ids, mapping)
        if blocks and block.shape[2] != blocks[0][1].shape[2]:
            raise InputError(
                path, ids_field,
                f"top-k width {block.shape[2]} differs from records[0]'s {blocks[0][1].shape[2]}",
            )
        rank = record.get("rank")
        if type(rank) is not int or rank < 0:
            raise InputError(path, f"{field}.rank", f"expected a non-negative integer, got {rank!r}")
        blocks.append((rank, block))
    return blocks


def _distinct_ranks(blocks: list[tuple[int, np.ndarray]]) -> tuple[list[tuple[int, np.ndarray]], str]:
    """Drop the records of ranks that repeat an earlier rank's records exactly (same tokens)."""
    digests: dict = {}  # rank -> running sha256 of its records
    for rank, block in blocks:
        digests.setdefault(rank, hashlib.sha256()).update(np.ascontiguousarray(block, dtype="<i4").tobytes())
    first: dict[str, int] = {}
    repeats = {rank: first.setdefault(d.hexdigest(), rank) for rank, d in digests.items()}
    repeats = {rank: kept for rank, kept in repeats.items() if rank != kept}
    if not repeats:
        return blocks, ""
    note = (f"ranks {sorted(repeats)} recorded exactly the tokens of ranks {sorted(set(repeats.values()))} "
            "(attention without data parallelism): kept once")
    return [(rank, block) for rank, block in blocks if rank not in repeats], note


def _per_token_trace(label: str, dumps: list[tuple[Path, dict]], num_experts: int | None,
                     model: Model | None) -> Imported:
    mappings = [(path, _in_service(path, dump)) for path, dump in dumps]
    first_path, mapping = mappings[0]
    for path, other in mappings[1:]:
        if other.shape != mapping.shape or (other != mapping).any():
            raise InputError(path, "last_physical_to_logical_map", f"differs from {first_path.name}'s "
                             "(dumps taken under different placements cannot be merged)")
    blocks = [block for path, dump in dumps for block in _per_token_blocks(path, dump, mapping)]
    blocks, note = _distinct_ranks(blocks)
    topk_ids = np.concatenate([block for _, block in blocks])
    split = drop_dense_layers(label, topk_ids, model, "topk_ids_of_layer")
    topk_ids = topk_ids[:, split.keep]
    used = np.flatnonzero((topk_ids != PADDING).any(axis=(0, 1)))
    if used.size:
        topk_ids = topk_ids[:, :, : used[-1] + 1]
    ranks = np.concatenate([np.full(len(block), rank, dtype=np.int64) for rank, block in blocks])
    arrays = {"topk_ids": topk_ids, "src_rank": ranks, "layer_ids": split.layer_ids}
    experts = num_experts or (model.num_experts if model is not None else int(mapping.max()) + 1)
    trace = validate_arrays(label, arrays, experts)
    return Imported(trace, mapping, [n for n in (split.note, note) if n])


def sglang_files(source: str | Path) -> list[Path]:
    """The dump files of ``source``: one file, a directory's ``*.pt`` files, or a glob pattern;
    ordered by (time, rank) from SGLang's file names, else by name."""
    given = Path(source)
    if given.is_dir():
        files = sorted(given.glob("*.pt"))
    elif given.exists():
        files = [given]
    else:
        files = sorted(Path(p) for p in glob.glob(str(source)))
    if not files:
        raise InputError(source, None, "no such file, directory or matching dump files")

    def order(path: Path) -> tuple:
        match = _DUMP_NAME.fullmatch(path.name)
        try:
            return (0, float(match["time"]), int(match["rank"] or 0), path.name)
        except (TypeError, ValueError):  # not SGLang's name (or not a number where the time goes)
            return (1, 0.0, 0, path.name)

    return sorted(files, key=order)


def read_sglang(source: str | Path, num_experts: int | None = None, model: Model | None = None) -> Imported:
    """Read one dump, a directory of dumps, or a glob of them (all stat or all per_token).

    num_experts: overrides the per_token expert count. model: names the dense layers
    (``first_dense_layers``) and checks the layer count; without it, constant layers
    (per_token) and all-zero rows (stat) are the dense ones.
    """
    files = sglang_files(source)
    label = str(source)
    dumps = []
    for path in files:
        dump = _load(path)
        if not isinstance(dump, dict):
            raise InputError(path, None, f"expected the dict an SGLang dump holds, got {type(dump).__name__}")
        if "logical_count" not in dump and "records" not in dump:
            raise InputError(
                path, None,
                "holds neither 'logical_count' (stat mode) nor 'records' (per_token mode): not an SGLang dump",
            )
        dumps.append((path, dump))
    modes = {"logical_count" in dump for _, dump in dumps}
    if len(modes) > 1:
        raise InputError(label, None, "mixes stat dumps (logical_count) and per_token dumps (records)")
    if modes == {False}:
        return _per_token_trace(label, dumps, num_experts, model)
    counts = [(path, _stat_counts(path, dump)) for path, dump in dumps]
    for path, value in counts[1:]:
        if value.shape != counts[0][1].shape:
            raise InputError(path, "logical_count", f"shape {value.shape} differs from {files[0].name}'s")
    total = sum(value for _, value in counts)
    split = drop_dense_rows(label, total, model)
    notes = [split.note] if split.note else []
    if len(counts) > 1:
        notes.append(f"summed the counts of {len(counts)} stat dumps")
    return Imported(validate_counts(label, total[split.keep], "logical_count", split.layer_ids), None, notes)


def read_sglang_dump(path: str | Path, num_experts: int | None = None,
                     model: Model | None = None) -> Trace | ExpertCounts:
    """Read a ``stat`` dump as counts ``[layers, experts]`` or a ``per_token`` dump as a trace
    (see :func:`read_sglang`; this keeps the routing only)."""
    return read_sglang(path, num_experts, model).routing
