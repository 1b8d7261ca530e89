"""The per-layer placement problem built from a trace, and its exact objective.

One MoE layer is a weighted hypergraph: vertices are experts, nets are the
distinct top-k sets the router produced (identical sets merged, weight = token
count). Placing experts on nodes, a token of net ``j`` crosses to
``lambda_j`` = distinct nodes holding its experts; with sources spread evenly
over nodes the expected node-deduplicated inter-node copies are
``sum_j w_j * lambda_j * (1 - 1/N)`` (the *connectivity* objective). Node ``n``
receives about ``touch_n * (1 - 1/N)`` copies, ``touch_n = sum_{j: n in nodes(j)} w_j``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def node_slots(self) -> int:
        return self.gpus_per_node * self.slots_per_gpu

    @property
    def mean_gpu_load(self) -> float:
        return float(self.loads.sum()) / self.num_gpus

    def gpu_load_cap(self) -> float | None:
        """Max GPU load allowed by ``balance`` (None without a balance constraint)."""
        eps = self.constraints.balance
        return None if eps is None else (1.0 + eps) * self.mean_gpu_load

    def node_counts(self) -> np.ndarray:
        """Experts per node [nodes]: as even as possible (spread of the E mod N extra ones)."""
        base, extra = divmod(self.num_experts, self.num_nodes)
        return np.full(self.num_nodes, base, dtype=np.int64) + (np.arange(self.num_nodes) < extra)

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


def build_problems(
    summary: TraceSummary,
    num_nodes: int,
    gpus_per_node: int,
    slots_per_gpu: int | None = None,
    constraints: Constraints | None = None,
) -> list[LayerProblem]:
    """One :class:`LayerProblem` per summarised layer; checks the request is feasible.

    Raises InputError for impossible shapes (too few slots) and InfeasibleError
    for constraints no placement can meet (with what is achievable).
    """
    constraints = constraints or Constraints()
    experts = summary.num_experts
    gpus = num_nodes * gpus_per_node
    slots = slots_per_gpu if slots_per_gpu is not None else math.ceil(experts / gpus)
    if slots * gpus < experts:
        raise InputError(None, "slots_per_gpu", f"{gpus} GPUs x {slots} slots < {experts} experts")
    allowed = group_mask(constraints.groups, experts, num_nodes) if constraints.groups is not None else None
    problems = []
    for layer, part in zip(summary.layer_ids, summary.layers):
        problem = LayerProblem(
            experts, num_nodes, gpus_per_node, slots, part.sets.astype(np.int32), part.set_counts,
            part.loads, summary.num_tokens, constraints, allowed, layer,
        )
        check_feasible(problem)
        problems.append(problem)
    return problems


def group_mask(groups: np.ndarray, experts: int, num_nodes: int) -> np.ndarray:
    """Nodes each expert may use when every group keeps to its own nodes: [experts, nodes] bool.

    Groups (ids 0..g-1) get disjoint, contiguous node ranges of N // g nodes
    (needs g <= N and g | N); the experts of a group must fit those nodes.
    """
    groups = np.asarray(groups)
    count = int(groups.max()) + 1
    if count > num_nodes or num_nodes % count:
        raise InfeasibleError(
            f"keep_groups: {count} expert groups cannot each own a disjoint set of nodes "
            f"among {num_nodes} nodes (needs the group count to divide the node count)"
        )
    per = num_nodes // count
    mask = np.zeros((experts, num_nodes), dtype=bool)
    for e in range(experts):
        g = int(groups[e])
        mask[e, g * per:(g + 1) * per] = True
    return mask


def check_feasible(problem: LayerProblem) -> None:
    """Raise InfeasibleError (saying what is achievable) for requests no placement meets."""
    c = problem.constraints
    where = f"layer {problem.layer}"
    if problem.allowed is not None:
        for node_set in {tuple(np.flatnonzero(row)) for row in problem.allowed}:
            members = int((problem.allowed[:, list(node_set)].all(axis=1)).sum())
            if members > len(node_set) * problem.node_slots:
                raise InfeasibleError(
                    f"keep_groups: a group of {members} experts does not fit its {len(node_set)} "
                    f"node(s) x {problem.node_slots} slots"
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
        min_nodes = -(-need // problem.node_slots)
        if c.max_nodes_coverage is None:
            bad = min_nodes > m
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise InfeasibleError(
                    f"max_nodes {m} is infeasible on {where}: top-k set {problem.nets[j][problem.nets[j] >= 0].tolist()} "
                    f"has {need[j]} experts but a node holds only {problem.node_slots}"
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
    gpus, slots = problem.num_gpus, problem.slots_per_gpu
    # The hottest P+1 experts: two of them share a GPU (if more experts than GPUs), etc.
    for s in range(1, slots):
        if len(loads) > s * gpus:
            # Some GPU gets s+1 of the hottest s*P+1 experts; its load >= the s+1 smallest of them.
            top = loads[: s * gpus + 1]
            bound = max(bound, float(top[-(s + 1):].sum()))
    return bound


def connectivity(problem: LayerProblem, expert_node: np.ndarray) -> np.ndarray:
    """Nodes spanned by each net: [n] int64 (expert_node: [experts])."""
    nodes = np.where(problem.nets >= 0, expert_node[np.maximum(problem.nets, 0)], -1)
    nodes.sort(axis=1)
    first = nodes[:, :1] >= 0
    later = (nodes[:, 1:] != nodes[:, :-1]) & (nodes[:, 1:] >= 0)
    return first.sum(axis=1) + later.sum(axis=1)


def node_touch(problem: LayerProblem, expert_node: np.ndarray) -> np.ndarray:
    """Tokens touching each node: [nodes] int64."""
    nodes = np.where(problem.nets >= 0, expert_node[np.maximum(problem.nets, 0)], -1)
    touch = np.zeros(problem.num_nodes, dtype=np.int64)
    for n in range(problem.num_nodes):
        touch[n] = problem.weights[(nodes == n).any(axis=1)].sum()
    return touch


def layer_cost(problem: LayerProblem, expert_node: np.ndarray) -> dict:
    """Exact train-trace figures of a node assignment: cut (sum w*lambda), peak touch, max-nodes share."""
    lam = connectivity(problem, expert_node)
    touch = node_touch(problem, expert_node)
    out = {"cut": int((problem.weights * lam).sum()), "peak_touch": int(touch.max())}
    if problem.constraints.max_nodes is not None:
        ok = lam <= problem.constraints.max_nodes
        out["max_nodes_share"] = float(problem.weights[ok].sum() / problem.weights.sum())
    return out
