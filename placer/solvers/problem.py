"""The per-layer placement problem built from a trace, and its exact objective.

One MoE layer is a weighted hypergraph: vertices are experts, nets are the
distinct top-k sets the router produced (identical sets merged, weight = token
count). Placing experts on nodes, a token of net ``j`` crosses to
``lambda_j`` = distinct nodes holding its experts; with sources spread evenly
over nodes the expected node-deduplicated inter-node copies are
``sum_j w_j * lambda_j * (1 - 1/N)`` (the *connectivity* objective). Node ``n``
receives about ``touch_n * (1 - 1/N)`` copies, ``touch_n = sum_{j: n in nodes(j)} w_j``.

Excluded (failed) GPUs have no slots: a node's capacity is its live GPUs x
slots per GPU, and loads are balanced over the live GPUs only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from placer.constraints import (
    Constraints,
    balance_cap,
    check_balance,
    check_groups,
    check_max_nodes,
    check_slots,
    fewest_nodes,
    gpu_load_lower_bound,
    group_mask,
    live_mask,
)
from placer.graph import TraceSummary


@dataclass(frozen=True)
class LayerProblem:
    """One layer's placement problem.

    nets: [n, k] int32 sorted expert ids of each distinct top-k set (-1 padding).
    weights: [n] int64 tokens per distinct set.
    loads: [experts] int64 token-expert pairs per expert (GPU load unit).
    num_tokens: tokens in the layer's trace (incl. tokens with only padding).
    allowed: [experts, nodes] bool, nodes each expert may sit on (groups), or None.
    live: [nodes * gpus_per_node] bool, GPUs in service (None = all); excluded GPUs have no slots.
    """

    num_experts: int
    num_nodes: int
    gpus_per_node: int
    slots_per_gpu: int
    nets: np.ndarray
    weights: np.ndarray
    loads: np.ndarray
    num_tokens: int
    constraints: Constraints = field(default_factory=Constraints)
    allowed: np.ndarray | None = None
    layer: int = 0
    live: np.ndarray | None = None

    @property
    def num_gpus(self) -> int:
        """All GPUs of the topology, excluded ones included."""
        return self.num_nodes * self.gpus_per_node

    @property
    def num_live_gpus(self) -> int:
        return self.num_gpus if self.live is None else int(self.live.sum())

    @property
    def node_slots(self) -> int:
        """Slots of a node with every GPU live (the largest node capacity)."""
        return self.gpus_per_node * self.slots_per_gpu

    def live_gpus(self, node: int | None = None) -> np.ndarray:
        """Ids of the live GPUs (of ``node`` when given), ascending: [live] int64."""
        G = self.gpus_per_node
        ids = np.arange(self.num_gpus) if node is None else np.arange(node * G, (node + 1) * G)
        return ids if self.live is None else ids[self.live[ids]]

    def node_live(self) -> np.ndarray:
        """Live GPUs per node: [nodes] int64."""
        if self.live is None:
            return np.full(self.num_nodes, self.gpus_per_node, dtype=np.int64)
        return self.live.reshape(self.num_nodes, self.gpus_per_node).sum(axis=1).astype(np.int64)

    def node_capacity(self) -> np.ndarray:
        """Slots per node: live GPUs x slots per GPU, [nodes] int64."""
        return self.node_live() * self.slots_per_gpu

    def min_nodes(self, sizes: np.ndarray) -> np.ndarray:
        """Fewest nodes able to hold sets of ``sizes`` experts (largest capacities first): [n] int64."""
        return fewest_nodes(self.node_capacity(), sizes)

    @property
    def mean_gpu_load(self) -> float:
        """Mean load over the live GPUs."""
        return float(self.loads.sum()) / self.num_live_gpus

    def gpu_load_cap(self) -> float | None:
        """Max GPU load allowed by ``balance`` (None without a balance constraint)."""
        return balance_cap(self.constraints.balance, float(self.loads.sum()), self.num_live_gpus)

    def gpu_load_lower_bound(self) -> float:
        """A lower bound on any placement's max GPU load (:func:`placer.constraints.gpu_load_lower_bound`)."""
        return gpu_load_lower_bound(self.loads, self.num_live_gpus, self.slots_per_gpu)

    def node_counts(self) -> np.ndarray:
        """Experts per node [nodes]: proportional to node capacity, as even as possible.

        Largest-remainder apportionment of E over the live slots (remainder ties to the
        lower node); with every GPU live this is E // N each, the first E mod N one more.
        """
        cap = self.node_capacity()
        quota = self.num_experts * cap
        base = quota // cap.sum()
        frac = quota - base * cap.sum()
        extra = self.num_experts - int(base.sum())
        order = np.lexsort((np.arange(self.num_nodes), -frac))
        counts = base.astype(np.int64)
        counts[order[:extra]] += 1
        return counts

    def incidence(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR expert -> nets: (ptr [experts + 1], nets [nnz]) int64 (:func:`expert_incidence`)."""
        return expert_incidence(self.nets, self.num_experts)


def expert_incidence(nets: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR expert -> nets of nets [n, k] (-1 padding): (ptr [experts + 1], net ids [pins]) int64,
    each expert's nets in ascending order."""
    return _incidence(np.ascontiguousarray(nets), int(num_experts))


@nb.njit(cache=True, nogil=True)
def _incidence(nets, num_experts):
    """A counting sort of the pins by expert (net order kept)."""
    n, k = nets.shape
    ptr = np.zeros(num_experts + 1, np.int64)
    for j in range(n):
        for i in range(k):
            if nets[j, i] >= 0:
                ptr[nets[j, i] + 1] += 1
    for e in range(num_experts):
        ptr[e + 1] += ptr[e]
    fill = ptr[:-1].copy()
    inc = np.empty(ptr[num_experts], np.int64)
    for j in range(n):
        for i in range(k):
            e = nets[j, i]
            if e >= 0:
                inc[fill[e]] = j
                fill[e] += 1
    return ptr, inc


def build_problems(
    summary: TraceSummary,
    num_nodes: int,
    gpus_per_node: int,
    slots_per_gpu: int | None = None,
    constraints: Constraints | None = None,
    excluded_gpus: Sequence[int] = (),
) -> list[LayerProblem]:
    """One :class:`LayerProblem` per summarised layer; checks the request is feasible.

    excluded_gpus: GPU ids out of service (no slots); slots_per_gpu defaults to
    ceil(E / live GPUs). Raises InputError for impossible shapes (too few slots,
    bad exclusions) and InfeasibleError for constraints no placement can meet
    (with what is achievable).
    """
    constraints = constraints or Constraints()
    experts = summary.num_experts
    gpus = num_nodes * gpus_per_node
    live = live_mask(excluded_gpus, gpus, experts, slots_per_gpu)
    live_count = int(live.sum())
    slots = slots_per_gpu if slots_per_gpu is not None else math.ceil(experts / live_count)
    check_slots(experts, gpus, slots)
    problems = []
    for layer, part in zip(summary.layer_ids, summary.layers):
        allowed = (None if constraints.groups is None
                   else group_mask(constraints.groups, part.loads, num_nodes, gpus_per_node * slots))
        problem = LayerProblem(
            experts, num_nodes, gpus_per_node, slots, part.sets.astype(np.int32), part.net_weights(),
            part.loads, summary.num_tokens, constraints, allowed, layer,
            None if live.all() else live,
        )
        check_feasible(problem)
        problems.append(problem)
    return problems


def check_feasible(problem: LayerProblem) -> None:
    """Raise InfeasibleError (saying what is achievable) for requests no placement meets."""
    c = problem.constraints
    where = f"layer {problem.layer}"
    check_groups(problem.allowed, problem.node_capacity(), problem.node_slots)
    check_balance(c.balance, problem.loads, problem.num_live_gpus, problem.slots_per_gpu, where)
    check_max_nodes(c.max_nodes, c.max_nodes_coverage, problem.nets, problem.weights, problem.node_capacity(), where)


@nb.njit(cache=True, nogil=True)
def _spans(nets, weights, part, parts):
    """One pass over nets [n, k] (-1 padding): parts spanned by each net [n] int64 and the
    weight of the nets touching each part [parts] int64 (part: [experts] part of each expert)."""
    n, k = nets.shape
    lam = np.zeros(n, np.int64)
    touch = np.zeros(parts, np.int64)
    seen = np.empty(k, np.int64)
    for j in range(n):
        m = 0
        for i in range(k):
            e = nets[j, i]
            if e < 0:
                continue
            p = part[e]
            new = True
            for x in range(m):
                if seen[x] == p:
                    new = False
                    break
            if new:
                seen[m] = p
                m += 1
                touch[p] += weights[j]
        lam[j] = m
    return lam, touch


def net_spans(nets: np.ndarray, weights: np.ndarray, part: np.ndarray, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """(parts spanned by each net [n] int64, weight touching each part [parts] int64).

    nets: [n, k] expert ids, -1 padding; weights: [n] integer; part: [experts] part ids 0..parts-1.
    """
    return _spans(np.ascontiguousarray(nets), np.ascontiguousarray(weights, dtype=np.int64),
                  np.ascontiguousarray(part, dtype=np.int64), int(parts))


def connectivity(problem: LayerProblem, expert_node: np.ndarray) -> np.ndarray:
    """Nodes spanned by each net: [n] int64 (expert_node: [experts])."""
    return net_spans(problem.nets, problem.weights, expert_node, problem.num_nodes)[0]


# ---------------------------------------------------------------- net sampling (large layers)


@dataclass(frozen=True)
class NetSample:
    """How a layer's nets were thinned for the search (:func:`sample_nets`).

    nets / kept: distinct sets in the layer / in the sample; rate: r (nets lighter than r
    tokens kept with probability w / r at weight r); exact_share: token share of the nets
    kept with their own weight (w >= r); dropped_share: token share of the nets left out.
    """

    nets: int
    kept: int
    rate: int
    exact_share: float
    dropped_share: float


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def sample_nets(problem: LayerProblem, max_nets: int, seed: int = 0) -> tuple[LayerProblem, NetSample | None]:
    """The layer with its nets thinned to about ``max_nets`` (unchanged, None, if it has no more).

    Probability-proportional-to-size sampling with integer weights: with the smallest integer
    rate r whose expected sample size sum_j min(1, w_j / r) is <= max_nets, a net of weight
    w_j >= r is kept as it is and a lighter one is kept with probability w_j / r at weight r
    (a deterministic hash of its index and ``seed``). For every placement the sample's cut
    and node touches are unbiased estimates of the layer's, so the search optimises the same
    objective on fewer nets; at scale (1M tokens, nearly every top-k set distinct) it is a
    uniform sample re-weighted by r.
    """
    w = problem.weights
    n = len(w)
    if n <= max_nets:
        return problem, None
    total = int(w.sum())
    wf = w.astype(np.float64)
    lo, hi = 1, max(1, -(-total // max_nets))
    while lo < hi:  # smallest r with expected count <= max_nets (the count falls as r grows)
        mid = (lo + hi) // 2
        if np.minimum(1.0, wf / mid).sum() <= max_nets:
            hi = mid
        else:
            lo = mid + 1
    r = lo
    key = np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & ((1 << 64) - 1))
    u = (_splitmix(np.arange(n, dtype=np.uint64) ^ key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    exact = w >= r
    keep = exact | (u * r < wf)
    new_w = np.where(exact, w, r)[keep].astype(np.int64)
    sampled = LayerProblem(
        problem.num_experts, problem.num_nodes, problem.gpus_per_node, problem.slots_per_gpu,
        problem.nets[keep], new_w, problem.loads, problem.num_tokens, problem.constraints,
        problem.allowed, problem.layer, problem.live,
    )
    info = NetSample(n, int(keep.sum()), r, float(w[exact].sum() / total) if total else 0.0,
                     float(w[~keep].sum() / total) if total else 0.0)
    return sampled, info

