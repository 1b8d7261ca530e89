"""Warm re-placement of one layer: from the slots in service to a better layout, moving little.

Three steps, each starting from what is in service:

1. :func:`primary_gpus`: every expert's *primary* copy (the one-copy layout the node stage
   works on) is read off the slots in service by a min-cost assignment (an expert already
   on a GPU keeps it there; each GPU holds ``one_copy_slots`` primaries).
2. :func:`warm_nodes`: the node stage's exact local search (:func:`placer.solvers.refine.
   local_search`) runs from those nodes on the window's nets, with a migration penalty:
   one *anchor* vertex per node, allowed only there and weightless, and for every expert a
   2-pin net {expert, anchor of its current node} of weight ``penalty``, so moving an expert
   off its node costs ``penalty`` tokens of cut and only moves that save more are taken.
3. :func:`arrange_layer`: primaries that stayed on their node keep their GPU, arrivals take
   the freed primary slots (heaviest first, least loaded GPU); replica copies in service
   are kept while the expert still wants them (copy counts by load per copy, as EPLB and
   :mod:`placer.solvers.replicas`); missing replicas go to the node they are most
   co-activated with among those lacking the expert, least-loaded GPU; then swaps inside a
   node lower the predicted GPU peak (load per copy); finally every expert that stays on a
   GPU keeps its slot (:func:`placer.migration.arrange_slots`).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from placer.migration import arrange_slots
from placer.placement import EMPTY
from placer.solvers.problem import LayerProblem
from placer.solvers.refine import SearchSpec, evaluate, local_search

__all__ = ["arrange_layer", "node_objective", "predicted_peak", "primary_gpus", "warm_nodes"]


def primary_gpus(row: np.ndarray, num_experts: int, slots_per_gpu: int, gpus_per_node: int,
                 one_copy_slots: int) -> np.ndarray:
    """GPU of each expert's primary copy: [experts], from one layer's slots row: [gpus * slots].

    Min-cost assignment of experts to (GPU, primary slot) pairs, ``one_copy_slots`` per GPU:
    cost 0 where the GPU holds the expert, 1 where another GPU of its node does, 2 elsewhere
    (ties to the lower slot). Every expert gets a primary, even one the row lacks.
    """
    gpus = len(row) // slots_per_gpu
    holds = np.zeros((num_experts, gpus), dtype=bool)
    held = np.flatnonzero(row >= 0)
    holds[row[held], held // slots_per_gpu] = True
    on_node = holds.reshape(num_experts, -1, gpus_per_node).any(axis=2)
    cost = 2.0 - holds - np.repeat(on_node, gpus_per_node, axis=1)
    experts, columns = linear_sum_assignment(np.repeat(cost, one_copy_slots, axis=1))
    result = np.empty(num_experts, dtype=np.int64)
    result[experts] = columns // one_copy_slots
    return result


def _anchored_spec(problem: LayerProblem, start_node: np.ndarray, penalty: float, alpha: float) -> SearchSpec:
    """The node stage's search spec plus one anchor vertex per node and one 2-pin net per expert
    {expert, anchor of its start node} of weight ``penalty`` (see the module docstring)."""
    E, N = problem.num_experts, problem.num_nodes
    k = max(2, problem.nets.shape[1])
    nets = np.full((len(problem.nets) + E, k), -1, dtype=np.int32)
    nets[:len(problem.nets), :problem.nets.shape[1]] = problem.nets
    nets[len(problem.nets):, 0] = np.arange(E)
    nets[len(problem.nets):, 1] = E + start_node
    weights = np.concatenate([problem.weights.astype(np.float64), np.full(E, float(penalty))])
    rows = np.repeat(np.arange(len(nets)), k)
    cols = nets.ravel().astype(np.int64)
    keep = cols >= 0
    rows, cols = rows[keep], cols[keep]
    order = np.argsort(cols, kind="stable")
    ptr = np.zeros(E + N + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=E + N), out=ptr[1:])
    allowed = np.ones((E + N, N), dtype=bool)
    allowed[E:] = np.eye(N, dtype=bool)
    loads = np.concatenate([problem.loads.astype(np.float64), np.zeros(N)])
    return SearchSpec(ptr, rows[order].astype(np.int64), nets, weights, loads,
                      problem.node_capacity() + 1, np.full(N, np.inf), allowed, float(alpha))


def node_objective(problem: LayerProblem, node: np.ndarray, alpha: float) -> tuple[float, float]:
    """(cut + alpha x peak node touch, cut) of ``node`` [experts] on the problem's nets."""
    spec = SearchSpec(*problem.incidence(), problem.nets, problem.weights.astype(np.float64),
                      problem.loads.astype(np.float64), problem.node_capacity(),
                      np.full(problem.num_nodes, np.inf), np.ones((problem.num_experts, problem.num_nodes), bool),
                      float(alpha))
    value, cut, _ = evaluate(spec, node)
    return value, cut


