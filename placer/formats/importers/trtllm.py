"""Importer for TensorRT-LLM expert statistics (``EXPERT_STATISTIC_PATH``).

Follows NVIDIA/TensorRT-LLM ``tensorrt_llm/_torch/expert_statistic.py`` (the
writer, read at 0fccc5b9) and ``examples/wide_ep/ep_load_balancer/utils.py`` (its
reader). The directory holds:

- ``meta_info.json``: ``{"num_experts": E, "num_experts_per_token": k}``
  (rank 0 writes it; other keys such as ``ep_size`` are ignored).
- ``rank{r}.safetensors``: ``"{iter}_{layer}"`` -> ``[E]`` integer token counts
  per expert, for every recorded iteration and MoE layer.
- co-occurrence variant, when present: ``token_selected_experts_rank{r}.safetensors``:
  ``"{iter}_{layer}"`` -> ``[tokens, k]`` expert ids (its ``cooccurrence_rank{r}``
  matrices follow from these and are not read).

With token files the directory reads as a :class:`Trace`: tokens join iteration
by iteration and, within one, rank by rank (rank-major, ``src_rank`` = ``r``),
which is right with attention data parallelism (each rank routes its own
tokens). Without them it reads as :class:`ExpertCounts` summed over ranks and
iterations. Either way the layer axis is the sorted layer ids (the MoE module's
``layer_idx``, a decoder-layer index; dense layers are absent; a trace keeps them as
``layer_ids``), and every rank file must hold every (iteration, layer) pair.

Slots: with the MoE load balancer on, the recorder sees *slot* ids and
``num_experts`` is the slot count. When the model's expert count differs from
``num_experts``, the load balancer's ``initial_global_assignments`` (``{layer:
[expert of slot 0, 1, ...]}``, the YAML ``moe_config.load_balancer`` takes, or
placer's ``--format trtllm`` output) maps slots to experts; without it the
import is refused (the slot -> expert map is not in the statistics).

``rank{r}_raw.safetensors``: not written by the version read. If present, its
``"{iter}_{layer}"`` tensors are read as per-token ids when they are ``[tokens, k]``
(the ``token_selected_experts`` layout); any other layout is refused, never
silently replaced by the counts.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.counts import ExpertCounts, validate_counts
from placer.formats.importers.imported import Imported
from placer.formats.importers.steps import StepGroup, stack_groups
from placer.topology import Model
from placer.trace import Trace, validate_arrays

__all__ = ["META_INFO", "read_assignments", "read_trtllm"]

META_INFO = "meta_info.json"
_COUNTS_FILE = re.compile(r"rank(\d+)\.safetensors")
_TOKENS_FILE = re.compile(r"token_selected_experts_rank(\d+)\.safetensors")
_RAW_FILE = re.compile(r"rank(\d+)_raw\.safetensors")
_KEY = re.compile(r"(\d+)_(\d+)")
Records = dict[tuple[int, int], np.ndarray]


def _meta_info(directory: Path) -> tuple[int, int]:
    """(num_experts, num_experts_per_token) from ``meta_info.json``."""
    path = directory / META_INFO
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, None, "missing (not a TensorRT-LLM expert statistics directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise InputError(path, None, f"not readable JSON ({err.__class__.__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise InputError(path, None, f"expected a JSON object, got {meta!r} (null: nothing was recorded)")
    for name in ("num_experts", "num_experts_per_token"):
        if type(meta.get(name)) is not int or meta[name] <= 0:
            raise InputError(path, name, f"expected a positive integer, got {meta.get(name)!r}")
    return meta["num_experts"], meta["num_experts_per_token"]


def _rank_files(directory: Path, pattern: re.Pattern) -> dict[int, Path]:
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := pattern.fullmatch(p.name))}
    return {rank: found[rank] for rank in sorted(found)}


def _load(path: Path) -> Records:
    """``"{iter}_{layer}"`` integer arrays of one safetensors file, keyed by (iter, layer)."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise InputError(
            path, None, "reading TensorRT-LLM statistics needs safetensors (pip install 'placer[trtllm]')"
        ) from None
    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except Exception as err:  # noqa: BLE001 - SafetensorError and dtype errors of a corrupt file
        raise InputError(path, None, f"not a readable safetensors file ({err})") from None
    records: Records = {}
    for key, value in tensors.items():
        match = _KEY.fullmatch(key)
        if not match:
            raise InputError(path, key, "unexpected key (expected '<iter>_<layer>')")
        if value.dtype.kind not in "iu":
            raise InputError(path, key, f"expected integers, got dtype {value.dtype}")
        records[int(match.group(1)), int(match.group(2))] = value
    if not records:
        raise InputError(path, None, "holds no '<iter>_<layer>' records")
    return records


