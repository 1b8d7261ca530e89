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
   co-activated with among those lacking the expert (a node holding it in service scores a
   keep bonus), on the least-loaded GPU (load per copy); finally every expert that stays on
   a GPU keeps its slot (:func:`_fill_slots`, as :func:`placer.migration.arrange_slots`).
"""

from __future__ import annotations

from dataclasses import replace

import numba
import numpy as np
from scipy.optimize import linear_sum_assignment

from placer.solvers.problem import LayerProblem
from placer.solvers.refine import SearchSpec, evaluate, local_search

__all__ = ["anchored_spec", "arrange_layer", "node_objective", "predicted_peak", "primary_gpus", "warm_nodes",
           "with_penalty"]


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


def anchored_spec(problem: LayerProblem, start_node: np.ndarray, alpha: float) -> SearchSpec:
    """The node stage's search spec plus one anchor vertex per node and one 2-pin net per expert
    {expert, anchor of its start node}, of weight 0 (:func:`with_penalty` sets it; see the
    module docstring). Vertices: experts 0..E-1, then anchors E..E+N-1."""
    E, N = problem.num_experts, problem.num_nodes
    k = max(2, problem.nets.shape[1])
    nets = np.full((len(problem.nets) + E, k), -1, dtype=np.int32)
    nets[:len(problem.nets), :problem.nets.shape[1]] = problem.nets
    nets[len(problem.nets):, 0] = np.arange(E)
    nets[len(problem.nets):, 1] = E + start_node
    weights = np.concatenate([problem.weights.astype(np.float64), np.zeros(E)])
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


def with_penalty(spec: SearchSpec, num_experts: int, penalty: float) -> SearchSpec:
    """``spec`` (:func:`anchored_spec`) with the anchor nets weighing ``penalty`` each."""
    weights = spec.weights.copy()
    weights[len(weights) - num_experts:] = penalty
    return replace(spec, weights=weights)


def node_objective(spec: SearchSpec, node: np.ndarray) -> float:
    """cut + alpha x peak node touch of ``node`` [experts] on an :func:`anchored_spec` with
    weightless anchors (the node stage's objective on the window's nets)."""
    anchors = np.arange(len(spec.slot_cap))
    return evaluate(spec, np.concatenate([node, anchors]))[0]


def warm_nodes(spec: SearchSpec, start_node: np.ndarray, kicks: int, seed: int) -> np.ndarray:
    """Node of every expert [experts] after the local search from ``start_node`` [experts] on a
    penalised :func:`anchored_spec` (never worse than the start on the penalised objective)."""
    nodes = len(spec.slot_cap)
    if nodes == 1 or len(spec.nets) == len(start_node):
        return start_node.copy()
    part, _ = local_search(spec, np.concatenate([start_node, np.arange(nodes)]), seed=seed, kicks=kicks)
    return part[:len(start_node)].astype(np.int64)


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
                  one_copy_slots: int, keep_bonus: float) -> np.ndarray:
    """One layer's new slots row [gpus * slots] (see the module docstring, step 3).

    current: [gpus * slots] row in service; node: [E] new node of each primary; start_gpu:
    [E] GPU of each primary in service (:func:`primary_gpus`); loads: [E]; copies: [E]
    copies wanted (each >= 1, summing to at most the slots); affinity: [E, E] co-activation;
    keep_bonus: score (co-activation units) a replica gains by staying on a node that holds
    it in service (inf: replicas stay wherever they can).
    """
    num_slots = len(current)
    gpus = num_slots // slots_per_gpu
    E = len(loads)
    num_nodes = gpus // gpus_per_node
    if len(node) and int(node.max()) >= num_nodes:
        raise ValueError("node ids exceed the cluster")
    primary = _primaries(node, start_gpu, loads, gpus_per_node, one_copy_slots, gpus)
    per_copy = loads / copies
    holds = np.zeros((gpus, E), dtype=np.bool_)
    holds[primary, np.arange(E)] = True
    in_service = np.zeros((gpus, E), dtype=np.bool_)
    filled = np.flatnonzero(current >= 0)
    in_service[filled // slots_per_gpu, current[filled]] = True
    bonus = (in_service.reshape(num_nodes, gpus_per_node, E).any(axis=1)
             * (1e30 if np.isinf(keep_bonus) else keep_bonus))
    score = _node_scores(np.ascontiguousarray(affinity, dtype=np.float64), primary // gpus_per_node, bonus)
    extra = copies - 1
    replicas = np.repeat(np.lexsort((np.arange(E), -per_copy)), extra[np.lexsort((np.arange(E), -per_copy))])
    _place_replicas(replicas.astype(np.int64), holds, np.bincount(primary, minlength=gpus).astype(np.int64),
                    np.bincount(primary, weights=per_copy, minlength=gpus), per_copy, score, in_service,
                    np.ascontiguousarray(affinity, dtype=np.float64), gpus_per_node, slots_per_gpu)
    return _fill_slots(current.reshape(gpus, slots_per_gpu), holds).ravel()


@numba.njit(cache=True, nogil=True)
def _fill_slots(current, holds):  # pragma: no cover - jitted
    """Slots [gpus, slots] holding each GPU's experts (holds [gpus, E]): an expert already in
    one of the GPU's slots in ``current`` [gpus, slots] stays there (its first slot), the others
    fill the free slots in ascending id order (:func:`placer.migration.arrange_slots` per GPU)."""
    gpus, slots = current.shape
    out = np.full((gpus, slots), -1, np.int64)
    for g in range(gpus):
        placed = np.zeros(holds.shape[1], np.bool_)
        for s in range(slots):
            e = current[g, s]
            if e >= 0 and holds[g, e] and not placed[e]:
                out[g, s] = e
                placed[e] = True
        s = 0
        for e in range(holds.shape[1]):
            if holds[g, e] and not placed[e]:
                while s < slots and out[g, s] >= 0:
                    s += 1
                out[g, s] = e
                s += 1
    return out


@numba.njit(cache=True, nogil=True)
def _node_scores(affinity, node, bonus):  # pragma: no cover - jitted
    """[nodes, E] co-activation of each expert with the experts of each node (node [E]) plus
    bonus [nodes, E]; one pass over affinity [E, E] (no BLAS)."""
    score = bonus.astype(np.float64)
    for x in range(affinity.shape[0]):
        for j in range(affinity.shape[1]):
            score[node[j], x] += affinity[x, j]
    return score


@numba.njit(cache=True, nogil=True)
def _place_replicas(replicas, holds, fill, gpu_load, per_copy, score, was_here, affinity, gpus_per_node,
                    slots_per_gpu):  # pragma: no cover - jitted
    """Place one copy of each of ``replicas`` [r] (experts, in order) in place: on the node with
    a GPU that has a free slot and lacks the expert, preferring nodes lacking it, then the
    highest score [nodes, E]; there a GPU that held it in service (``was_here`` [gpus, E]),
    else the least-loaded (ties: lower id). holds [gpus, E], fill [gpus], gpu_load [gpus] and
    score (a node's row grows by the expert's co-activations) are updated."""
    gpus = holds.shape[0]
    nodes = gpus // gpus_per_node
    for i in range(replicas.shape[0]):
        e = replicas[i]
        best, best_fresh, best_score = -1, False, 0.0
        for n in range(nodes):
            room, fresh = False, True
            for g in range(n * gpus_per_node, (n + 1) * gpus_per_node):
                if holds[g, e]:
                    fresh = False
                elif fill[g] < slots_per_gpu:
                    room = True
            if not room:
                continue
            if best < 0 or (fresh and not best_fresh) or (fresh == best_fresh and score[n, e] > best_score):
                best, best_fresh, best_score = n, fresh, score[n, e]
        if best < 0:
            continue
        chosen = -1
        for g in range(best * gpus_per_node, (best + 1) * gpus_per_node):
            if holds[g, e] or fill[g] >= slots_per_gpu:
                continue
            if was_here[g, e]:
                chosen = g
                break
            if chosen < 0 or gpu_load[g] < gpu_load[chosen]:
                chosen = g
        holds[chosen, e] = True
        fill[chosen] += 1
        gpu_load[chosen] += per_copy[e]
        if best_fresh:
            for x in range(score.shape[1]):
                score[best, x] += affinity[x, e]
