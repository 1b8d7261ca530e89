"""Expert co-activation graph and hypergraph of a routing trace, per layer.

Per layer the routing decisions ``topk_ids_layer: [tokens, k]`` give

* loads: [experts] token-expert pairs per expert;
* the co-activation graph: [experts, experts] symmetric, entry (i, j) = tokens
  that chose both i and j;
* the hypergraph: one net per distinct top-k *set*, weighted by its tokens.

Large or sharded traces are summarised chunk by chunk (:func:`summarize`); the
partial summaries (:class:`LayerSummary`, :class:`TraceSummary`) merge exactly,
and a hypergraph is capped only when it is produced from a summary.

Sets are stored in a canonical form and order: ascending ids, ``-1`` padding
last; sets ordered lexicographically with a padded position ranking after
every expert id. Each token's ids are sorted with a sorting network over whole
columns and distinct sets found by one ``np.lexsort`` of the columns. When
numba is installed, :func:`layer_summary` computes loads, pair counts and the
sorted columns in one fused pass instead (identical results; the numpy path is the
reference and the fallback without numba or for E above ``DENSE_PAIR_LIMIT``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import reduce
from itertools import combinations, starmap
from typing import TypeVar

import networkx as nx
import numpy as np
import scipy.sparse as sp

from placer.errors import InputError
from placer.progress import ProgressFn, track
from placer.trace import PADDING, Trace, TraceChunk, TraceSource, chunk_count, id_dtype

try:
    import numba
except ImportError:  # pragma: no cover - numba is optional
    numba = None

T = TypeVar("T")

DENSE_PAIR_LIMIT = 2048
"""Largest expert count whose pair counts are accumulated in a dense [E, E] array."""


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


def _capped(sets: np.ndarray, counts: np.ndarray, num_experts: int, max_nets: int | None) -> Hypergraph:
    """sets: [n, k] in canonical order, counts: [n]. Keeps the ``max_nets`` heaviest sets."""
    if max_nets is not None and max_nets < 0:
        raise InputError(None, "max_nets", f"expected a non-negative count, got {max_nets}")
    order = np.argsort(-counts, kind="stable")
    cut = len(order) if max_nets is None else max_nets
    kept, dropped = order[:cut], order[cut:]
    return Hypergraph(
        nets=sets[kept],
        weights=counts[kept],
        num_experts=num_experts,
        dropped_weight=int(counts[dropped].sum()),
        total_weight=int(counts.sum()),
    )


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
    """

    loads: np.ndarray
    coactivation: sp.csr_matrix
    sets: np.ndarray
    set_counts: np.ndarray

    @property
    def num_experts(self) -> int:
        return int(self.loads.shape[0])

    def merge(self, other: LayerSummary) -> LayerSummary:
        """The summary of both parts' tokens together."""
        if other.num_experts != self.num_experts or other.sets.shape[1] != self.sets.shape[1]:
            raise ValueError("cannot merge layer summaries of different expert counts or k")
        sets, counts = distinct_sets(
            np.concatenate([self.sets, other.sets]),
            self.num_experts,
            np.concatenate([self.set_counts, other.set_counts]),
        )
        return LayerSummary(
            loads=self.loads + other.loads,
            coactivation=(self.coactivation + other.coactivation).tocsr(),
            sets=sets,
            set_counts=counts,
        )

    def hypergraph(self, max_nets: int | None = None) -> Hypergraph:
        """The layer's hypergraph, keeping only the ``max_nets`` heaviest nets if given."""
        return _capped(self.sets, self.set_counts, self.num_experts, max_nets)


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