def _load_grid(files: dict[int, Path]) -> dict[int, Records]:
    """Every file's records, checked to cover all iterations x all layers seen."""
    loaded = {rank: _load(path) for rank, path in files.items()}
    keys = set().union(*loaded.values())
    iterations, layers = sorted({i for i, _ in keys}), sorted({layer for _, layer in keys})
    for rank, records in loaded.items():
        missing = sorted(set(itertools.product(iterations, layers)) - set(records))
        if missing:
            iteration, layer = missing[0]
            raise InputError(
                files[rank], f"{iteration}_{layer}",
                f"missing (every rank file must hold iterations {iterations[0]}..{iterations[-1]} "
                f"x layers {layers})",
            )
    return loaded


def _counts(directory: Path, files: dict[int, Path], num_experts: int) -> tuple[ExpertCounts, list[int]]:
    """Counts [layers, num_experts] summed over ranks and iterations, and the layer ids of the rows."""
    loaded = _load_grid(files)
    layers = sorted({layer for records in loaded.values() for _, layer in records})
    row = {layer: index for index, layer in enumerate(layers)}
    total = np.zeros((len(layers), num_experts), dtype=np.int64)
    for rank, records in loaded.items():
        for (iteration, layer), counts in records.items():
            key = f"{iteration}_{layer}"
            if counts.shape != (num_experts,):
                raise InputError(
                    files[rank], key,
                    f"expected {num_experts} counts (meta_info num_experts), got shape {counts.shape}",
                )
            if (counts < 0).any():
                raise InputError(files[rank], key, f"negative count {counts.min()}")
            total[row[layer]] += counts
    return validate_counts(str(directory), total, layer_ids=np.asarray(layers)), layers


def _trace(directory: Path, files: dict[int, Path], num_experts: int, top_k: int) -> Trace:
    groups: dict[tuple[int, int], StepGroup] = {}
    for rank, records in _load_grid(files).items():
        for (iteration, layer), ids in records.items():
            if ids.ndim != 2 or ids.shape[1] != top_k:
                raise InputError(
                    files[rank], f"{iteration}_{layer}",
                    f"expected [tokens, {top_k}] expert ids (meta_info num_experts_per_token), "
                    f"got shape {ids.shape}",
                )
            key = (iteration, rank)
            group = groups.setdefault(key, StepGroup(files[rank], f"iteration {iteration}", rank))
            group.parts[layer] = [ids]
    return stack_groups(str(directory), [groups[key] for key in sorted(groups)], num_experts)


def read_assignments(path: str | Path) -> dict[int, np.ndarray]:
    """``initial_global_assignments`` of a load-balancer YAML/JSON: layer -> [slots] expert ids.

    Accepts the ``moe_config.load_balancer`` mapping itself, or a document holding it
    under ``moe_config: load_balancer:`` or ``load_balancer:``.
    """
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(path, None, f"not readable YAML ({err.__class__.__name__})") from None
    for key in ("moe_config", "load_balancer"):
        if isinstance(doc, dict) and isinstance(doc.get(key), dict):
            doc = doc[key]
    table = doc.get("initial_global_assignments") if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not table:
        raise InputError(path, "initial_global_assignments", "missing (expected {layer: [expert of each slot]})")
    result = {}
    for layer, row in table.items():
        if type(layer) is not int or not isinstance(row, list) or not all(type(v) is int and v >= 0 for v in row):
            raise InputError(path, f"initial_global_assignments.{layer}", "expected an integer layer and a list "
                             "of non-negative expert ids")
        result[layer] = np.asarray(row, dtype=np.int64)
    if len({len(row) for row in result.values()}) != 1:
        raise InputError(path, "initial_global_assignments", "layers list different slot counts")
    return result


