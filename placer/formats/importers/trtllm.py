"""Importer for TensorRT-LLM expert statistics (``EXPERT_STATISTIC_PATH``).

Follows NVIDIA/TensorRT-LLM ``tensorrt_llm/_torch/expert_statistic.py`` (the
writer) and ``examples/wide_ep/ep_load_balancer/utils.py`` (its reader). The
directory holds:

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
iterations. Either way the layer axis is the sorted layer ids (dense layers are
absent), and every rank file must hold every (iteration, layer) pair.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.counts import ExpertCounts, validate_counts
from placer.formats.importers.steps import StepGroup, rank_files, stack_groups
from placer.inputs import MAX_JSON_BYTES, read_input_text, regular_file
from placer.trace import Trace

META_INFO = "meta_info.json"
_COUNTS_FILE = re.compile(r"rank(\d+)\.safetensors")
_TOKENS_FILE = re.compile(r"token_selected_experts_rank(\d+)\.safetensors")
_KEY = re.compile(r"(\d+)_(\d+)")
Records = dict[tuple[int, int], np.ndarray]


def _meta_info(directory: Path) -> tuple[int, int]:
    """(num_experts, num_experts_per_token) from ``meta_info.json``."""
    path = directory / META_INFO
    if not path.exists():
        raise InputError(path, None, "missing (not a TensorRT-LLM expert statistics directory)")
    try:
        meta = json.loads(read_input_text(path, "TensorRT-LLM meta_info JSON", MAX_JSON_BYTES))
    except (json.JSONDecodeError, RecursionError) as err:
        raise InputError(path, None, f"not readable JSON ({err.__class__.__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise InputError(path, None, f"expected a JSON object, got {meta!r} (null: nothing was recorded)")
    for name in ("num_experts", "num_experts_per_token"):
        if type(meta.get(name)) is not int or meta[name] <= 0:
            raise InputError(path, name, f"expected a positive integer, got {meta.get(name)!r}")
    return meta["num_experts"], meta["num_experts_per_token"]


def _rank_files(directory: Path, pattern: re.Pattern) -> dict[int, Path]:
    return rank_files(directory, pattern)


def _load(path: Path) -> Records:
    """``"{iter}_{layer}"`` integer arrays of one safetensors file, keyed by (iter, layer)."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise InputError(
            path, None, "reading TensorRT-LLM statistics needs safetensors (pip install 'placer[trtllm]')"
        ) from None
    try:
        tensors = load_file(regular_file(path, "safetensors"))
    except InputError:
        raise
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


def _counts(directory: Path, files: dict[int, Path], num_experts: int) -> ExpertCounts:
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
    return validate_counts(str(directory), total)


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


def read_trtllm(directory: str | Path) -> Trace | ExpertCounts:
    """Read a statistics directory.

    Returns a trace ``[tokens, layers, k]`` with ``src_rank`` when token files
    are present, else counts ``[layers, num_experts]``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, None, "not a directory")
    num_experts, top_k = _meta_info(directory)
    token_files = _rank_files(directory, _TOKENS_FILE)
    if token_files:
        return _trace(directory, token_files, num_experts, top_k)
    count_files = _rank_files(directory, _COUNTS_FILE)
    if not count_files:
        raise InputError(directory, None, "no rank<R>.safetensors statistics files")
    return _counts(directory, count_files, num_experts)