if numba is not None:

    @numba.njit(nogil=True, cache=True)
    def _fused_kernel(ids, num_experts, loads, pairs, keys):  # pragma: no cover - jitted
        """One pass over ids: [tokens, k] (padding read as E). Adds to loads: [E + 1] and to
        pairs: [E + 1, E + 1] (each unordered pair once, either orientation); writes keys:
        [tokens, ceil(k / 4)] uint64, each token's ids in ascending order packed 16 bits per
        id, id i of the token in word i // 4 (the first id in the top bits)."""
        k = ids.shape[1]
        row = np.empty(k, np.int64)
        rank = np.empty(k, np.int64)
        ordered = np.empty(k, np.int64)
        for t in range(ids.shape[0]):
            for i in range(k):
                row[i] = ids[t, i] if ids[t, i] >= 0 else num_experts
                rank[i] = 0
            for i in range(k):
                loads[row[i]] += 1
                for j in range(i + 1, k):
                    pairs[row[i], row[j]] += 1
                    below = row[i] < row[j]  # branch-free ranks; ties (padding) broken by index
                    rank[j] += below
                    rank[i] += 1 - below
            for i in range(k):
                ordered[rank[i]] = row[i]
            for w in range(keys.shape[1]):
                keys[t, w] = 0
            for i in range(k):
                keys[t, i >> 2] |= np.uint64(ordered[i]) << np.uint64(16 * (3 - (i & 3)))

    @numba.njit(nogil=True, cache=True)
    def _group_kernel(keys, k, num_experts):  # pragma: no cover - jitted
        """Distinct sets of packed keys (:func:`_fused_kernel`), GIL released: a stable LSD
        counting sort of the tokens by ids k-1 .. 0 (the canonical lexicographic order), then one
        pass that counts each distinct set. Returns (sets [n, k] int64 with -1 padding,
        counts [n] int64), canonical order, no empty set."""
        m, words = keys.shape
        radix = num_experts + 1
        offsets = np.zeros((k, radix + 1), np.int64)
        for t in range(m):
            for c in range(k):
                v = (keys[t, c >> 2] >> np.uint64(16 * (3 - (c & 3)))) & np.uint64(0xFFFF)
                offsets[c, v + 1] += 1
        src = keys
        dst = np.empty_like(keys)
        for c in range(k - 1, -1, -1):
            if offsets[c].max() == m:  # every token has the same id here: the pass keeps the order
                continue
            for v in range(1, radix + 1):
                offsets[c, v] += offsets[c, v - 1]
            word = c >> 2
            shift = np.uint64(16 * (3 - (c & 3)))
            for t in range(m):
                v = (src[t, word] >> shift) & np.uint64(0xFFFF)
                p = offsets[c, v]
                offsets[c, v] = p + 1
                for w in range(words):
                    dst[p, w] = src[t, w]
            src, dst = dst, src
        starts = np.empty(m + 1, np.int64)
        n = 0
        for i in range(m):
            new = i == 0
            if not new:
                for w in range(words):
                    if src[i, w] != src[i - 1, w]:
                        new = True
                        break
            if new:
                starts[n] = i
                n += 1
        starts[n] = m
        sets = np.empty((n, k), np.int64)
        counts = np.empty(n, np.int64)
        kept = 0
        for g in range(n):
            first = src[starts[g]]
            if (first[0] >> np.uint64(48)) >= np.uint64(num_experts):  # the empty set (all padding)
                continue
            for c in range(k):
                v = np.int64((first[c >> 2] >> np.uint64(16 * (3 - (c & 3)))) & np.uint64(0xFFFF))
                sets[kept, c] = v if v < num_experts else -1
            counts[kept] = starts[g + 1] - starts[g]
            kept += 1
        return sets[:kept], counts[:kept]


