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
every expert id. Distinct sets are counted through an int64 key per set (the
lexicographic rank of the ``k``-combination, exact when ``C(E + k, k) < 2**63``,
e.g. any k <= 10 for E = 256) and otherwise with ``np.unique`` over rows.
A fused numba kernel is used when numba is installed; the numpy path is the
reference and gives identical results.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import networkx as nx
import numpy as np
import scipy.sparse as sp

from placer.errors import InputError
from placer.trace import PADDING, Trace, TraceChunk, TraceSource, id_dtype

try:
    import numba
except ImportError:  # pragma: no cover - numba is optional
    numba = None

DENSE_PAIR_LIMIT = 2048
"""Largest expert count whose pair counts are accumulated in a dense [E+1, E+1] array."""


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


def _upper_to_csr(upper: np.ndarray) -> sp.csr_matrix:
    """upper: [E, E] strictly upper-triangular pair counts. Returns the symmetric csr [E, E] int64."""
    return sp.csr_matrix(upper + upper.T, dtype=np.int64)


def _coactivation_from_columns(cols: np.ndarray, num_experts: int) -> sp.csr_matrix:
    """cols: [k, tokens] from :func:`_columns`. Returns csr [E, E] int64, symmetric, zero diagonal."""
    size = num_experts + 1
    pairs = list(combinations(range(cols.shape[0]), 2))
    if num_experts <= DENSE_PAIR_LIMIT:
        wide = cols.astype(np.intp)
        counts = np.zeros(size * size, np.int64)
        for i, j in pairs:
            counts += np.bincount(wide[i] * size + wide[j], minlength=size * size)
        return _upper_to_csr(counts.reshape(size, size)[:num_experts, :num_experts])
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


# ---------------------------------------------------------------- set keys


@lru_cache(maxsize=32)
def _binomials(num_experts: int, k: int) -> np.ndarray | None:
    """binom: [k + 1, E + k] int64, binom[j, v] = C(v, j); None if C(E + k, k) overflows int64."""
    n = num_experts + k
    if math.comb(n, k) > np.iinfo(np.int64).max:
        return None
    binom = np.zeros((k + 1, n), np.int64)
    binom[0] = 1
    for j in range(1, k + 1):
        binom[j, 1:] = np.cumsum(binom[j - 1, :-1])  # hockey stick: C(v, j) = sum_{u<v} C(u, j-1)
    return binom


@lru_cache(maxsize=32)
def _key_table(num_experts: int, k: int) -> np.ndarray | None:
    """table: [k, E + 1] int64 with key(set) = sum_i table[i, column_i], or None if keys overflow.

    A sorted row c (padding at position i read as E + i) is a k-subset of range(E + k);
    key = -(colex rank of {E + k - 1 - c_i}), so ascending keys = lexicographic rows,
    padding last. The empty set has key 0, every other set a negative key.
    """
    binom = _binomials(num_experts, k)
    if binom is None:
        return None
    n = num_experts + k
    table = np.zeros((k, num_experts + 1), np.int64)
    for i in range(k):
        table[i, :num_experts] = -binom[k - i, n - 1 - np.arange(num_experts)]
    return table


def _keys_from_columns(cols: np.ndarray, table: np.ndarray) -> np.ndarray:
    """cols: [k, tokens], table: [k, E + 1]. Returns keys: [tokens] int64."""
    keys = np.zeros(cols.shape[1], np.int64)
    for i, col in enumerate(cols):
        keys += table[i, col]
    return keys


def _decode(keys: np.ndarray, num_experts: int, k: int) -> np.ndarray:
    """keys: [n] int64 from :func:`_key_table`. Returns sets: [n, k], ascending ids, -1 padding last."""
    binom = _binomials(num_experts, k)
    n = num_experts + k
    rank = -keys
    sets = np.empty((len(keys), k), id_dtype(num_experts))
    for i in range(k):
        element = np.searchsorted(binom[k - i], rank, side="right") - 1
        rank = rank - binom[k - i, element]
        value = n - 1 - element
        sets[:, i] = np.where(value < num_experts, value, PADDING)
    return sets


