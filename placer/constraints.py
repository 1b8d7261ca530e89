"""Every constraint a placement must meet: its definition, its check and its error.

One home per constraint; the solvers, the EPLB policy, the placement validator and the
workflow all call these (inputs are plain numbers and arrays, never solver types):

* **slots**: the live GPUs' slots hold every expert at least once (:func:`check_slots`);
* **live GPUs**: GPUs out of service hold nothing (:func:`live_mask`);
* **memory**: a GPU holds at most :func:`memory_slots` experts per layer
  (:func:`resolve_slots`, :func:`check_memory`);
* **balance** EPS: max GPU load <= (1 + EPS) x mean load over the live GPUs
  (:func:`balance_cap`, :func:`gpu_load_lower_bound`, :func:`check_balance`);
* **max nodes per token** M: each token's top-k set spans at most M nodes, on every
  distinct set or, with coverage Q, for at least a share Q of tokens
  (:func:`uncovered_allowance`, :func:`fewest_nodes`, :func:`check_max_nodes`);
* **groups**: each expert group of the model keeps to its own nodes
  (:func:`expert_groups`, :func:`group_mask`, :func:`group_node_counts`,
  :func:`check_groups`).

Errors name the argument (``InputError(source, field, ...)``) or, for a request that is
well formed but impossible, say what is achievable (``InfeasibleError``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from placer.eplb import balanced_packing
from placer.errors import InfeasibleError, InputError
from placer.topology import Model, Topology

__all__ = [
    "Constraints",
    "balance_cap",
    "check_balance",
    "check_groups",
    "check_max_nodes",
    "check_memory",
    "check_slots",
    "expert_groups",
    "fewest_nodes",
    "gpu_load_lower_bound",
    "group_mask",
    "group_node_counts",
    "live_mask",
    "memory_slots",
    "resolve_slots",
    "uncovered_allowance",
]


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: object) -> bool:
    return (_is_integer(value) or isinstance(value, (float, np.floating))) and math.isfinite(value)


@dataclass(frozen=True)
class Constraints:
    """Side constraints shared by every layer (validated on construction).

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

    def __post_init__(self) -> None:
        if self.balance is not None and not (_is_number(self.balance) and self.balance >= 0):
            raise InputError(None, "balance", f"expected a finite number >= 0, got {self.balance!r}")
        if self.max_nodes is not None and not (_is_integer(self.max_nodes) and self.max_nodes >= 1):
            raise InputError(None, "max_nodes", f"expected an integer >= 1, got {self.max_nodes!r}")
        coverage = self.max_nodes_coverage
        if coverage is not None and not (_is_number(coverage) and 0 < coverage <= 1):
            raise InputError(None, "max_nodes_coverage", f"expected a share in (0, 1], got {coverage!r}")
        if coverage is not None and self.max_nodes is None:
            raise InputError(None, "max_nodes_coverage", "needs max_nodes")

    @property
    def limited(self) -> bool:
        """Whether a balance or max-nodes limit is set (quick stand-ins do not enforce them)."""
        return self.balance is not None or self.max_nodes is not None

    def to_dict(self) -> dict:
        """JSON-ready facts (groups as whether they are kept)."""
        return {"balance": self.balance, "max_nodes": self.max_nodes,
                "max_nodes_coverage": self.max_nodes_coverage, "keep_groups": self.groups is not None}


# ---------------------------------------------------------------- slots and live GPUs


def check_slots(num_experts: int, live_gpus: int, slots_per_gpu: int, total_gpus: int | None = None) -> None:
    """Raise unless ``live_gpus x slots_per_gpu`` slots hold every expert once.

    total_gpus: the topology's GPU count when some are excluded (the error then blames
    ``exclude_gpus`` and says which slot count would do).
    """
    if live_gpus * slots_per_gpu >= num_experts:
        return
    if total_gpus is None or total_gpus == live_gpus:
        raise InputError(None, "slots_per_gpu", f"{live_gpus} GPUs x {slots_per_gpu} slots < {num_experts} experts")
    raise InputError(None, "exclude_gpus", f"{live_gpus} live GPUs x {slots_per_gpu} slots = "
                     f"{live_gpus * slots_per_gpu} slots < {num_experts} experts (exclude fewer GPUs "
                     f"or use slots_per_gpu >= {math.ceil(num_experts / live_gpus)})")


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
    if num_experts is not None and slots_per_gpu is not None and count < num_gpus:
        check_slots(num_experts, count, slots_per_gpu, num_gpus)
    return live


