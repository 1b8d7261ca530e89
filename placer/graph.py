"""Expert co-activation graph and hypergraph of a routing trace, per layer.

Per layer the routing decisions ``topk_ids_layer: [tokens, k]`` give

* loads: [experts] token-expert pairs per expert;
* the co-activation graph: [experts, experts] symmetric, entry (i, j) = tokens
  that chose both i and j;
* the hypergraph: one net per distinct top-k *set*, weighted by its tokens.

Large or sharded traces are summarised in blocks of tokens (:func:`summarize`, blocks of
:func:`placer.trace.token_blocks`, so a summary never depends on the shard boundaries); the
partial summaries (:class:`LayerSummary`, :class:`TraceSummary`) merge exactly (a linear merge
of their canonically ordered sets, :func:`merge_distinct_sets`), so an exact summary of a
trace already in memory is taken in one pass (the same summary, no merges).
With ``max_nets`` the sets are capped *while* streaming (memory bounded by the cap,
not the tokens): after every chunk and every merge a layer keeps its ``max_nets``
sets of highest priority ``count / u(set)``, ``u`` a hash of the set's ids in (0, 1]
(priority sampling, Duffield, Lund & Thorup, JACM 2007: heavy sets are kept, light
ones with probability about proportional to their count, and a kept set stands for
max(count, threshold) tokens, :meth:`LayerSummary.net_weights`); the tokens of
dropped sets are counted exactly (``dropped_weight``), loads and co-activation stay exact.

Sets are stored in a canonical form and order: ascending ids, ``-1`` padding
last; sets ordered lexicographically with a padded position ranking after
every expert id. The reference (numpy) path sorts each token's ids with a
sorting network over whole columns and finds distinct sets by one
``np.lexsort`` of the columns. The compiled path (:func:`layer_summaries`,
numba, whenever a set's ids after the first fit one uint64: ``(k - 1) *
bit_length(E) <= 64``, e.g. top-8 of up to 511 experts) sorts each block of
tokens the same way in the L1 cache, packs the ids after the first into one
integer key, counting-sorts the keys by first id and sorts each bucket with
``np.sort`` (SIMD sort where the CPU has it), then reads the distinct sets off
in order and counts loads and pairs from them, weighted (identical results).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial, reduce
from itertools import combinations
from typing import TypeVar

import networkx as nx
import numba
import numpy as np
import scipy.sparse as sp

from placer.errors import InputError
from placer.progress import ProgressFn
from placer.trace import PADDING, Trace, TraceSource, block_sizes, id_dtype, token_blocks

T = TypeVar("T")
SUMMARY_STAGE = "summarising trace"

DENSE_PAIR_LIMIT = 2048
"""Largest expert count whose pair counts are accumulated in a dense [E, E] array."""

LAYER_RUN = 8
"""Consecutive layers of a chunk summarised together (one pass over their ids)."""


# ---------------------------------------------------------------- per-layer building blocks


def expert_loads(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Token-expert pairs per expert.

    topk_ids: [tokens, layers, k], -1 padding ignored. Returns loads: [layers, experts] int64.
    """
    return np.stack(
        [np.bincount(layer[layer >= 0], minlength=num_experts) for layer in topk_ids.swapaxes(0, 1)]
    ).astype(np.int64, copy=False)


def _columns(topk_ids_layer: np.ndarray, num_experts: int) -> np.ndarray:
    """Each token's ids in ascending order, padding as ``num_experts`` (so last).

    topk_ids_layer: [tokens, k]. Returns columns: [k, tokens] contiguous, column i = i-th smallest id.
    Uses odd-even transposition sort over whole columns (k rounds of vectorised min/max).
    """
    dtype = id_dtype(num_experts)
    ids = topk_ids_layer.astype(dtype, copy=False)
    cols = [np.where(col < 0, dtype.type(num_experts), col) for col in ids.T]
    k = len(cols)
    for round_ in range(k):
        for i in range(round_ % 2, k - 1, 2):
            cols[i], cols[i + 1] = np.minimum(cols[i], cols[i + 1]), np.maximum(cols[i], cols[i + 1])
    return np.stack(cols)


def _symmetric_csr(pairs: np.ndarray) -> sp.csr_matrix:
    """pairs: [E, E] counts of each unordered pair in either orientation. Returns csr [E, E] int64."""
    return sp.csr_matrix(pairs + pairs.T, dtype=np.int64)


