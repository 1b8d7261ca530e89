"""Importer for vLLM ``routed_experts`` arrays saved with ``np.save``.

Follows vllm-project/vllm ``vllm/outputs.py`` (``CompletionOutput.routed_experts``,
filled by ``vllm/model_executor/layers/fused_moe/routed_experts_capturer.py``, read
at 00bd1493): one request's routing, ``[tokens, num_hidden_layers, top_k]`` logical
expert ids. The capturer's buffer is zeroed and indexed by decoder layer, so dense
layers (DeepSeek's ``first_k_dense_replace``) are rows of zeros; they are dropped
(:mod:`placer.formats.layers`) and the trace keeps the decoder-layer ids. The dtype
is int32 at the version read; later versions narrow it to uint8 (<= 256 experts) or
uint16; any integer dtype is accepted. The file holds no expert count: pass
``num_experts`` (or a model) or it is the largest id + 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.counts import read_npy
from placer.formats.importers.imported import Imported
from placer.formats.layers import drop_dense_layers
from placer.progress import ProgressFn, track
from placer.topology import Model
from placer.trace import validate_arrays

__all__ = ["read_vllm", "routed_experts_trace"]


def routed_experts_trace(
    source: str,
    arrays: Sequence[tuple[str, np.ndarray]],
    num_experts: int | None,
    model: Model | None = None,
    field: str = "routed_experts",
) -> Imported:
    """Join ``(file, routed_experts [tokens, num_hidden_layers, k])`` arrays token-wise, one
    sequence per array; dense layers dropped, decoder-layer ids kept."""
    first_file, first = arrays[0]
    for name, value in arrays:
        if value.dtype.kind not in "iu":
            raise InputError(name, field, f"expected integer expert ids, got dtype {value.dtype}")
        if value.ndim != 3:
            raise InputError(name, field, f"expected [tokens, num_hidden_layers, top_k], got shape {value.shape}")
        if value.shape[1:] != first.shape[1:]:
            raise InputError(
                name,
                field,
                f"layers x top_k {value.shape[1:]} differs from {first_file}'s {first.shape[1:]}",
            )
    seq_lens = np.array([len(value) for _, value in arrays], dtype=np.int64)
    if (seq_lens == 0).any():
        raise InputError(arrays[int(np.argmin(seq_lens))][0], field, "holds zero tokens")
    topk_ids = np.concatenate([value.astype(np.int64, copy=False) for _, value in arrays])
    split = drop_dense_layers(source, topk_ids, model, field)
    arrays_out = {"topk_ids": topk_ids[:, split.keep], "seq_lens": seq_lens, "layer_ids": split.layer_ids}
    experts = num_experts or (model.num_experts if model is not None else None)
    return Imported(validate_arrays(source, arrays_out, experts), None, [split.note] if split.note else [])


def read_vllm(
    paths: str | Path | Sequence[str | Path],
    num_experts: int | None = None,
    progress: ProgressFn | None = None,
    model: Model | None = None,
) -> Imported:
    """Read one or several ``routed_experts`` ``.npy`` files (one request each, joined in order).

    Returns a trace ``[tokens, moe_layers, top_k]`` whose ``seq_lens`` are the
    files' token counts and whose ``layer_ids`` are the MoE layers' decoder ids.
    progress: reports files read (:mod:`placer.progress`).
    """
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not files:
        raise InputError(None, "routed_experts", "no files given")
    source = str(files[0]) if len(files) == 1 else str(files[0].parent)
    arrays = [(str(f), read_npy(f)) for f in track(files, "reading vLLM files", len(files), progress)]
    return routed_experts_trace(source, arrays, num_experts, model)