# ---------------------------------------------------------------- memory


def memory_slots(topology: Topology, model: Model, reserve: float = 0.0) -> int | None:
    """Expert slots per layer that fit one GPU: floor(free memory / (expert bytes x MoE layers)).

    reserve: share of GPU memory kept for everything else (attention weights,
    activations, KV cache). None when the model records no expert size.
    """
    if model.expert_param_bytes <= 0:
        return None
    free = topology.gpu_memory_bytes * (1.0 - reserve)
    return math.floor(free / (model.expert_param_bytes * model.num_moe_layers))


def resolve_slots(requested: int | Literal["memory"] | None, reserve: float, num_experts: int,
                  topology: Topology, model: Model | None) -> int | None:
    """Slots per GPU for a request: a count, "memory" (as many as fit) or None (the solver's
    default, ceil(E / GPUs)); checked against the experts and against GPU memory.

    reserve: share of GPU memory kept for non-expert use. Raises InputError naming
    ``slots_per_gpu`` or ``memory_reserve``.
    """
    if not 0.0 <= reserve < 1.0:
        raise InputError(None, "memory_reserve", f"expected a share in [0, 1), got {reserve}")
    fits = memory_slots(topology, model, reserve) if model is not None else None
    if requested == "memory":
        if fits is None:
            raise InputError(None, "slots_per_gpu", "'memory' needs a model with expert_param_bytes")
        slots = fits
    elif requested is None or (isinstance(requested, int) and not isinstance(requested, bool) and requested > 0):
        slots = requested
    else:
        raise InputError(None, "slots_per_gpu", f"expected a positive integer or 'memory', got {requested!r}")
    wanted = slots or math.ceil(num_experts / topology.num_gpus)
    if wanted * topology.num_gpus < num_experts:
        raise InputError(None, "slots_per_gpu",
                         f"{wanted} slots x {topology.num_gpus} GPUs cannot hold {num_experts} experts")
    if model is not None:
        check_memory(f"model {model.name}", "slots_per_gpu", wanted, model.num_moe_layers, topology, model,
                     reserve)
    return slots


def check_memory(source: str | None, field: str, experts_per_gpu: int, layers: int, topology: Topology,
                 model: Model, reserve: float = 0.0) -> float | None:
    """Raise unless ``experts_per_gpu`` experts in each of ``layers`` layers fit a GPU's memory
    (less ``reserve``); returns the expert bytes per GPU (None when the model records no size)."""
    if model.expert_param_bytes <= 0:
        return None
    need = experts_per_gpu * model.expert_param_bytes * layers
    free = topology.gpu_memory_bytes * (1.0 - reserve)
    if need > free:
        fits = math.floor(free / (model.expert_param_bytes * layers))
        raise InputError(
            source, field,
            f"{experts_per_gpu} experts per GPU and layer need {need / 1e9:.1f} GB, but "
            f"{free / 1e9:.1f} GB of GPU memory is free for experts ({fits} fit); use more "
            "GPUs, a smaller memory reserve or fewer slots",
        )
    return need


# ---------------------------------------------------------------- balance


def balance_cap(balance: float | None, total_load: float, live_gpus: int) -> float | None:
    """Max GPU load allowed by ``balance`` EPS: (1 + EPS) x total_load / live_gpus (None without one)."""
    return None if balance is None else (1.0 + balance) * total_load / live_gpus


def gpu_load_lower_bound(loads: np.ndarray, live_gpus: int, slots_per_gpu: int) -> float:
    """A lower bound on any placement's max GPU load: hottest expert, mean, and slot pigeonholes.

    loads: [experts] token-expert pairs per expert.
    """
    loads = np.sort(loads)[::-1]
    bound = max(float(loads[0]), float(loads.sum()) / live_gpus)
    # The hottest P+1 experts: two of them share a GPU (if more experts than GPUs), etc.
    for s in range(1, slots_per_gpu):
        if len(loads) > s * live_gpus:
            # Some GPU gets s+1 of the hottest s*P+1 experts; its load >= the s+1 smallest of them.
            top = loads[: s * live_gpus + 1]
            bound = max(bound, float(top[-(s + 1):].sum()))
    return bound


