"""A bounded-memory, exponentially decayed window over the routing an engine observes.

:class:`RoutingWindow` folds batches of top-k ids ``[tokens, layers, k]`` (any batch size)
into one :class:`placer.graph.LayerSummary` per layer: loads ``[E]``, the co-activation
matrix ``[E, E]`` and at most ``max_nets`` distinct top-k sets with their counts, kept by
priority sampling (the capped merge of :mod:`placer.graph`). Each batch is summarised in
pieces of at most ``chunk_tokens`` tokens (:func:`placer.graph.summarize_chunk`); before a
piece of ``n`` tokens is merged the window's counts are multiplied by ``0.5 ** (n /
half_life_tokens)``: a piece is folded at one instant (its tokens share one weight), so the
window is exact for any batching up to the decay within a piece.

Why exponential decay rather than a sliding window: one summary per layer instead of one per
bucket (memory does not grow with the window's reach), the age of a token is measured in
tokens (so the result does not depend on how the engine batches its steps), and the window
follows a phase change smoothly: after a change, the new routing holds 1 - 0.5 ** (t /
half_life) of the weight t tokens later. Decay scales every count alike, so the priorities
``count / u(set)`` of the kept sets keep their order and a capped merge of the decayed
window with a new piece is the priority sample of the decayed counts.

Memory (:func:`memory_bound`): per layer ``E`` float64 loads, a float64 CSR co-activation
matrix of at most ``E (E - 1)`` entries (int32 column indices), ``max_nets`` sets of ``k``
ids and their float64 counts; plus, while a piece is folded in, that piece's ids and summary
(bounded by ``chunk_tokens``). None of it depends on the number of tokens observed.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

from placer.errors import InputError
from placer.graph import LayerSummary, TraceSummary, summarize_chunk
from placer.trace import Trace, TraceSource, chunk_count, id_dtype, validate_arrays

__all__ = ["WEIGHT_UNIT", "RoutingWindow", "check_topk_ids", "memory_bound", "summary_nbytes"]

#: tokens per integer weight unit in :meth:`RoutingWindow.summary` (decayed counts are fractional)
WEIGHT_UNIT = 1.0 / 16.0


def memory_bound(num_layers: int, num_experts: int, top_k: int, max_nets: int,
                 chunk_tokens: int = 0) -> int:
    """Bytes a :class:`RoutingWindow` of this shape can hold, whatever the tokens observed.

    Per layer: loads 8E, co-activation CSR (float64 data + int32 indices over E (E - 1)
    off-diagonal entries, int32 row pointers E + 1), sets max_nets x k ids (int16 up to 32767
    experts) and max_nets float64 counts. With ``chunk_tokens``, adds the piece being folded
    in: its ids (int16 or int32) and its own summary of at most chunk_tokens sets.
    """
    ids = id_dtype(num_experts).itemsize
    pairs = num_experts * (num_experts - 1)

    def layer(sets: int) -> int:
        return 8 * num_experts + 12 * pairs + 4 * (num_experts + 1) + sets * (top_k * ids + 8)

    state = num_layers * layer(max_nets)
    if chunk_tokens:
        state += chunk_tokens * num_layers * top_k * ids + num_layers * layer(chunk_tokens)
    return state


def _layer_nbytes(part: LayerSummary) -> int:
    c = part.coactivation
    return int(part.loads.nbytes + c.data.nbytes + c.indices.nbytes + c.indptr.nbytes
               + part.sets.nbytes + part.set_counts.nbytes)


def summary_nbytes(layers: tuple[LayerSummary, ...] | list[LayerSummary]) -> int:
    """Bytes held by the arrays of these layer summaries."""
    return sum(_layer_nbytes(part) for part in layers)


def _empty_layer(num_experts: int, top_k: int) -> LayerSummary:
    return LayerSummary(
        loads=np.zeros(num_experts), coactivation=sp.csr_matrix((num_experts, num_experts)),
        sets=np.zeros((0, top_k), id_dtype(num_experts)), set_counts=np.zeros(0),
        dropped_weight=0.0, threshold=0.0,
    )


def check_topk_ids(topk_ids: object, num_layers: int, num_experts: int, top_k: int | None,
                   field: str = "topk_ids") -> np.ndarray:
    """topk_ids as a validated integer array [tokens, layers, k] (-1 padding; torch tensors are
    copied to the host). Raises InputError(field) for a wrong shape, dtype or id."""
    if hasattr(topk_ids, "detach"):
        topk_ids = topk_ids.detach().cpu().numpy()
    ids = np.asarray(topk_ids)
    if ids.dtype.kind not in "iu":
        raise InputError(None, field, f"expected integer expert ids, got dtype {ids.dtype}")
    if ids.ndim != 3 or ids.shape[1] != num_layers or (top_k is not None and ids.shape[2] != top_k):
        want = f"[tokens, {num_layers}, {top_k if top_k is not None else 'k'}]"
        raise InputError(None, field, f"expected shape {want}, got {tuple(ids.shape)}")
    if ids.shape[2] == 0:
        raise InputError(None, field, "expected k >= 1 experts per token")
    if ids.size and (int(ids.min()) < -1 or int(ids.max()) >= num_experts):
        raise InputError(None, field, f"expert ids must lie in -1..{num_experts - 1} (-1 = padding), "
                         f"got {int(ids.min())}..{int(ids.max())}")
    return ids


class RoutingWindow:
    """Exponentially decayed, capped routing summary of every layer (see the module docstring).

    num_layers, num_experts: the model's MoE layers and routed experts; top_k: experts per
    token (None: taken from the first batch); half_life_tokens: tokens after which a token's
    weight has halved; max_nets: distinct top-k sets kept per layer; chunk_tokens: largest
    piece summarised at once (bounds the transient memory of a large batch).
    """

    def __init__(self, num_layers: int, num_experts: int, top_k: int | None = None, *,
                 half_life_tokens: float = 8192.0, max_nets: int = 4096,
                 chunk_tokens: int = 16384) -> None:
        for name, value in (("num_layers", num_layers), ("num_experts", num_experts),
                            ("max_nets", max_nets), ("chunk_tokens", chunk_tokens)):
            if not isinstance(value, (int, np.integer)) or value < (0 if name == "max_nets" else 1):
                raise InputError(None, name, f"expected a positive integer, got {value!r}")
        if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise InputError(None, "top_k", f"expected a positive integer, got {top_k!r}")
        if not (isinstance(half_life_tokens, (int, float)) and half_life_tokens > 0
                and math.isfinite(half_life_tokens)):
            raise InputError(None, "half_life_tokens", f"expected a positive number, got {half_life_tokens!r}")
        self.num_layers, self.num_experts = int(num_layers), int(num_experts)
        self.top_k = None if top_k is None else int(top_k)
        self.half_life_tokens = float(half_life_tokens)
        self.max_nets, self.chunk_tokens = int(max_nets), int(chunk_tokens)
        self.tokens_seen = 0
        self.weight = 0.0  # decayed token count held
        self.layers: list[LayerSummary] = []
        self._peak_nbytes = 0

    @property
    def empty(self) -> bool:
        """No routing observed yet (or all of it decayed to nothing)."""
        return self.tokens_seen == 0 or self.weight <= 0.0

    def observe(self, topk_ids: object) -> None:
        """Fold a batch of routing into the window. topk_ids: [tokens, layers, k] integer expert
        ids, -1 padding (numpy array or torch tensor), no expert twice in a token's top-k. A batch
        of no tokens (or only padding) changes nothing."""
        ids = check_topk_ids(topk_ids, self.num_layers, self.num_experts, self.top_k)
        if self.top_k is None:
            self.top_k = int(ids.shape[2])
        if not (ids >= 0).any():
            return
        ids = validate_arrays(None, {"topk_ids": ids}, num_experts=self.num_experts).topk_ids  # no repeats
        with ThreadPoolExecutor(max_workers=1) as pool:
            for lo in range(0, ids.shape[0], self.chunk_tokens):
                self._fold(ids[lo:lo + self.chunk_tokens], pool)

    def observe_trace(self, trace: Trace | TraceSource) -> None:
        """Fold a whole trace (in memory or streamed from disk shard by shard), in token order:
        seeds the window from a prior trace file."""
        if trace.num_layers != self.num_layers or trace.num_experts > self.num_experts:
            raise InputError(None, "trace", f"{trace.num_layers} layers x {trace.num_experts} experts do not fit "
                             f"a window of {self.num_layers} layers x {self.num_experts} experts")
        chunks = [trace] if isinstance(trace, Trace) else (c.trace for c in trace.chunks())
        for _, part in zip(range(chunk_count(trace)), chunks):
            self.observe(part.topk_ids)

    def _fold(self, ids: np.ndarray, pool: ThreadPoolExecutor) -> None:
        tokens = int(ids.shape[0])
        if tokens == 0:
            return
        trace = Trace(topk_ids=ids, num_experts=self.num_experts)
        part = summarize_chunk(trace, range(self.num_layers), pool, self.max_nets)
        decay = 0.5 ** (tokens / self.half_life_tokens)
        if not self.layers:
            self.layers = [_empty_layer(self.num_experts, ids.shape[2]) for _ in range(self.num_layers)]
        self.layers = [old.scaled(decay).merge(new, self.max_nets) for old, new in zip(self.layers, part.layers)]
        self._peak_nbytes = max(self._peak_nbytes, self.nbytes() + summary_nbytes(part.layers) + ids.nbytes)
        self.tokens_seen += tokens
        self.weight = self.weight * decay + tokens

    def nbytes(self) -> int:
        """Bytes held by the window's arrays now."""
        return summary_nbytes(self.layers)

    @property
    def peak_nbytes(self) -> int:
        """Most bytes the window and a piece being folded in held at once so far."""
        return self._peak_nbytes

    def loads(self) -> np.ndarray:
        """[layers, experts] float64 decayed token-expert pairs per expert (zeros when empty)."""
        if not self.layers:
            return np.zeros((self.num_layers, self.num_experts))
        return np.stack([part.loads for part in self.layers])

    def summary(self) -> TraceSummary:
        """The window as an integer :class:`TraceSummary` for the solvers: every count in units
        of :data:`WEIGHT_UNIT` tokens (rounded; sets that round to zero are left out), so its
        nets, weights and loads feed :func:`placer.solvers.problem.build_problems` unchanged."""
        if self.empty:
            raise InputError(None, "window", "no routing observed yet")
        scale = 1.0 / WEIGHT_UNIT
        layers = []
        for part in self.layers:
            weights = np.rint(part.net_weights() * scale).astype(np.int64)
            keep = weights > 0
            co = part.coactivation.copy()
            co.data = np.rint(co.data * scale)
            layers.append(LayerSummary(
                loads=np.rint(part.loads * scale).astype(np.int64), coactivation=co.astype(np.int64),
                sets=part.sets[keep], set_counts=weights[keep],
                dropped_weight=round(part.dropped_weight * scale), threshold=0.0,
            ))
        return TraceSummary(self.num_experts, int(self.top_k or 1), round(self.weight * scale),
                            tuple(range(self.num_layers)), tuple(layers))
