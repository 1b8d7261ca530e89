"""Importer for SGLang ``return_routed_experts`` responses saved as JSON Lines.

With ``--enable-return-routed-experts`` on the server and ``return_routed_experts``
in a request, SGLang's ``/generate`` response carries ``meta_info["routed_experts"]``:
base64 of the raw bytes of an int32 C-order array ``[tokens, num_hidden_layers, top_k]``
(the capturer's buffer, ``python/sglang/srt/layers/moe/routed_experts_capturer.py``
read at 0837e911: zero-initialised and indexed by decoder layer, so dense layers
are zeros; ``tokens`` is prompt + completion - 1). The shape is not in the
response: the layer count and top-k come from the model (or are given).

Each line of the file is one response object or a JSON list of them (a batched
``/generate``); each response is one sequence. Dense layers are dropped and the
trace keeps the decoder-layer ids (:mod:`placer.formats.layers`).
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.imported import Imported
from placer.formats.importers.vllm import routed_experts_trace
from placer.topology import Model

__all__ = ["read_sglang_routed"]


def _responses(path: Path) -> list[tuple[str, dict]]:
    """(label, response object) of every response in the file, in order."""
    found = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    raise InputError(path, f"line {number}", "not valid JSON") from None
                items = value if isinstance(value, list) else [value]
                for index, item in enumerate(items):
                    label = f"line {number}" + (f"[{index}]" if isinstance(value, list) else "")
                    if not isinstance(item, dict):
                        raise InputError(path, label, "expected a response object")
                    found.append((label, item))
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, None, f"unreadable ({err})") from None
    if not found:
        raise InputError(path, None, "holds no responses")
    return found


def _decode(path: Path, label: str, response: dict, layers: int, top_k: int) -> np.ndarray:
    """The response's routed experts: [tokens, layers, top_k] int32."""
    field = f"{label}: meta_info.routed_experts"
    meta = response.get("meta_info")
    text = meta.get("routed_experts") if isinstance(meta, dict) else None
    if not isinstance(text, str):
        raise InputError(path, field, "missing (send requests with return_routed_experts to a server "
                         "launched with --enable-return-routed-experts)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(path, field, "not valid base64") from None
    row = 4 * layers * top_k
    if not raw or len(raw) % row:
        raise InputError(path, field, f"{len(raw)} bytes are not whole tokens of {layers} layers x top-{top_k} "
                         "int32 ids (wrong --model, --layers or --top-k?)")
    return np.frombuffer(raw, dtype="<i4").reshape(-1, layers, top_k)


def read_sglang_routed(path: str | Path, model: Model | None = None, num_hidden_layers: int | None = None,
                       top_k: int | None = None, num_experts: int | None = None) -> Imported:
    """Read a JSONL file of ``/generate`` responses into a trace (one sequence per response).

    model: gives ``num_hidden_layers``, top-k, the expert count and the dense layers;
    without it pass ``num_hidden_layers`` and ``top_k`` (constant layers are then the dense ones).
    """
    path = Path(path)
    layers = num_hidden_layers or (model.num_hidden_layers if model is not None else None)
    k = top_k or (model.top_k if model is not None else None)
    if layers is None or k is None:
        raise InputError(path, "num_hidden_layers", "the responses do not record their shape: pass the model "
                         "(or the decoder-layer count and top-k)")
    arrays = [(f"{path}: {label}", _decode(path, label, response, layers, k)) for label, response in _responses(path)]
    return routed_experts_trace(str(path), arrays, num_experts, model, "meta_info.routed_experts")
