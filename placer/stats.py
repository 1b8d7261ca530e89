"""Routing-trace statistics per layer and averaged over layers.

Built on :func:`placer.graph.summarize`, one block of tokens at a time
(:func:`placer.trace.token_blocks`): loads and co-activation are summed exactly, distinct
top-k sets are counted with a k-minimum-values sketch of their hashes (exact below
:data:`SKETCH_SIZE` distinct sets per layer, an estimate with about 1/sqrt(SKETCH_SIZE) = 0.4 %
relative error above), so memory stays bounded by one block whatever the trace's size. All
per-layer arrays are ``[layers]`` over the summarised layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from placer.graph import SUMMARY_STAGE, TraceSummary, set_hash_unit, summarize
from placer.progress import ProgressFn
from placer.trace import Trace, TraceSource, block_sizes, token_blocks

SKETCH_SIZE = 1 << 16
"""Smallest set hashes kept per layer to count distinct sets (exact below this many)."""

PER_LAYER = ("routed_tokens", "load_skew", "entropy_bits", "distinct_sets", "distinct_share", "density")


def load_skew(loads: np.ndarray) -> np.ndarray:
    """Max over mean token-expert pairs per expert (1 = perfectly balanced).

    loads: [layers, E]. Returns [layers] float64, NaN for a layer without picks.
    """
    mean = loads.mean(axis=1)
    return np.divide(loads.max(axis=1), mean, out=np.full(len(loads), np.nan), where=mean > 0)


def entropy_bits(loads: np.ndarray) -> np.ndarray:
    """Entropy of the expert pick distribution in bits (log2 E when uniform).

    loads: [layers, E]. Returns [layers] float64, NaN for a layer without picks.
    """
    total = loads.sum(axis=1, keepdims=True)
    p = np.divide(loads, total, out=np.zeros(loads.shape), where=total > 0)
    plogp = np.multiply(p, np.log2(p, out=np.zeros(p.shape), where=p > 0))
    return np.where(total[:, 0] > 0, -plogp.sum(axis=1), np.nan)


def coactivation_density(coactivation: sp.csr_matrix) -> float:
    """Share of expert pairs chosen together at least once: nonzero pairs / (E (E - 1) / 2).

    coactivation: [E, E] symmetric with zero diagonal.
    """
    num_experts = coactivation.shape[0]
    pairs = num_experts * (num_experts - 1)
    return coactivation.count_nonzero() / pairs if pairs else math.nan


@dataclass(frozen=True)
class TraceStats:
    """Statistics of the summarised layers (``layer_ids``); per-layer arrays are [layers].

    routed_tokens: tokens with at least one expert in the layer.
    load_skew: max / mean token-expert pairs per expert (mean over all E experts).
    entropy_bits: entropy of the expert pick distribution, in bits.
    distinct_sets: distinct top-k sets; distinct_share: distinct_sets / routed_tokens.
    distinct_estimated: [layers] bool, where distinct_sets is a sketch estimate (module docstring).
    density: co-activated expert pairs / (E (E - 1) / 2).
    A layer without routed tokens has NaN skew, entropy and share, left out of the means.
    """

    num_tokens: int
    num_experts: int
    top_k: int
    layer_ids: tuple[int, ...]
    routed_tokens: np.ndarray
    load_skew: np.ndarray
    entropy_bits: np.ndarray
    distinct_sets: np.ndarray
    distinct_share: np.ndarray
    density: np.ndarray
    distinct_estimated: np.ndarray | None = None

    @property
    def means(self) -> dict[str, float]:
        """Each per-layer statistic averaged over the layers where it is defined (NaN if none)."""
        return {name: _finite_mean(getattr(self, name)) for name in PER_LAYER}

    def to_dict(self) -> dict:
        """JSON-ready plain Python types; NaN becomes None."""
        return {
            "tokens": self.num_tokens,
            "layers": len(self.layer_ids),
            "k": self.top_k,
            "experts": self.num_experts,
            "layer_ids": list(self.layer_ids),
            "per_layer": {name: [_plain(v) for v in getattr(self, name).tolist()] for name in PER_LAYER},
            "mean": {name: _plain(value) for name, value in self.means.items()},
            "distinct_sets_estimated": bool(self.distinct_estimated is not None and self.distinct_estimated.any()),
        }


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _plain(value: float) -> float | int | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def summary_stats(summary: TraceSummary) -> TraceStats:
    """Statistics of an already built (possibly merged) trace summary."""
    routed = np.array([layer.set_counts.sum() for layer in summary.layers], np.int64)
    distinct = np.array([len(layer.set_counts) for layer in summary.layers], np.int64)
    return TraceStats(
        num_tokens=summary.num_tokens,
        num_experts=summary.num_experts,
        top_k=summary.top_k,
        layer_ids=summary.layer_ids,
        routed_tokens=routed,
        load_skew=load_skew(summary.loads),
        entropy_bits=entropy_bits(summary.loads),
        distinct_sets=distinct,
        distinct_share=np.divide(distinct, routed, out=np.full(len(routed), np.nan), where=routed > 0),
        density=np.array([coactivation_density(layer.coactivation) for layer in summary.layers]),
    )


def trace_stats(
    source: TraceSource | Trace, layers: Sequence[int] | None = None, workers: int = 1,
    progress: ProgressFn | None = None,
) -> TraceStats:
    """Statistics of the selected layers (default: all), streaming the trace block by block in
    bounded memory (see the module docstring)."""
    blocks = len(block_sizes(source.num_tokens))
    loads = coactivation = routed = None
    sketches: list[np.ndarray] = []
    if progress is not None:
        progress(SUMMARY_STAGE, 0, blocks)
    for done, block in enumerate(token_blocks(source), 1):
        part = summarize(block, layers, workers)
        hashes = [set_hash_unit(layer.sets) for layer in part.layers]
        sketches = [_smallest(np.concatenate([kept, new]), SKETCH_SIZE)
                    for kept, new in zip(sketches or [hashes[0][:0]] * len(hashes), hashes)]
        counts = np.array([layer.set_counts.sum() for layer in part.layers], np.int64)
        if loads is None:
            loads, routed, layer_ids = part.loads, counts, part.layer_ids
            coactivation = [layer.coactivation for layer in part.layers]
        else:
            loads, routed = loads + part.loads, routed + counts
            coactivation = [(a + b.coactivation).tocsr() for a, b in zip(coactivation, part.layers)]
        if progress is not None:
            progress(SUMMARY_STAGE, done, blocks)
    counted = np.array([len(s) for s in sketches], np.int64)
    estimated = counted >= SKETCH_SIZE
    kmv = np.array([(SKETCH_SIZE - 1) / s[-1] if len(s) else 0.0 for s in sketches])
    distinct = np.where(estimated, np.round(kmv), counted).astype(np.int64)
    return TraceStats(
        num_tokens=source.num_tokens,
        num_experts=source.num_experts,
        top_k=source.top_k,
        layer_ids=layer_ids,
        routed_tokens=routed,
        load_skew=load_skew(loads),
        entropy_bits=entropy_bits(loads),
        distinct_sets=distinct,
        distinct_share=np.divide(distinct, routed, out=np.full(len(routed), np.nan), where=routed > 0),
        density=np.array([coactivation_density(c) for c in coactivation]),
        distinct_estimated=estimated,
    )


def _smallest(values: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` smallest distinct values, ascending."""
    return np.unique(values)[:count]