def _coactivation_from_columns(cols: np.ndarray, num_experts: int) -> sp.csr_matrix:
    """cols: [k, tokens] from :func:`_columns`. Returns csr [E, E] int64, symmetric, zero diagonal."""
    size = num_experts + 1
    pairs = list(combinations(range(cols.shape[0]), 2))
    if num_experts <= DENSE_PAIR_LIMIT:
        wide = cols.astype(np.intp)
        counts = np.zeros(size * size, np.int64)
        for i, j in pairs:
            counts += np.bincount(wide[i] * size + wide[j], minlength=size * size)
        return _symmetric_csr(counts.reshape(size, size)[:num_experts, :num_experts])
    low = np.concatenate([cols[i] for i, _ in pairs]).astype(np.int32)
    high = np.concatenate([cols[j] for _, j in pairs]).astype(np.int32)
    real = high < num_experts  # sorted rows: a pair holding padding has it in ``high``
    upper = sp.coo_matrix(
        (np.ones(int(real.sum()), np.int64), (low[real], high[real])),
        shape=(num_experts, num_experts),
    ).tocsr()
    return (upper + upper.T).tocsr()


def coactivation(topk_ids_layer: np.ndarray, num_experts: int) -> sp.csr_matrix:
    """Tokens that chose both experts.

    topk_ids_layer: [tokens, k], -1 padding. Returns csr [E, E] int64, symmetric, zero diagonal.
    """
    return _coactivation_from_columns(_columns(topk_ids_layer, num_experts), num_experts)