def _fused_layer_summary(topk_ids_layer: np.ndarray, num_experts: int) -> LayerSummary:
    """topk_ids_layer: [tokens, k]. The numba path of :func:`layer_summary`."""
    size = num_experts + 1
    k = topk_ids_layer.shape[1]
    loads = np.zeros(size, np.int64)
    # a pair count is at most the token count: int32 halves the cache footprint of the hot table
    pairs = np.zeros((size, size), np.int32 if topk_ids_layer.shape[0] < 2**31 else np.int64)
    keys = np.empty((topk_ids_layer.shape[0], -(-k // 4)), np.uint64)
    _fused_kernel(topk_ids_layer, num_experts, loads, pairs, keys)
    sets, counts = _group_kernel(keys, k, num_experts)
    return LayerSummary(
        loads[:num_experts], _symmetric_csr(pairs[:num_experts, :num_experts].astype(np.int64)),
        sets.astype(id_dtype(num_experts)), counts,
    )


def layer_summary(topk_ids_layer: np.ndarray, num_experts: int) -> LayerSummary:
    """Summarise one layer of one chunk. topk_ids_layer: [tokens, k], -1 padding."""
    if numba is not None and num_experts <= DENSE_PAIR_LIMIT:
        return _fused_layer_summary(topk_ids_layer, num_experts)
    return _numpy_layer_summary(topk_ids_layer, num_experts)


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

    def merge(self, other: TraceSummary) -> TraceSummary:
        """The summary of both parts' tokens together (same layers, experts and k)."""
        if (other.num_experts, other.top_k, other.layer_ids) != (
            self.num_experts,
            self.top_k,
            self.layer_ids,
        ):
            raise ValueError("cannot merge trace summaries of different layers, expert counts or k")
        return TraceSummary(
            num_experts=self.num_experts,
            top_k=self.top_k,
            num_tokens=self.num_tokens + other.num_tokens,
            layer_ids=self.layer_ids,
            layers=tuple(a.merge(b) for a, b in zip(self.layers, other.layers)),
        )


def _chunks(source: TraceSource | Trace) -> Iterator[TraceChunk]:
    """An in-memory trace is one chunk."""
    if isinstance(source, Trace):
        return iter([TraceChunk(source, 0, 0)])
    return source.chunks()


def merge_in_order(parts: Iterable[tuple[int, T]], merge: Callable[[T, T], T]) -> T:
    """Merge ``(tokens, part)`` pairs in order like a binary counter (each token is re-merged
    O(log parts) times), then fold what is left from the left: the merge tree of :func:`summarize`,
    also replayed over shard summaries computed elsewhere (``merge`` may return futures)."""
    stack: list[tuple[int, T]] = []
    for tokens, part in parts:
        stack.append((tokens, part))
        while len(stack) > 1 and stack[-2][0] <= stack[-1][0]:
            top_tokens, top = stack.pop()
            tokens_below, below = stack[-1]
            stack[-1] = (tokens_below + top_tokens, merge(below, top))
    return reduce(merge, [part for _, part in stack])


def summarize(
    source: TraceSource | Trace, layers: Sequence[int] | None = None, workers: int = 1,
    progress: ProgressFn | None = None,
) -> TraceSummary:
    """Walk the trace chunk by chunk and summarise the selected layers (default: all).

    ``workers`` threads summarise layers of a chunk in parallel (the kernels release the GIL).
    progress: reports (chunk, layer) steps done (:mod:`placer.progress`).
    """
    num_layers, experts = source.num_layers, source.num_experts
    layer_ids = tuple(range(num_layers)) if layers is None else tuple(int(i) for i in layers)
    for layer in layer_ids:
        if not 0 <= layer < num_layers:
            raise InputError(None, "layers", f"layer {layer} is out of range 0..{num_layers - 1}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        steps = len(layer_ids) * chunk_count(source)

        def part(index: int, chunk: TraceChunk) -> tuple[int, TraceSummary]:
            ids = chunk.trace.topk_ids
            parts = pool.map(layer_summary, [ids[:, layer, :] for layer in layer_ids], [experts] * len(layer_ids))
            parts = track(parts, "summarising trace", steps, progress, start=index * len(layer_ids))
            return ids.shape[0], TraceSummary(experts, ids.shape[2], ids.shape[0], layer_ids, tuple(parts))

        return merge_in_order(starmap(part, enumerate(_chunks(source))), TraceSummary.merge)


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