def _group(values: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values in ascending order with their summed weights.

    values: [m] keys or [m, k] rows; weights: [m] int64 or None (each counts 1).
    Returns (distinct: [n] or [n, k], sums: [n] int64).
    """
    axis = 0 if values.ndim == 2 else None
    if weights is None:
        distinct, counts = np.unique(values, axis=axis, return_counts=True)
        return distinct, counts.astype(np.int64, copy=False)
    distinct, inverse = np.unique(values, axis=axis, return_inverse=True)
    sums = np.zeros(len(distinct), np.int64)
    np.add.at(sums, inverse.reshape(-1), weights)
    return distinct, sums


def _sets_from_keys(
    keys: np.ndarray, weights: np.ndarray | None, num_experts: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """keys: [m] int64 (0 = empty set). Returns (sets: [n, k], counts: [n] int64), canonical order."""
    distinct, counts = _group(keys, weights)
    if len(distinct) and distinct[-1] == 0:
        distinct, counts = distinct[:-1], counts[:-1]
    return _decode(distinct, num_experts, k), counts


def _sets_from_columns(
    cols: np.ndarray, weights: np.ndarray | None, num_experts: int
) -> tuple[np.ndarray, np.ndarray]:
    """cols: [k, tokens] from :func:`_columns`. Returns (sets: [n, k], counts: [n] int64)."""
    k = cols.shape[0]
    table = _key_table(num_experts, k)
    if table is not None:
        return _sets_from_keys(_keys_from_columns(cols, table), weights, num_experts, k)
    rows, counts = _group(cols.T, weights)
    if len(rows) and rows[-1, 0] == num_experts:
        rows, counts = rows[:-1], counts[:-1]
    return np.where(rows < num_experts, rows, PADDING).astype(id_dtype(num_experts)), counts


def distinct_sets(
    topk_ids_layer: np.ndarray, num_experts: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct top-k sets and how many tokens chose each.

    topk_ids_layer: [tokens, k], -1 padding, any order within a row; weights: [tokens] int64 or
    None (each token counts 1). Returns (sets: [n, k] ascending ids with -1 padding last, in
    lexicographic order; counts: [n] int64). All-padding rows are not sets.
    """
    return _sets_from_columns(_columns(topk_ids_layer, num_experts), weights, num_experts)


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
    sets, counts = _sets_from_columns(cols, None, num_experts)
    return LayerSummary(
        loads=np.bincount(cols.ravel(), minlength=num_experts + 1)[:num_experts].astype(np.int64),
        coactivation=_coactivation_from_columns(cols, num_experts),
        sets=sets,
        set_counts=counts,
    )


if numba is not None:

    @numba.njit(nogil=True, cache=True)
    def _fused_kernel(ids, num_experts, table, loads, upper, keys):  # pragma: no cover - jitted
        """One pass over ids: [tokens, k]: loads [E], upper [E, E] pair counts, keys [tokens]."""
        k = ids.shape[1]
        row = np.empty(k, np.int64)
        for t in range(ids.shape[0]):
            for i in range(k):
                row[i] = ids[t, i] if ids[t, i] >= 0 else num_experts
            for i in range(1, k):
                value, j = row[i], i - 1
                while j >= 0 and row[j] > value:
                    row[j + 1] = row[j]
                    j -= 1
                row[j + 1] = value
            key = 0
            for i in range(k):
                a = row[i]
                key += table[i, a]
                if a < num_experts:
                    loads[a] += 1
                    for j in range(i + 1, k):
                        if row[j] < num_experts:
                            upper[a, row[j]] += 1
            keys[t] = key


def _fused_layer_summary(topk_ids_layer: np.ndarray, num_experts: int) -> LayerSummary | None:
    """The numba path of :func:`layer_summary`; None when it does not apply."""
    if numba is None or num_experts > DENSE_PAIR_LIMIT:
        return None
    k = topk_ids_layer.shape[1]
    table = _key_table(num_experts, k)
    if table is None:
        return None
    loads = np.zeros(num_experts, np.int64)
    upper = np.zeros((num_experts, num_experts), np.int64)
    keys = np.empty(topk_ids_layer.shape[0], np.int64)
    _fused_kernel(topk_ids_layer, num_experts, table, loads, upper, keys)
    sets, counts = _sets_from_keys(keys, None, num_experts, k)
    return LayerSummary(loads, _upper_to_csr(upper), sets, counts)


def layer_summary(topk_ids_layer: np.ndarray, num_experts: int) -> LayerSummary:
    """Summarise one layer of one chunk. topk_ids_layer: [tokens, k], -1 padding."""
    fused = _fused_layer_summary(topk_ids_layer, num_experts)
    return fused if fused is not None else _numpy_layer_summary(topk_ids_layer, num_experts)


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
    if isinstance(source, Trace):
        return iter([TraceChunk(source, 0, 0)])
    return source.chunks()


def _push(stack: list[TraceSummary], part: TraceSummary) -> None:
    """Add ``part``, merging similar-sized neighbours so each token is re-merged O(log chunks) times."""
    stack.append(part)
    while len(stack) > 1 and stack[-2].num_tokens <= 2 * stack[-1].num_tokens:
        top = stack.pop()
        stack[-1] = stack[-1].merge(top)


def summarize(
    source: TraceSource | Trace, layers: Sequence[int] | None = None, workers: int = 1
) -> TraceSummary:
    """Walk the trace chunk by chunk and summarise the selected layers (default: all).

    ``workers`` threads summarise layers of a chunk in parallel (the kernels release the GIL).
    """
    num_layers, experts = source.num_layers, source.num_experts
    layer_ids = tuple(range(num_layers)) if layers is None else tuple(int(i) for i in layers)
    for layer in layer_ids:
        if not 0 <= layer < num_layers:
            raise InputError(None, "layers", f"layer {layer} is out of range 0..{num_layers - 1}")
    stack: list[TraceSummary] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in _chunks(source):
            ids = chunk.trace.topk_ids
            parts = pool.map(lambda layer: layer_summary(ids[:, layer, :], experts), layer_ids)
            _push(stack, TraceSummary(experts, ids.shape[2], ids.shape[0], layer_ids, tuple(parts)))
    while len(stack) > 1:
        top = stack.pop()
        stack[-1] = stack[-1].merge(top)
    return stack[0]


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
