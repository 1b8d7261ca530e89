"""Routing data recorded by serving and training engines, read into placer's two input kinds.

- :class:`~placer.trace.Trace`: token-level top-k ``[tokens, layers, k]`` (who
  is routed together): Megatron-Core router traces, vLLM ``routed_experts``,
  SGLang ``per_token`` dumps, TensorRT-LLM statistics with token files, and
  placer's native ``.npz``.
- :class:`ExpertCounts`: load only, ``[layers, experts]`` token counts (what
  EPLB consumes): a counts ``.npy``, SGLang ``stat`` dumps, TensorRT-LLM counts.

:func:`load_routing` tells the formats apart; the ``read_*`` functions read
one format each and returns an :class:`Imported` (routing, the placement in service
when the dump records it, notes). Dense layers are dropped and traces keep the
model's decoder-layer ids (:mod:`placer.formats.layers`). Every bad input raises :class:`~placer.errors.InputError`
naming the file and field; nothing is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

from placer.errors import InputError
from placer.formats.importers.counts import (
    ExpertCounts,
    read_counts_npy,
    read_npy,
    save_counts,
    validate_counts,
)
from placer.formats.importers.imported import Imported
from placer.formats.importers.megatron import megatron_files, read_megatron
from placer.formats.importers.sglang import read_sglang, read_sglang_dump
from placer.formats.importers.sglang_routed import read_sglang_routed
from placer.formats.importers.trtllm import META_INFO, read_assignments, read_trtllm
from placer.formats.importers.vllm import read_vllm, routed_experts_trace
from placer.trace import Trace, load_trace

__all__ = [
    "ExpertCounts",
    "Imported",
    "load_routing",
    "read_assignments",
    "read_counts_npy",
    "read_megatron",
    "read_sglang",
    "read_sglang_dump",
    "read_sglang_routed",
    "read_trtllm",
    "read_vllm",
    "save_counts",
    "validate_counts",
]

FORMATS = (
    ".npz trace or directory of shards, .npy vLLM routed_experts [tokens, layers, k] or counts "
    "[layers, experts], .pt SGLang dump, Megatron router_trace_rank<R>.jsonl file or directory, "
    "TensorRT-LLM statistics directory (meta_info.json)"
)


def load_routing(path: str | Path, num_experts: int | None = None) -> Trace | ExpertCounts:
    """Read any supported routing file or directory, detecting its format.

    Directory: ``router_trace_rank*.jsonl`` -> Megatron, ``meta_info.json`` ->
    TensorRT-LLM, ``*.npz`` -> native shards. File by extension: ``.npz`` native,
    ``.jsonl`` Megatron, ``.pt``/``.pth`` SGLang, ``.npy`` by dimensions (3: vLLM
    ``routed_experts``, 2: counts). num_experts: the expert count for formats
    that do not record one (Megatron, vLLM, SGLang per_token).
    """
    path = Path(path)
    if path.is_dir():
        if megatron_files(path):
            return read_megatron(path, num_experts).routing
        if (path / META_INFO).is_file():
            return read_trtllm(path).routing
        if any(path.glob("*.npz")):
            return load_trace(path)
        raise InputError(path, None, f"directory in no known routing format (expected {FORMATS})")
    if not path.exists():
        raise InputError(path, None, "no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_trace(path)
    if suffix == ".jsonl":
        return read_megatron(path, num_experts).routing
    if suffix in (".pt", ".pth"):
        return read_sglang_dump(path, num_experts)
    if suffix == ".npy":
        array = read_npy(path)
        if array.ndim == 3:
            return routed_experts_trace(str(path), [(str(path), array)], num_experts).routing
        if array.ndim == 2:
            return validate_counts(str(path), array)
        raise InputError(
            path, None,
            f"expected [tokens, layers, k] routed_experts or [layers, experts] counts, "
            f"got shape {array.shape}",
        )
    raise InputError(path, None, f"unknown routing format '{suffix}' (expected {FORMATS})")
