"""Importer for vLLM ``routed_experts`` arrays saved with ``np.save``.

Follows vllm-project/vllm ``vllm/outputs.py`` (``CompletionOutput.routed_experts``,
filled by ``vllm/model_executor/layers/fused_moe/routed_experts_capturer.py``):
one request's routing, ``[tokens, moe_layers, top_k]`` logical expert ids,
int16 (int32 in older releases; any integer dtype is accepted). The file holds
no expert count: pass ``num_experts`` or it is the largest id + 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.counts import read_npy
from placer.progress import ProgressFn, track
from placer.trace import Trace, validate_arrays


def routed_experts_trace(
    source: str, arrays: Sequence[tuple[str, np.ndarray]], num_experts: int | None
) -> Trace:
    """Join ``(file, routed_experts)`` arrays token-wise, one sequence per array."""
    first_file, first = arrays[0]
    for name, value in arrays:
        if value.dtype.kind not in "iu":
            raise InputError(
                name, "routed_experts", f"expected integer expert ids, got dtype {value.dtype}"
            )
        if value.ndim != 3:
            raise InputError(
                name, "routed_experts", f"expected [tokens, moe_layers, top_k], got shape {value.shape}"
            )
        if value.shape[1:] != first.shape[1:]:
            raise InputError(
                name, "routed_experts",
                f"moe_layers x top_k {value.shape[1:]} differs from {first_file}'s {first.shape[1:]}",
            )
    topk_ids = np.concatenate([value for _, value in arrays])
    seq_lens = np.array([len(value) for _, value in arrays], dtype=np.int64)
    if (seq_lens == 0).any():
        raise InputError(arrays[int(np.argmin(seq_lens))][0], "routed_experts", "holds zero tokens")
    return validate_arrays(source, {"topk_ids": topk_ids, "seq_lens": seq_lens}, num_experts)


def read_vllm(paths: str | Path | Sequence[str | Path], num_experts: int | None = None,
              progress: ProgressFn | None = None) -> Trace:
    """Read one or several ``routed_experts`` ``.npy`` files (one request each, joined in order).

    Returns a trace ``[tokens, moe_layers, top_k]`` whose ``seq_lens`` are the
    files' token counts. progress: reports files read (:mod:`placer.progress`).
    """
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not files:
        raise InputError(None, "routed_experts", "no files given")
    source = str(files[0]) if len(files) == 1 else str(files[0].parent)
    arrays = [(str(f), read_npy(f)) for f in track(files, "reading vLLM files", len(files), progress)]
    return routed_experts_trace(source, arrays, num_experts)