def warm_nodes(problem: LayerProblem, start_node: np.ndarray, penalty: float, alpha: float, kicks: int,
               seed: int) -> np.ndarray:
    """Node of every expert [experts] after the penalised local search from ``start_node``
    [experts] (never worse than the start on the penalised objective)."""
    if problem.num_nodes == 1 or not len(problem.nets):
        return start_node.copy()
    spec = _anchored_spec(problem, start_node, penalty, alpha)
    start = np.concatenate([start_node, np.arange(problem.num_nodes)])
    part, _ = local_search(spec, start, seed=seed, kicks=kicks)
    return part[:problem.num_experts].astype(np.int64)


def predicted_peak(row: np.ndarray, loads: np.ndarray, slots_per_gpu: int) -> float:
    """Busiest GPU's load when every copy serves its expert's load / copies: row [slots]."""
    held = row >= 0
    copies = np.bincount(row[held], minlength=len(loads))
    per_copy = np.where(held, loads[np.where(held, row, 0)] / np.maximum(copies[np.where(held, row, 0)], 1), 0.0)
    return float(per_copy.reshape(-1, slots_per_gpu).sum(axis=1).max())


def _primaries(node: np.ndarray, start_gpu: np.ndarray, loads: np.ndarray, gpus_per_node: int,
               one_copy_slots: int, num_gpus: int) -> np.ndarray:
    """GPU of each expert's primary [experts]: stayers keep ``start_gpu``, arrivals take free
    primary slots of their node, heaviest first onto the least-loaded GPU (ties: lower id)."""
    gpu = start_gpu.copy()
    stays = start_gpu // gpus_per_node == node
    used = np.bincount(start_gpu[stays], minlength=num_gpus)
    load = np.bincount(start_gpu[stays], weights=loads[stays], minlength=num_gpus)
    for e in sorted(np.flatnonzero(~stays), key=lambda e: (-loads[e], e)):
        first = node[e] * gpus_per_node
        local = np.arange(first, first + gpus_per_node)
        free = local[used[local] < one_copy_slots]
        g = int(free[np.argmin(load[free])])
        gpu[e] = g
        used[g] += 1
        load[g] += loads[e]
    return gpu


