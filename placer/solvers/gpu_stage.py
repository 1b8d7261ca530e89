"""GPU stage: per node, GPUs by longest-first packing (peak load target), then (unless
``Options.spread_search`` is off) local search / CP-SAT on the intra-node spread under that
load cap.
"""

from __future__ import annotations

import numpy as np

from placer.solvers import cpsat
from placer.solvers.options import Options
from placer.solvers.problem import LayerProblem
from placer.solvers.refine import SearchSpec, evaluate, local_search


def longest_first_pack(members: np.ndarray, loads: np.ndarray, gpus: int, slots: int) -> np.ndarray:
    """Longest-first packing with slot limits: local GPU of each member [m]."""
    order = members[np.argsort(-loads[members], kind="stable")]
    gl = np.zeros(gpus)
    gc = np.zeros(gpus, int)
    out = {}
    for e in order:
        free = np.flatnonzero(gc < slots)
        g = free[np.argmin(gl[free])]
        gl[g] += loads[e]
        gc[g] += 1
        out[int(e)] = g
    return np.array([out[int(e)] for e in members], dtype=np.int64)


def _minmax_pack(members: np.ndarray, loads: np.ndarray, gpus: int, slots: int) -> np.ndarray:
    """Local GPU per member minimising the max GPU load (exact for <= 2 slots when full, else LPT)."""
    m = len(members)
    if slots == 2 and m == 2 * gpus:
        order = np.argsort(-loads[members], kind="stable")
        out = np.empty(m, np.int64)
        for g in range(gpus):
            out[order[g]] = g
            out[order[m - 1 - g]] = g
        return out
    return longest_first_pack(members, loads, gpus, slots)


def gpu_stage(problem: LayerProblem, node: np.ndarray, opts: Options, search: LayerProblem | None = None
              ) -> tuple[np.ndarray, list[str]]:
    """GPU of every expert [experts] and messages.

    Each node's experts go to its live GPUs only (local index i = i-th live GPU of the node).
    search: the (sampled) problem the spread search runs on (default: ``problem``).
    """
    problem = problem if search is None else search
    S = problem.slots_per_gpu
    loads = problem.loads
    packs = {}
    peak = 0.0
    for n in range(problem.num_nodes):
        members = np.flatnonzero(node == n)
        live = len(problem.live_gpus(n))
        packs[n] = _minmax_pack(members, loads, live, S)
        for g in range(live):
            peak = max(peak, float(loads[members[packs[n] == g]].sum()))
    cap = problem.gpu_load_cap()
    messages = []
    target = peak
    if cap is not None and peak > cap:
        messages.append(f"layer {problem.layer}: balance cap {cap:.0f} not met (peak {peak:.0f}, "
                        f"lower bound {problem.gpu_load_lower_bound():.0f})")
    elif cap is not None:
        target = cap
    expert_gpu = np.empty(problem.num_experts, np.int64)
    for n in range(problem.num_nodes):
        members = np.flatnonzero(node == n)
        local = packs[n]
        gpus = problem.live_gpus(n)
        if opts.spread_search and S > 1 and len(members) > 1:
            local = _spread_search(problem, members, local, len(gpus), target, opts)
        expert_gpu[members] = gpus[local]
    return expert_gpu, messages


def _spread_search(problem: LayerProblem, members: np.ndarray, local: np.ndarray, G: int, target: float,
                   opts: Options) -> np.ndarray:
    """Local GPU (0..G-1 over the node's G live GPUs) per member minimising the intra-node spread."""
    S = problem.slots_per_gpu
    rows, w = cpsat.merge_projected_array(problem.nets, problem.weights, members, min_size=2)
    if not len(rows):
        return local
    k = int((rows >= 0).sum(axis=1).max())
    nets = np.ascontiguousarray(rows[:, :k], dtype=np.int32)
    rows = np.repeat(np.arange(len(nets)), k)
    cols = nets.ravel()
    keep = cols >= 0
    order = np.argsort(cols[keep], kind="stable")
    ptr = np.zeros(len(members) + 1, np.int64)
    np.cumsum(np.bincount(cols[keep], minlength=len(members)), out=ptr[1:])
    spec = SearchSpec(ptr, rows[keep][order].astype(np.int64), nets, w.astype(np.float64),
                      problem.loads[members].astype(np.float64), np.full(G, S, np.int64),
                      np.full(G, target + 1e-6), np.ones((len(members), G), bool))
    new, _ = local_search(spec, local, seed=opts.seed, kicks=10)
    if opts.solver != "spectral" and len(members) <= 2 * G:
        res = cpsat.gpu_within_node(members, problem.nets, problem.weights, problem.loads, G, S,
                                    target + 1e-6, new, dtime=0.2 * opts.layer_budget / problem.num_nodes,
                                    seed=opts.seed)
        if res.assignment is not None and evaluate(spec, res.assignment)[0] < evaluate(spec, new)[0]:
            new = res.assignment
    return new
