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

from placer.eplb import balanced_packing
from placer.errors import InfeasibleError, InputError
from placer.graph import TraceSummary


@dataclass(frozen=True)
class Constraints:
    """Side constraints shared by every layer.

    balance: EPS, max GPU load <= (1 + EPS) x mean GPU load (on the input trace), or None.
    max_nodes: M, a token may touch at most M nodes, or None.
    max_nodes_coverage: Q in (0, 1]: the max_nodes limit must hold for >= Q of tokens
        (None = hard over every distinct top-k set).
    groups: [experts] group id per expert when groups are kept on their own nodes, else None.
    """

    balance: float | None = None
    max_nodes: int | None = None
    max_nodes_coverage: float | None = None
    groups: np.ndarray | None = None


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
        reach = np.cumsum(np.sort(self.node_capacity())[::-1])
        return np.searchsorted(reach, np.asarray(sizes), side="left").astype(np.int64) + 1

    @property
    def mean_gpu_load(self) -> float:
        """Mean load over the live GPUs."""
        return float(self.loads.sum()) / self.num_live_gpus

    def gpu_load_cap(self) -> float | None:
        """Max GPU load allowed by ``balance`` (None without a balance constraint)."""
        eps = self.constraints.balance
        return None if eps is None else (1.0 + eps) * self.mean_gpu_load

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
        """CSR expert -> nets: (ptr [experts + 1], nets [nnz]) int64."""
        rows = np.repeat(np.arange(len(self.nets)), self.nets.shape[1])
        cols = self.nets.ravel()
        keep = cols >= 0
        rows, cols = rows[keep], cols[keep]
        order = np.argsort(cols, kind="stable")
        ptr = np.zeros(self.num_experts + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=self.num_experts), out=ptr[1:])
        return ptr, rows[order].astype(np.int64)


def live_mask(excluded_gpus: Sequence[int], num_gpus: int, num_experts: int | None = None,
              slots_per_gpu: int | None = None) -> np.ndarray:
    """Validated [num_gpus] bool mask of the GPUs in service (``excluded_gpus`` out).

    Raises InputError(None, "exclude_gpus", ...) for ids that are not integers in
    [0, num_gpus), for excluding every GPU, and (given ``num_experts`` and
    ``slots_per_gpu``) when the live GPUs' slots cannot hold every expert once.
    """
    live = np.ones(num_gpus, dtype=bool)
    for gpu in excluded_gpus:
        if isinstance(gpu, (bool, np.bool_)) or not isinstance(gpu, (int, np.integer)):
            raise InputError(None, "exclude_gpus", f"expected integer GPU ids, got {gpu!r}")
        if not 0 <= int(gpu) < num_gpus:
            raise InputError(None, "exclude_gpus", f"GPU id {int(gpu)} is out of range: the topology has "
                             f"{num_gpus} GPUs (ids 0..{num_gpus - 1})")
        live[int(gpu)] = False
    count = int(live.sum())
    if count == 0:
        raise InputError(None, "exclude_gpus", f"all {num_gpus} GPUs are excluded: at least one must stay in service")
    if num_experts is not None and slots_per_gpu is not None and count * slots_per_gpu < num_experts:
        raise InputError(None, "exclude_gpus", f"{count} live GPUs x {slots_per_gpu} slots = "
                         f"{count * slots_per_gpu} slots < {num_experts} experts (exclude fewer GPUs "
                         f"or use slots_per_gpu >= {math.ceil(num_experts / count)})")
    return live


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
    if slots * gpus < experts:
        raise InputError(None, "slots_per_gpu", f"{gpus} GPUs x {slots} slots < {experts} experts")
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