def arrange_layer(current: np.ndarray, node: np.ndarray, start_gpu: np.ndarray, loads: np.ndarray,
                  copies: np.ndarray, affinity: np.ndarray, gpus_per_node: int, slots_per_gpu: int,
                  one_copy_slots: int, balance_rounds: int) -> np.ndarray:
    """One layer's new slots row [gpus * slots] (see the module docstring, step 3).

    current: [gpus * slots] row in service; node: [E] new node of each primary; start_gpu:
    [E] GPU of each primary in service (:func:`primary_gpus`); loads: [E]; copies: [E]
    copies wanted (each >= 1, summing to at most the slots); affinity: [E, E] co-activation.
    """
    num_slots = len(current)
    gpus = num_slots // slots_per_gpu
    E = len(loads)
    num_nodes = gpus // gpus_per_node
    if len(node) and int(node.max()) >= num_nodes:
        raise ValueError("node ids exceed the cluster")
    primary = _primaries(node, start_gpu, loads, gpus_per_node, one_copy_slots, gpus)
    held: list[list[int]] = [[] for _ in range(gpus)]
    for e in np.argsort(primary, kind="stable"):
        held[primary[e]].append(int(e))
    have = np.ones(E, dtype=np.int64)
    per_copy = loads / copies
    # replicas in service, hottest per copy first, kept while wanted and room remains
    slots = np.flatnonzero(current >= 0)
    for slot in sorted(slots, key=lambda s: (-per_copy[current[s]], s)):
        e, g = int(current[slot]), slot // slots_per_gpu
        if have[e] < copies[e] and e not in held[g] and len(held[g]) < slots_per_gpu:
            held[g].append(e)
            have[e] += 1
    gpu_load = np.array([per_copy[h].sum() if h else 0.0 for h in held])
    on_node = np.zeros((num_nodes, E), dtype=bool)
    for g, members in enumerate(held):
        on_node[g // gpus_per_node, members] = True
    for e in sorted(np.flatnonzero(have < copies), key=lambda e: (-per_copy[e], e)):
        for _ in range(int(copies[e] - have[e])):
            g = _replica_gpu(e, held, on_node, affinity, gpu_load, gpus_per_node, slots_per_gpu)
            if g < 0:
                break
            held[g].append(int(e))
            gpu_load[g] += per_copy[e]
            on_node[g // gpus_per_node, e] = True
            have[e] += 1
    _balance(held, gpu_load, per_copy, gpus_per_node, slots_per_gpu, balance_rounds)
    row = np.full(num_slots, EMPTY, dtype=np.int64)
    for g, members in enumerate(held):
        span = slice(g * slots_per_gpu, (g + 1) * slots_per_gpu)
        row[span] = arrange_slots(members, current[span], slots_per_gpu)
    return row


def _replica_gpu(e: int, held: list[list[int]], on_node: np.ndarray, affinity: np.ndarray,
                 gpu_load: np.ndarray, gpus_per_node: int, slots_per_gpu: int) -> int:
    """GPU for a new copy of ``e``: a node lacking it, most co-activated with it (else any node),
    then its least-loaded GPU with a free slot and without ``e``; -1 when none fits."""
    open_gpus = np.array([g for g, members in enumerate(held) if len(members) < slots_per_gpu and e not in members],
                         dtype=np.int64)
    if not len(open_gpus):
        return -1
    nodes = np.unique(open_gpus // gpus_per_node)
    fresh = nodes[~on_node[nodes, e]]
    if len(fresh):
        score = on_node[fresh].astype(np.float64) @ affinity[e]
        node = int(fresh[np.argmax(score)])
    else:
        node_load = np.array([gpu_load[n * gpus_per_node:(n + 1) * gpus_per_node].sum() for n in nodes])
        node = int(nodes[np.argmin(node_load)])
    local = open_gpus[open_gpus // gpus_per_node == node]
    return int(local[np.argmin(gpu_load[local])])


def _balance(held: list[list[int]], gpu_load: np.ndarray, per_copy: np.ndarray, gpus_per_node: int,
             slots_per_gpu: int, rounds: int) -> None:
    """Swap (or move) copies between GPUs of one node while that lowers the busiest GPU's
    predicted load: each round takes the busiest GPU and the best exchange with another GPU of
    its node (never two copies of an expert on one GPU). In place."""
    for _ in range(rounds):
        g = int(np.argmax(gpu_load))
        first = g // gpus_per_node * gpus_per_node
        best = (gpu_load[g], -1, -1, -1)
        for h in range(first, first + gpus_per_node):
            if h == g:
                continue
            for i, a in enumerate(held[g]):
                if a in held[h]:
                    continue
                options = [(j, b) for j, b in enumerate(held[h]) if b not in held[g]]
                if len(held[h]) < slots_per_gpu:
                    options.append((-1, -1))
                for j, b in options:
                    moved = per_copy[a] - (per_copy[b] if b >= 0 else 0.0)
                    worst = max(gpu_load[g] - moved, gpu_load[h] + moved)
                    if worst < best[0] - 1e-9:
                        best = (worst, h, i, j)
        _, h, i, j = best
        if h < 0:
            return
        a = held[g].pop(i)
        moved = per_copy[a]
        if j >= 0:
            b = held[h].pop(j)
            held[g].append(b)
            moved -= per_copy[b]
        held[h].append(a)
        gpu_load[g] -= moved
        gpu_load[h] += moved
