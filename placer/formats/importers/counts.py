"""Expert load counts (EPLB-style input, no co-activation) and the ``.npy`` readers.

A counts file is one ``.npy`` array ``[layers, experts]``: ``counts[l, e]`` is the
number of tokens layer ``l`` routed to expert ``e``. Counts carry load only; a
routing :class:`~placer.trace.Trace` also carries which experts a token uses
together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from placer.atomic import atomic_output
from placer.errors import InputError
from placer.trace import numpy_input


@dataclass(frozen=True)
class ExpertCounts:
    """Validated expert load counts.

    counts: [layers, experts] int64, non-negative, not all zero.
    source: where they were read from (for messages).
    layer_ids: [layers] decoder-layer index of each row when the source records it (engine
        dumps), else None. The counts ``.npy`` file does not keep it.
    """

    counts: np.ndarray
    source: str
    layer_ids: np.ndarray | None = None

    @property
    def num_layers(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.counts.shape[1])


#: largest count accepted: exact in float64, far beyond any real token count
MAX_COUNT = 1 << 53


def validate_counts(source: str, counts: np.ndarray, field: str = "counts",
                    layer_ids: np.ndarray | None = None) -> ExpertCounts:
    """Check a raw ``[layers, experts]`` array (integers, or floats holding whole numbers);
    layer_ids: [layers] decoder-layer ids of the rows, if known."""
    value = np.asarray(counts)
    if value.dtype.kind not in "iuf":
        raise InputError(source, field, f"expected integer counts, got dtype {value.dtype}")
    if value.ndim != 2 or 0 in value.shape:
        raise InputError(
            source, field, f"expected a non-empty [layers, experts] array, got shape {value.shape}"
        )
    if value.dtype.kind == "f":
        if not np.isfinite(value).all():
            layer, expert = np.argwhere(~np.isfinite(value))[0]
            raise InputError(source, field, f"NaN or infinite count at layer {layer}, expert {expert}")
        fractional = value != np.round(value)
        if fractional.any():
            layer, expert = np.argwhere(fractional)[0]
            raise InputError(
                source, field, f"fractional count {value[layer, expert]} at layer {layer}, expert {expert}"
            )
    if (value < 0).any():
        layer, expert = np.argwhere(value < 0)[0]
        raise InputError(
            source, field, f"negative count {value[layer, expert]} at layer {layer}, expert {expert}"
        )
    if (value > MAX_COUNT).any():
        layer, expert = np.argwhere(value > MAX_COUNT)[0]
        raise InputError(
            source, field, f"count {value[layer, expert]} at layer {layer}, expert {expert} exceeds 2^53"
        )
    if not value.any():
        raise InputError(source, field, "every count is zero: no routed tokens")
    ids = None if layer_ids is None else np.asarray(layer_ids, dtype=np.int64)
    return ExpertCounts(counts=value.astype(np.int64), source=source, layer_ids=ids)


def read_npy(path: str | Path) -> np.ndarray:
    """Load one ``.npy`` array without unpickling anything."""
    with numpy_input(path, ".npy array"):
        value = np.load(path, allow_pickle=False)
    if not isinstance(value, np.ndarray):
        value.close()
        raise InputError(path, None, "is an .npz archive, expected a single .npy array")
    return value


def read_counts_npy(path: str | Path) -> ExpertCounts:
    """Read a ``[layers, experts]`` counts ``.npy`` file."""
    return validate_counts(str(path), read_npy(path))


def save_counts(counts: ExpertCounts, path: str | Path) -> None:
    """Write ``counts.counts`` as an int64 ``.npy`` file, atomically."""
    with atomic_output(path) as handle:
        np.save(handle, counts.counts, allow_pickle=False)