def group_mask(groups: np.ndarray, loads: np.ndarray, num_nodes: int, node_slots: int) -> np.ndarray:
    """Nodes each expert may use when every group keeps to its own nodes: [experts, nodes] bool.

    groups: [experts] group ids 0..g-1; loads: [experts] token-expert pairs; node_slots:
    slots of a node. With g <= N each group gets a disjoint, contiguous range of whole
    nodes (group 0 first), as many as :func:`group_node_counts` apportions by group load.
    With g > N (N | g) each group sits whole on one node, g // N groups per node, packed
    by load as EPLB packs groups onto nodes (heaviest first into the lightest open node).
    """
    groups = np.asarray(groups)
    count = int(groups.max()) + 1
    experts = len(groups)
    mask = np.zeros((experts, num_nodes), dtype=bool)
    group_load = np.bincount(groups, weights=loads, minlength=count)
    if count <= num_nodes:
        need = -(-np.bincount(groups, minlength=count) // node_slots)
        first = np.concatenate([[0], np.cumsum(group_node_counts(group_load, need, num_nodes))])
        for g in range(count):
            mask[groups == g, first[g]:first[g + 1]] = True
        return mask
    if count % num_nodes == 0:
        node_of_group = balanced_packing(group_load[None, :], num_nodes)[0][0]
        mask[np.arange(experts), node_of_group[groups]] = True
        return mask
    raise InfeasibleError(
        f"keep_groups: {count} expert groups cannot each own a disjoint set of nodes among "
        f"{num_nodes} nodes (needs at least as many nodes as groups, or the node count to "
        "divide the group count)"
    )


def group_node_counts(group_load: np.ndarray, need: np.ndarray, num_nodes: int) -> np.ndarray:
    """Whole nodes per group: [g] int64 summing to ``num_nodes``, each >= ``need``, minimising
    the max over groups of group_load / nodes.

    group_load: [g] load per group; need: [g] fewest nodes holding each group's experts.
    Greedy from ``need``: each remaining node goes to the group with the highest load per
    node (ties to the group with fewer nodes, then the lower id), which is optimal for the
    max. Raises InfeasibleError when the groups need more than ``num_nodes`` nodes.
    """
    counts = np.asarray(need, dtype=np.int64).copy()
    if counts.sum() > num_nodes:
        raise InfeasibleError(
            f"keep_groups: the {len(counts)} expert groups need {int(counts.sum())} nodes to hold their "
            f"experts (at least {counts.tolist()}), but the topology has {num_nodes} nodes "
            "(use more nodes or more slots per GPU)"
        )
    load = np.asarray(group_load, dtype=np.float64)
    ids = np.arange(len(counts))
    for _ in range(num_nodes - int(counts.sum())):
        counts[np.lexsort((ids, counts, -load / counts))[0]] += 1
    return counts


def check_feasible(problem: LayerProblem) -> None:
    """Raise InfeasibleError (saying what is achievable) for requests no placement meets."""
    c = problem.constraints
    where = f"layer {problem.layer}"
    if problem.allowed is not None:
        capacity = problem.node_capacity()
        for node_set in {tuple(np.flatnonzero(row)) for row in problem.allowed}:
            members = int((problem.allowed[:, list(node_set)].all(axis=1)).sum())
            room = int(capacity[list(node_set)].sum())
            if members > room:
                raise InfeasibleError(
                    f"keep_groups: a group of {members} experts does not fit its {len(node_set)} "
                    + (f"node(s) x {problem.node_slots} slots" if problem.live is None else
                       f"node(s) ({room} slots on their live GPUs)")
                )
    cap = problem.gpu_load_cap()
    if cap is not None:
        hottest = int(problem.loads.max())
        best = gpu_load_lower_bound(problem)
        if best > cap + 1e-9:
            expert = int(problem.loads.argmax())
            raise InfeasibleError(
                f"balance {c.balance:g} is infeasible on {where}: the cap is "
                f"{cap:.0f} token-expert pairs per GPU (mean {problem.mean_gpu_load:.0f}), but "
                + (f"expert {expert} alone carries {hottest}" if hottest >= best - 1e-9
                   else f"packing {problem.num_experts} experts into {problem.slots_per_gpu} slots per GPU forces {best:.0f}")
                + f"; the best achievable is balance >= {best / problem.mean_gpu_load - 1:.3f}"
            )
    if c.max_nodes is not None:
        m = c.max_nodes
        if m < 1:
            raise InputError(None, "max_nodes", f"expected >= 1, got {m}")
        need = (problem.nets >= 0).sum(axis=1)
        min_nodes = problem.min_nodes(need)
        if c.max_nodes_coverage is None:
            bad = min_nodes > m
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise InfeasibleError(
                    f"max_nodes {m} is infeasible on {where}: top-k set {problem.nets[j][problem.nets[j] >= 0].tolist()} "
                    + (f"has {need[j]} experts but a node holds only {problem.node_slots}" if problem.live is None else
                       f"has {need[j]} experts but its {m} largest nodes hold only "
                       f"{int(np.sort(problem.node_capacity())[::-1][:m].sum())} on their live GPUs")
                )
        else:
            share = problem.weights[min_nodes <= m].sum() / max(1, problem.weights.sum())
            if share + 1e-12 < c.max_nodes_coverage:
                raise InfeasibleError(
                    f"max_nodes {m} with coverage {c.max_nodes_coverage:g} is infeasible on {where}: "
                    f"at most {share:.3f} of tokens can touch <= {m} nodes"
                )


def gpu_load_lower_bound(problem: LayerProblem) -> float:
    """A lower bound on any placement's max GPU load: hottest expert, mean, and slot pigeonholes."""
    loads = np.sort(problem.loads)[::-1]
    bound = max(float(loads[0]), problem.mean_gpu_load)
    gpus, slots = problem.num_live_gpus, problem.slots_per_gpu
    # The hottest P+1 experts: two of them share a GPU (if more experts than GPUs), etc.
    for s in range(1, slots):
        if len(loads) > s * gpus:
            # Some GPU gets s+1 of the hottest s*P+1 experts; its load >= the s+1 smallest of them.
            top = loads[: s * gpus + 1]
            bound = max(bound, float(top[-(s + 1):].sum()))
    return bound


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


def node_touch(problem: LayerProblem, expert_node: np.ndarray) -> np.ndarray:
    """Tokens touching each node: [nodes] int64."""
    return net_spans(problem.nets, problem.weights, expert_node, problem.num_nodes)[1]


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