def check_balance(balance: float | None, loads: np.ndarray, live_gpus: int, slots_per_gpu: int, where: str) -> None:
    """Raise InfeasibleError (with the best achievable EPS) when no placement meets ``balance``.

    loads: [experts] token-expert pairs per expert.
    """
    cap = balance_cap(balance, float(loads.sum()), live_gpus)
    if cap is None:
        return
    best = gpu_load_lower_bound(loads, live_gpus, slots_per_gpu)
    if best <= cap + 1e-9:
        return
    mean = float(loads.sum()) / live_gpus
    hottest = int(loads.max())
    raise InfeasibleError(
        f"balance {balance:g} is infeasible on {where}: the cap is "
        f"{cap:.0f} token-expert pairs per GPU (mean {mean:.0f}), but "
        + (f"expert {int(loads.argmax())} alone carries {hottest}" if hottest >= best - 1e-9
           else f"packing {len(loads)} experts into {slots_per_gpu} slots per GPU forces {best:.0f}")
        + f"; the best achievable is balance >= {best / mean - 1:.3f}"
    )


# ---------------------------------------------------------------- max nodes per token


def uncovered_allowance(coverage: float | None, total_weight: float) -> float:
    """Tokens allowed to touch more than max_nodes nodes: floor((1 - Q) x tokens), or -1 when
    the limit is hard (no coverage)."""
    if coverage is None:
        return -1.0
    return float(math.floor((1.0 - coverage) * total_weight + 1e-9))


def fewest_nodes(node_capacity: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Fewest nodes able to hold sets of ``sizes`` experts (largest capacities first): [n] int64.

    node_capacity: [nodes] slots per node; sizes: [n] experts per set.
    """
    reach = np.cumsum(np.sort(node_capacity)[::-1])
    return np.searchsorted(reach, np.asarray(sizes), side="left").astype(np.int64) + 1


def check_max_nodes(max_nodes: int | None, coverage: float | None, nets: np.ndarray, weights: np.ndarray,
                    node_capacity: np.ndarray, where: str) -> None:
    """Raise InfeasibleError when no placement keeps the sets within ``max_nodes`` nodes.

    nets: [n, k] expert ids of each distinct top-k set (-1 padding); weights: [n] tokens
    per set; node_capacity: [nodes] slots per node.
    """
    if max_nodes is None:
        return
    need = (nets >= 0).sum(axis=1)
    least = fewest_nodes(node_capacity, need)
    if coverage is None:
        bad = least > max_nodes
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            largest = int(np.sort(node_capacity)[::-1][:max_nodes].sum())
            uniform = bool((node_capacity == node_capacity.max()).all())
            raise InfeasibleError(
                f"max_nodes {max_nodes} is infeasible on {where}: top-k set {nets[j][nets[j] >= 0].tolist()} "
                + (f"has {need[j]} experts but a node holds only {int(node_capacity.max())}" if uniform else
                   f"has {need[j]} experts but its {max_nodes} largest nodes hold only "
                   f"{largest} on their live GPUs")
            )
        return
    share = weights[least <= max_nodes].sum() / max(1, weights.sum())
    if share + 1e-12 < coverage:
        raise InfeasibleError(
            f"max_nodes {max_nodes} with coverage {coverage:g} is infeasible on {where}: "
            f"at most {share:.3f} of tokens can touch <= {max_nodes} nodes"
        )


# ---------------------------------------------------------------- expert groups


def expert_groups(model: Model | None, num_experts: int) -> np.ndarray:
    """Contiguous expert groups of ``model``: [experts] group id."""
    if model is None or model.num_groups <= 0:
        raise InputError(None, "keep_groups", "needs a model with num_groups > 0")
    if num_experts % model.num_groups:
        raise InputError(None, "num_groups", f"{model.num_groups} does not divide {num_experts} experts")
    return np.arange(num_experts) // (num_experts // model.num_groups)


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


def check_groups(allowed: np.ndarray | None, node_capacity: np.ndarray, node_slots: int) -> None:
    """Raise InfeasibleError when a group does not fit the nodes it is allowed.

    allowed: [experts, nodes] bool (:func:`group_mask`) or None; node_capacity: [nodes]
    slots per node on its live GPUs; node_slots: slots of a node with every GPU live.
    """
    if allowed is None:
        return
    uniform = bool((node_capacity == node_slots).all())
    for node_set in {tuple(np.flatnonzero(row)) for row in allowed}:
        members = int((allowed[:, list(node_set)].all(axis=1)).sum())
        room = int(node_capacity[list(node_set)].sum())
        if members > room:
            raise InfeasibleError(
                f"keep_groups: a group of {members} experts does not fit its {len(node_set)} "
                + (f"node(s) x {node_slots} slots" if uniform else
                   f"node(s) ({room} slots on their live GPUs)")
            )