def _group_columns(
    cols: np.ndarray, weights: np.ndarray | None, num_experts: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct sets by a lexicographic sort of whole columns.

    cols: [k, m] from :func:`_columns`; weights: [m] int64 or None (each row counts 1).
    Returns (sets: [n, k] canonical, -1 padding; counts: [n] int64), canonical order.
    """
    order = np.lexsort(cols[::-1])
    ordered = np.take(cols, order, axis=1)
    first = np.ones(ordered.shape[1], bool)
    first[1:] = (ordered[:, 1:] != ordered[:, :-1]).any(axis=0)
    starts = np.flatnonzero(first)
    weight = np.ones(len(order), np.int64) if weights is None else weights[order]
    counts = np.add.reduceat(weight, starts)
    sets = ordered[:, starts].T
    nonempty = sets[:, 0] < num_experts
    return np.where(sets < num_experts, sets, PADDING)[nonempty], counts[nonempty]


def distinct_sets(
    topk_ids_layer: np.ndarray, num_experts: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct top-k sets and how many tokens chose each.

    topk_ids_layer: [tokens, k], -1 padding, any order within a row; weights: [tokens] int64 or
    None (each token counts 1). Returns (sets: [n, k] ascending ids with -1 padding last, in
    lexicographic order; counts: [n] int64). All-padding rows are not sets.
    """
    return _group_columns(_columns(topk_ids_layer, num_experts), weights, num_experts)


def merge_distinct_sets(
    sets_a: np.ndarray, counts_a: np.ndarray, sets_b: np.ndarray, counts_b: np.ndarray, num_experts: int
) -> tuple[np.ndarray, np.ndarray]:
    """The union of two lists of distinct sets, the counts of a set in both added: what
    :func:`distinct_sets` gives for their rows together, in one linear pass when both are in
    canonical order (every summary's are), else by sorting.

    sets_*: [n_*, k] canonical (ascending ids, -1 padding last); counts_*: [n_*] int64 or
    float64. Returns (sets: [n, k] of the id dtype, counts: [n]), canonical order.
    """
    dtype, count_dtype = id_dtype(num_experts), np.result_type(counts_a, counts_b)
    a, b = np.ascontiguousarray(sets_a, dtype), np.ascontiguousarray(sets_b, dtype)
    ca, cb = np.ascontiguousarray(counts_a, count_dtype), np.ascontiguousarray(counts_b, count_dtype)
    ka, kb = _order_keys(a, num_experts), _order_keys(b, num_experts)
    n = _merge_kernel(ka, kb, a, ca, b, cb, None, None)  # checks the order, counts the rows
    if n < 0:
        return distinct_sets(np.concatenate([a, b]), num_experts, np.concatenate([ca, cb]))
    sets, counts = np.empty((n, a.shape[1]), dtype), np.empty(n, count_dtype)
    _merge_kernel(ka, kb, a, ca, b, cb, sets, counts)
    return sets, counts


def _order_keys(sets: np.ndarray, num_experts: int) -> np.ndarray:
    """Keys that order sets: [n, k] canonically: [n, words] uint64, ids packed first-most-significant
    in ``bit_length(num_experts)``-bit fields, padding as ``num_experts`` (after every id)."""
    bits = int(num_experts).bit_length()
    per_word = 64 // bits
    keys = np.zeros((len(sets), -(-sets.shape[1] // per_word)), np.uint64)
    _pack_kernel(sets, num_experts, bits, per_word, keys)
    return keys


@numba.njit(nogil=True, cache=True)
def _pack_kernel(sets, num_experts, bits, per_word, keys):  # pragma: no cover - jitted
    """keys[r, c // per_word] holds id c of row r of sets: [n, k] (see :func:`_order_keys`)."""
    shift = np.uint64(bits)
    for r in range(sets.shape[0]):
        for c in range(sets.shape[1]):
            v = sets[r, c]
            keys[r, c // per_word] = (keys[r, c // per_word] << shift) | np.uint64(num_experts if v < 0 else v)


@numba.njit(nogil=True, cache=True, inline="always")
def _key_order(x, i, y, j):  # pragma: no cover - jitted
    """-1, 0 or 1: key row i of x before, equal to or after key row j of y."""
    for w in range(x.shape[1]):
        if x[i, w] != y[j, w]:
            return -1 if x[i, w] < y[j, w] else 1
    return 0


@numba.njit(nogil=True, cache=True)
def _merge_kernel(ka, kb, a, ca, b, cb, sets_out, counts_out):  # pragma: no cover - jitted
    """Merge a: [n, k] and b: [m, k] (order keys ka, kb from :func:`_order_keys`), each strictly
    increasing, with their counts into sets_out / counts_out (None: only count, after checking
    that both are strictly increasing: -1 if not); returns the rows of the union."""
    if sets_out is None:
        for keys in (ka, kb):
            for i in range(1, keys.shape[0]):
                if _key_order(keys, i - 1, keys, i) >= 0:
                    return -1
    i = j = n = 0
    while i < a.shape[0] or j < b.shape[0]:
        order = 1 if i == a.shape[0] else -1 if j == b.shape[0] else _key_order(ka, i, kb, j)
        if sets_out is not None:
            sets_out[n] = a[i] if order <= 0 else b[j]
            counts_out[n] = (ca[i] if order <= 0 else 0) + (cb[j] if order >= 0 else 0)
        i += order <= 0
        j += order >= 0
        n += 1
    return n


# ---------------------------------------------------------------- hypergraph


@dataclass(frozen=True)
class Hypergraph:
    """Weighted hypergraph of one layer: one net per distinct top-k set.

    nets: [n, k] int, ascending expert ids, -1 padding last; heaviest first, ties lexicographic.
    weights: [n] int64 tokens per net.
    dropped_weight: tokens whose set was dropped by a cap; total_weight: kept + dropped.
    """

    nets: np.ndarray
    weights: np.ndarray
    num_experts: int
    dropped_weight: int
    total_weight: int

    @property
    def dropped_share(self) -> float:
        """Fraction of the tokens whose net was dropped by the cap."""
        return self.dropped_weight / self.total_weight if self.total_weight else 0.0


def _check_cap(max_nets: int | None) -> None:
    if max_nets is not None and max_nets < 0:
        raise InputError(None, "max_nets", f"expected a non-negative count, got {max_nets}")


def _capped(sets: np.ndarray, counts: np.ndarray, num_experts: int, max_nets: int | None) -> Hypergraph:
    """sets: [n, k] in canonical order, counts: [n]. Keeps the ``max_nets`` heaviest sets."""
    _check_cap(max_nets)
    order = _heaviest_first(counts)
    cut = len(order) if max_nets is None else max_nets
    kept = order[:cut]
    weights = np.take(counts, kept)
    total = int(counts.sum())
    return Hypergraph(
        nets=np.take(sets, kept, axis=0),
        weights=weights,
        num_experts=num_experts,
        dropped_weight=total - int(weights.sum()),
        total_weight=total,
    )


def _heaviest_first(counts: np.ndarray) -> np.ndarray:
    """Indices ordering counts: [n] (non-negative) by decreasing count, ties by index; the sort
    key is narrowed to 16 bits when the counts allow (numpy then sorts it by radix)."""
    if len(counts) == 0:
        return np.zeros(0, np.intp)
    top = int(counts.max())
    key = top - counts
    if top < 1 << 16:
        key = key.astype(np.uint16)
    return np.argsort(key, kind="stable")


def hypergraph(topk_ids_layer: np.ndarray, num_experts: int, max_nets: int | None = None) -> Hypergraph:
    """The hypergraph of one layer, optionally capped to the ``max_nets`` heaviest nets.

    topk_ids_layer: [tokens, k], -1 padding.
    """
    sets, counts = distinct_sets(topk_ids_layer, num_experts)
    return _capped(sets, counts, num_experts, max_nets)


# ---------------------------------------------------------------- mergeable summaries


@dataclass(frozen=True)
class LayerSummary:
    """Exact, mergeable routing summary of one layer.

    loads: [E] int64 token-expert pairs per expert.
    coactivation: csr [E, E] int64, symmetric, zero diagonal.
    sets: [n, k] distinct top-k sets in canonical order; set_counts: [n] int64 tokens per set.
    dropped_weight: tokens whose set a streaming cap dropped (0 for an exact summary).
    threshold: highest priority (count / hash) a cap dropped, 0 if none: each kept set stands
    for max(count, threshold) tokens (the priority-sampling estimate, :meth:`net_weights`).
    """

    loads: np.ndarray
    coactivation: sp.csr_matrix
    sets: np.ndarray
    set_counts: np.ndarray
    dropped_weight: int = 0
    threshold: float = 0.0

    @property
    def num_experts(self) -> int:
        return int(self.loads.shape[0])

    @property
    def dropped_share(self) -> float:
        """Fraction of the layer's (non-empty) tokens whose set a streaming cap dropped."""
        total = int(self.set_counts.sum()) + self.dropped_weight
        return self.dropped_weight / total if total else 0.0

    def merge(self, other: LayerSummary, max_nets: int | None = None) -> LayerSummary:
        """The summary of both parts' tokens together, capped to ``max_nets`` sets if given
        (exact without a cap, or while the sets fit it)."""
        if other.num_experts != self.num_experts or other.sets.shape[1] != self.sets.shape[1]:
            raise ValueError("cannot merge layer summaries of different expert counts or k")
        sets, counts = merge_distinct_sets(self.sets, self.set_counts, other.sets, other.set_counts,
                                           self.num_experts)
        merged = LayerSummary(
            loads=self.loads + other.loads,
            coactivation=(self.coactivation + other.coactivation).tocsr(),
            sets=sets,
            set_counts=counts,
            dropped_weight=self.dropped_weight + other.dropped_weight,
            threshold=max(self.threshold, other.threshold),
        )
        return merged.capped(max_nets)

    def capped(self, max_nets: int | None) -> LayerSummary:
        """This summary keeping its ``max_nets`` sets of highest priority ``count / u(set)``
        (:func:`set_hash_unit`; ties by canonical position), in canonical order; the dropped
        sets' tokens are added to ``dropped_weight``. ``None`` or a large enough cap: unchanged."""
        _check_cap(max_nets)
        if max_nets is None or len(self.set_counts) <= max_nets:
            return self
        priority = self.set_counts / set_hash_unit(self.sets)
        keep = _top(priority, max_nets)
        dropped = np.ones(len(priority), bool)
        dropped[keep] = False
        counts = np.take(self.set_counts, keep)
        return LayerSummary(
            loads=self.loads,
            coactivation=self.coactivation,
            sets=np.take(self.sets, keep, axis=0),
            set_counts=counts,
            dropped_weight=self.dropped_weight + (self.set_counts.sum() - counts.sum()).item(),
            threshold=max(self.threshold, float(priority[dropped].max())),
        )

    def net_weights(self) -> np.ndarray:
        """[n] int64 tokens each kept set stands for: its count, or for a set kept by a cap at
        random, the cap's threshold if larger (so light kept sets represent the dropped ones);
        float64 for a :meth:`scaled` summary."""
        if self.set_counts.dtype.kind == "f":
            return np.maximum(self.set_counts, self.threshold)
        return np.maximum(self.set_counts, np.int64(round(self.threshold)))

    def scaled(self, factor: float) -> LayerSummary:
        """This summary with every count (loads, co-activation, set counts, dropped weight and
        threshold) multiplied by ``factor``, as float64: an exponentially decayed window
        (:mod:`placer.online.window`). Priorities keep their order, so a capped merge of a
        scaled summary is the priority sample of the decayed counts."""
        return LayerSummary(
            loads=self.loads * float(factor),
            coactivation=(self.coactivation * float(factor)).tocsr(),
            sets=self.sets,
            set_counts=self.set_counts * float(factor),
            dropped_weight=float(self.dropped_weight) * factor,
            threshold=self.threshold * factor,
        )

    def hypergraph(self, max_nets: int | None = None) -> Hypergraph:
        """The layer's hypergraph, keeping only the ``max_nets`` heaviest nets if given
        (``dropped_weight`` includes the sets a streaming cap dropped)."""
        hg = _capped(self.sets, self.set_counts, self.num_experts, max_nets)
        return replace(hg, dropped_weight=hg.dropped_weight + self.dropped_weight,
                       total_weight=hg.total_weight + self.dropped_weight)


def set_hash_unit(sets: np.ndarray) -> np.ndarray:
    """A hash of each set mapped to (0, 1]: sets [n, k] canonical -> [n] float64.

    A function of the set alone (splitmix64 rounds over its ids as little-endian bytes of the
    id dtype, 8 bytes at a time), so a set gets the same value in every chunk, shard and process.
    """
    ids = sets.astype(sets.dtype.newbyteorder("<"), copy=False)
    spare = -ids.shape[1] % (8 // ids.itemsize)
    if spare:
        ids = np.pad(ids, ((0, 0), (0, spare)), constant_values=PADDING)
    return _hash_unit_kernel(np.ascontiguousarray(ids).view("<u8"))


def _top(priority: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest of priority: [n] (ties by index), ascending; O(n)."""
    if count == 0:
        return np.zeros(0, np.intp)
    threshold = np.partition(priority, len(priority) - count)[len(priority) - count]
    above = priority > threshold
    ties = np.flatnonzero(priority == threshold)[: count - int(above.sum())]
    above[ties] = True
    return np.flatnonzero(above)


@numba.njit(nogil=True, cache=True, inline="always")
def _splitmix64(z):  # pragma: no cover - jitted
    """The splitmix64 finaliser of a uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(nogil=True, cache=True)
def _hash_unit_kernel(words):  # pragma: no cover - jitted
    """words: [n, w] uint64 -> [n] float64 in (0, 1]: splitmix64 rounds over each row's words."""
    out = np.empty(words.shape[0])
    for i in range(words.shape[0]):
        h = np.uint64(0x9E3779B97F4A7C15)
        for w in range(words.shape[1]):
            h = _splitmix64(h ^ words[i, w])
        out[i] = np.float64((h >> np.uint64(11)) + np.uint64(1)) / float(1 << 53)
    return out


def _numpy_layer_summary(topk_ids_layer: np.ndarray, num_experts: int) -> LayerSummary:
    """topk_ids_layer: [tokens, k]. The reference implementation of :func:`layer_summary`."""
    cols = _columns(topk_ids_layer, num_experts)
    sets, counts = _group_columns(cols, None, num_experts)
    return LayerSummary(
        loads=np.bincount(cols.ravel(), minlength=num_experts + 1)[:num_experts].astype(np.int64),
        coactivation=_coactivation_from_columns(cols, num_experts),
        sets=sets,
        set_counts=counts,
    )


#: tokens per block of :func:`_key_kernel` (a block's columns stay in the L1 cache)
KEY_BLOCK = 256


def key_bits(num_experts: int, k: int) -> int | None:
    """Bits per id of the packed keys (:func:`_key_kernel`), or None when a set's ids after the
    first do not fit one uint64 (then the numpy path summarises the layer)."""
    bits = int(num_experts).bit_length()  # ids and the padding value num_experts
    return bits if (k - 1) * bits <= 64 and num_experts <= DENSE_PAIR_LIMIT else None


@numba.njit(nogil=True, cache=True)
def _key_kernel(ids, num_experts, bits, firsts, keys):  # pragma: no cover - jitted
    """Sort each token's ids and pack them, a block of tokens at a time: ids: [tokens, g, k]
    (g layers, -1 padding) -> firsts: [g, tokens] each token's smallest id (num_experts when it
    is all padding) and keys: [g, tokens] uint64 its other ids ascending, ``bits`` each, the
    second smallest in the top field, padding as num_experts. The block's ids are copied into
    columns and sorted by an odd-even transposition network of vectorised min/max over whole
    columns, so (first, key) order is the canonical set order."""
    tokens, g, k = ids.shape
    cols = np.empty((g, k, KEY_BLOCK), ids.dtype)
    packed = np.empty(KEY_BLOCK, np.uint64)
    for lo in range(0, tokens, KEY_BLOCK):
        n = min(KEY_BLOCK, tokens - lo)
        for layer in range(g):
            c = cols[layer]
            for i in range(k):
                col = c[i]
                for t in range(n):
                    v = ids[lo + t, layer, i]
                    col[t] = v if v >= 0 else num_experts
            for round_ in range(k):
                for i in range(round_ % 2, k - 1, 2):
                    a, b = c[i], c[i + 1]
                    for t in range(n):
                        x, y = a[t], b[t]
                        a[t], b[t] = min(x, y), max(x, y)
            packed[:n] = 0
            for i in range(1, k):
                col = c[i]
                for t in range(n):
                    packed[t] = (packed[t] << np.uint64(bits)) | np.uint64(col[t])
            firsts[layer, lo:lo + n] = c[0, :n]
            keys[layer, lo:lo + n] = packed[:n]


@numba.njit(nogil=True, cache=True)
def _bucket_kernel(firsts, keys, num_experts, out):  # pragma: no cover - jitted
    """Counting sort of one layer's keys: [tokens] by firsts: [tokens] into out: [tokens];
    returns bounds: [num_experts + 2], bucket f (first id f) = out[bounds[f]:bounds[f + 1]]."""
    counts = np.zeros((4, num_experts + 2), np.int64)  # four histograms: no store-to-load stalls
    for t in range(len(firsts)):
        counts[t & 3, firsts[t] + 1] += 1
    bounds = np.zeros(num_experts + 2, np.int64)
    for v in range(1, num_experts + 2):
        bounds[v] = bounds[v - 1] + counts[0, v] + counts[1, v] + counts[2, v] + counts[3, v]
    fill = bounds[:-1].copy()
    for t in range(len(firsts)):
        f = firsts[t]
        out[fill[f]] = keys[t]
        fill[f] += 1
    return bounds


@numba.njit(nogil=True, cache=True)
def _distinct_kernel(keys, bounds, k, bits, num_experts, sets_out, counts_out):  # pragma: no cover
    """The distinct sets of one layer, canonical order, from keys: [tokens] bucketed by first id
    (:func:`_bucket_kernel`) and sorted within each bucket. Writes sets_out: [n, k] (-1 padding)
    and counts_out: [n]; returns n. The empty set (bucket num_experts) is left out."""
    mask = np.uint64((1 << bits) - 1)
    n = 0
    for first in range(num_experts):
        i, hi = bounds[first], bounds[first + 1]
        while i < hi:
            key = keys[i]
            j = i + 1
            while j < hi and keys[j] == key:
                j += 1
            sets_out[n, 0] = first
            for c in range(1, k):
                v = np.int64((key >> np.uint64(bits * (k - 1 - c))) & mask)
                sets_out[n, c] = v if v < num_experts else -1
            counts_out[n] = j - i
            n += 1
            i = j
    return n


@numba.njit(nogil=True, cache=True)
def _count_kernel(sets, counts, loads, pairs):  # pragma: no cover - jitted
    """Adds each set's count to loads: [E] of its experts and to pairs: [E, E] (i < j) of its
    pairs. sets: [n, k] canonical (-1 padding last), in canonical order, so consecutive sets
    share their first ids and the hot rows of ``pairs`` stay in cache."""
    for g in range(sets.shape[0]):
        w = counts[g]
        for i in range(sets.shape[1]):
            a = sets[g, i]
            if a < 0:
                break
            loads[a] += w
            for j in range(i + 1, sets.shape[1]):
                b = sets[g, j]
                if b < 0:
                    break
                pairs[a, b] += w


def _fused_layer_summaries(topk_ids: np.ndarray, num_experts: int, bits: int) -> list[LayerSummary]:
    """topk_ids: [tokens, g, k], a few layers. The compiled path of :func:`layer_summaries`:
    sorted packed keys, a counting sort by first id, each bucket sorted (``np.sort``, SIMD
    where the CPU has it), distinct sets, then loads and pair counts from the distinct sets
    (fewer, and in order)."""
    tokens, layers, k = topk_ids.shape
    firsts = np.empty((layers, tokens), topk_ids.dtype)
    keys = np.empty((layers, tokens), np.uint64)
    _key_kernel(topk_ids, num_experts, bits, firsts, keys)
    bucketed = np.empty(tokens, np.uint64)
    sets = np.empty((tokens, k), id_dtype(num_experts))
    counts = np.empty(tokens, np.int64)
    out = []
    for layer in range(layers):
        bounds = _bucket_kernel(firsts[layer], keys[layer], num_experts, bucketed)
        for lo, hi in zip(bounds[:num_experts].tolist(), bounds[1:num_experts + 1].tolist()):
            if hi - lo > 1:
                bucketed[lo:hi].sort()
        n = _distinct_kernel(bucketed, bounds, k, bits, num_experts, sets, counts)
        loads = np.zeros(num_experts, np.int64)
        pairs = np.zeros((num_experts, num_experts), np.int64)
        _count_kernel(sets[:n], counts[:n], loads, pairs)
        out.append(LayerSummary(loads, _symmetric_csr(pairs), sets[:n].copy(), counts[:n].copy()))
    return out


def layer_summaries(topk_ids: np.ndarray, num_experts: int) -> list[LayerSummary]:
    """Summarise each layer of topk_ids: [tokens, g, k] (-1 padding), a few layers of one chunk
    read together (a strided slice of a trace reads its cache lines once, not once a layer)."""
    bits = key_bits(num_experts, topk_ids.shape[2])
    if bits is not None:
        return _fused_layer_summaries(topk_ids, num_experts, bits)
    return [_numpy_layer_summary(topk_ids[:, layer], num_experts) for layer in range(topk_ids.shape[1])]


def layer_summary(topk_ids_layer: np.ndarray, num_experts: int) -> LayerSummary:
    """Summarise one layer of one chunk. topk_ids_layer: [tokens, k], -1 padding."""
    return layer_summaries(topk_ids_layer[:, None, :], num_experts)[0]


def _layer_runs(layer_ids: Sequence[int], size: int, parts: int = 1) -> list[tuple[int, int]]:
    """Runs [lo, hi) of consecutive layer ids, in order: the ids cut into a multiple of
    ``parts`` pieces of near-equal length, at most ``size`` each (so ``parts`` threads taking
    runs in turn get equal work), a piece split further where its ids are not consecutive."""
    pieces = parts * -(-len(layer_ids) // (parts * size))
    runs: list[tuple[int, int]] = []
    for piece in np.array_split(np.asarray(layer_ids, dtype=np.int64), max(pieces, 1)):
        for i, layer in enumerate(piece.tolist()):
            if i and runs[-1][1] == layer:
                runs[-1] = (runs[-1][0], layer + 1)
            else:
                runs.append((layer, layer + 1))
    return runs


@dataclass(frozen=True)
class TraceSummary:
    """Exact, mergeable summaries of the selected layers of a trace.

    layer_ids: trace layer index of each entry of ``layers``.
    """

    num_experts: int
    top_k: int
    num_tokens: int
    layer_ids: tuple[int, ...]
    layers: tuple[LayerSummary, ...]

    @property
    def loads(self) -> np.ndarray:
        """[layers, E] int64 token-expert pairs per expert."""
        return np.stack([layer.loads for layer in self.layers])

    @property
    def dropped_shares(self) -> np.ndarray:
        """[layers] fraction of each layer's tokens whose set a streaming cap dropped."""
        return np.array([layer.dropped_share for layer in self.layers])

    def merge(self, other: TraceSummary, max_nets: int | None = None) -> TraceSummary:
        """The summary of both parts' tokens together (same layers, experts and k), each
        layer capped to ``max_nets`` sets if given (:meth:`LayerSummary.merge`)."""
        if (other.num_experts, other.top_k, other.layer_ids) != (
            self.num_experts,
            self.top_k,
            self.layer_ids,
        ):
            raise ValueError("cannot merge trace summaries of different layers, expert counts or k")
        return replace(
            self,
            num_tokens=self.num_tokens + other.num_tokens,
            layers=tuple(a.merge(b, max_nets) for a, b in zip(self.layers, other.layers)),
        )


def merge_in_order(parts: Iterable[tuple[int, T]], merge: Callable[[T, T], T], fold: bool = False) -> T:
    """Merge ``(tokens, part)`` pairs in order like a binary counter (each token is re-merged
    O(log parts) times), then fold what is left from the left: the merge tree of :func:`summarize`,
    also replayed over shard summaries computed elsewhere (``merge`` may return futures).

    fold: merge every part into the one below at once (a left fold). For capped summaries,
    where a merge costs at most the cap plus the part: memory holds two summaries, not one
    per binary digit. Which parts merge depends only on the parts' token counts and ``fold``.
    """
    stack: list[tuple[int, T]] = []
    for tokens, part in parts:
        stack.append((tokens, part))
        while len(stack) > 1 and (fold or stack[-2][0] <= stack[-1][0]):
            top_tokens, top = stack.pop()
            tokens_below, below = stack[-1]
            stack[-1] = (tokens_below + top_tokens, merge(below, top))
    if not stack:
        raise ValueError("no summaries to combine")
    return reduce(merge, [part for _, part in stack])


def combine(parts: Iterable[TraceSummary], max_nets: int | None = None) -> TraceSummary:
    """Merge chunk summaries, in order, the way :func:`summarize` does (:func:`merge_in_order`,
    folded with a cap). Exact without a cap (then any order gives the same summary); with
    ``max_nets`` the result is a pure function of the parts' sequence."""
    return merge_in_order(
        ((part.num_tokens, part) for part in parts), partial(TraceSummary.merge, max_nets=max_nets),
        fold=max_nets is not None,
    )


def summarize_chunk(
    trace: Trace, layer_ids: Sequence[int], pool: ThreadPoolExecutor, max_nets: int | None = None,
    layers_done: Callable[[int], None] | None = None, workers: int = 1,
) -> TraceSummary:
    """Summary of the layers ``layer_ids`` of one in-memory trace (chunk), layers on ``pool``'s
    ``workers`` threads, each capped to ``max_nets`` sets if given; ``layers_done(n)`` after
    every n layers."""
    ids, experts = trace.topk_ids, trace.num_experts

    def run(bounds: tuple[int, int]) -> list[LayerSummary]:
        return [part.capped(max_nets) for part in layer_summaries(ids[:, bounds[0]:bounds[1], :], experts)]

    parts: list[LayerSummary] = []
    for run_parts in pool.map(run, _layer_runs(layer_ids, LAYER_RUN, workers)):
        parts.extend(run_parts)
        if layers_done is not None:
            layers_done(len(run_parts))
    return TraceSummary(experts, ids.shape[2], ids.shape[0], tuple(layer_ids), tuple(parts))


def summarize(
    source: TraceSource | Trace,
    layers: Sequence[int] | None = None,
    workers: int = 1,
    *,
    max_nets: int | None = None,
    progress: ProgressFn | None = None,
) -> TraceSummary:
    """Walk the trace block by block (:func:`placer.trace.token_blocks`; an exact summary of a
    trace in memory in one pass, the same summary) and summarise the selected layers
    (default: all).

    ``workers`` threads summarise layers of a chunk in parallel (the kernels release the GIL).
    ``max_nets``: keep at most this many distinct sets per layer while streaming (memory
    bounded by the cap and one chunk; see the module docstring); None keeps every set.
    progress: reports (chunk, layer) steps done (:mod:`placer.progress`).
    """
    _check_cap(max_nets)
    num_layers = source.num_layers
    layer_ids = tuple(range(num_layers)) if layers is None else tuple(int(i) for i in layers)
    for layer in layer_ids:
        if not 0 <= layer < num_layers:
            raise InputError(None, "layers", f"layer {layer} is out of range 0..{num_layers - 1}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return combine(_chunk_summaries(source, layer_ids, pool, workers, max_nets, progress), max_nets)


def _chunk_summaries(
    source: TraceSource | Trace, layer_ids: Sequence[int], pool: ThreadPoolExecutor, workers: int,
    max_nets: int | None, progress: ProgressFn | None,
) -> Iterator[TraceSummary]:
    """Each chunk's summary (:func:`summarize_chunk`), no chunk held while the next one is read;
    progress counts (chunk, layer) steps."""
    whole = _in_one_pass(source, max_nets)
    total, done = len(layer_ids) * (1 if whole else len(block_sizes(source.num_tokens))), 0

    def advance(layers: int) -> None:
        nonlocal done
        done += layers
        progress(SUMMARY_STAGE, done, total)

    if progress is not None:
        progress(SUMMARY_STAGE, 0, total)
    for block in [source] if whole else token_blocks(source):
        part = summarize_chunk(block, layer_ids, pool, max_nets, None if progress is None else advance,
                               workers)
        del block
        yield part


def _in_one_pass(source: TraceSource | Trace, max_nets: int | None) -> bool:
    """Whether :func:`summarize` takes ``source`` whole rather than in token blocks: an exact
    summary of a trace in memory (exact merges make the blocks invisible there)."""
    return max_nets is None and isinstance(source, Trace)


# ---------------------------------------------------------------- networkx export


def to_networkx(coactivation_csr: sp.csr_matrix, loads: np.ndarray | None = None) -> nx.Graph:
    """Co-activation graph: nodes 0..E-1 (attribute ``load`` if loads: [E] given), edges ``weight``.

    coactivation_csr: [E, E] symmetric.
    """
    graph = nx.Graph()
    num_experts = coactivation_csr.shape[0]
    if loads is None:
        graph.add_nodes_from(range(num_experts))
    else:
        graph.add_nodes_from((e, {"load": int(load)}) for e, load in enumerate(loads.tolist()))
    upper = sp.triu(coactivation_csr, k=1).tocoo()
    graph.add_weighted_edges_from(zip(upper.row.tolist(), upper.col.tolist(), upper.data.tolist()))
    return graph


def hypergraph_to_networkx(hg: Hypergraph) -> nx.Graph:
    """Bipartite graph: expert nodes 0..E-1 (``bipartite=0``) and net nodes ``("net", j)``
    (``bipartite=1``, attribute ``weight``), an edge between each net and its experts."""
    graph = nx.Graph()
    graph.add_nodes_from(range(hg.num_experts), bipartite=0)
    for j, (net, weight) in enumerate(zip(hg.nets.tolist(), hg.weights.tolist())):
        graph.add_node(("net", j), bipartite=1, weight=weight)
        graph.add_edges_from((("net", j), e) for e in net if e != PADDING)
    return graph