def _slot_map(directory: Path, num_slots: int, model: Model | None, assignments: dict[int, np.ndarray] | None,
              layers: list[int]) -> dict[int, np.ndarray] | None:
    """layer -> [slots] expert ids when the statistics are slot-indexed, else None."""
    if assignments is None:
        if model is not None and model.num_experts != num_slots:
            raise InputError(directory / META_INFO, "num_experts", f"{num_slots} ids but model {model.name} has "
                             f"{model.num_experts} experts: the statistics are indexed by load-balancer slots; "
                             "pass the load balancer config (initial_global_assignments) to map slots to experts")
        return None
    for layer in layers:
        row = assignments.get(layer)
        if row is None or len(row) != num_slots:
            raise InputError(directory, f"layer {layer}", f"the assignment gives {0 if row is None else len(row)} "
                             f"slots for this layer; the statistics hold {num_slots}")
    return assignments


def read_trtllm(directory: str | Path, model: Model | None = None,
                assignments: dict[int, np.ndarray] | None = None) -> Imported:
    """Read a statistics directory.

    Returns a trace ``[tokens, layers, k]`` with ``src_rank`` when token files
    are present, else counts ``[layers, num_experts]``. model: checks the expert count
    (a mismatch means slot-indexed statistics). assignments: layer -> [slots] expert
    ids (:func:`read_assignments`) for slot-indexed statistics.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, None, "not a directory")
    num_ids, top_k = _meta_info(directory)
    token_files = _rank_files(directory, _TOKENS_FILE) or _rank_files(directory, _RAW_FILE)
    notes = []
    if token_files and _RAW_FILE.fullmatch(next(iter(token_files.values())).name):
        notes.append("read per-token ids from rank<R>_raw.safetensors ([tokens, k] per '<iter>_<layer>')")
    if token_files:
        routing = _trace(directory, token_files, num_ids, top_k)
        layers = routing.layer_ids.tolist()
    else:
        count_files = _rank_files(directory, _COUNTS_FILE)
        if not count_files:
            raise InputError(directory, None, "no rank<R>.safetensors statistics files")
        routing, layers = _counts(directory, count_files, num_ids)
    slots = _slot_map(directory, num_ids, model, assignments, layers)
    if slots is not None:
        routing = _to_experts(routing, slots, layers, model)
        notes.append(f"mapped {num_ids} load-balancer slots to experts through the assignment")
    return Imported(routing, None, notes)


def _to_experts(routing: Trace | ExpertCounts, slots: dict[int, np.ndarray], layers: list[int],
                model: Model | None) -> Trace | ExpertCounts:
    """Slot-indexed routing -> expert-indexed routing, layer by layer."""
    experts = model.num_experts if model is not None else int(max(row.max() for row in slots.values())) + 1
    if isinstance(routing, ExpertCounts):
        total = np.zeros((len(layers), experts), dtype=np.int64)
        for row, layer in enumerate(layers):
            np.add.at(total[row], slots[layer], routing.counts[row])
        return validate_counts(routing.source, total, layer_ids=routing.layer_ids)
    table = np.stack([slots[layer] for layer in layers])  # [layers, slots]
    ids = routing.topk_ids.astype(np.int64)
    mapped = np.where(ids < 0, -1, table[np.arange(len(layers))[None, :, None], np.maximum(ids, 0)])
    arrays = {"topk_ids": mapped, "src_rank": routing.src_rank, "layer_ids": routing.layer_ids}
    return validate_arrays("slot-mapped statistics", arrays, experts)
