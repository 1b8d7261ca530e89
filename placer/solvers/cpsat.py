"""OR-Tools CP-SAT models: exact small instances, GPUs within a node.

All models run with a fixed number of CP-SAT workers and a deterministic time
limit (``max_deterministic_time``) so results do not depend on machine speed.
Weights are integer token counts, so objectives are exact integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ortools.sat.python import cp_model

CPSAT_WORKERS = 1  # fixed: results never depend on the caller's process count


@dataclass(frozen=True)
class CpResult:
    """Outcome of one CP-SAT solve.

    assignment: [items] part of each item (or None when no solution); objective / bound:
    CP-SAT's objective value and proven lower bound; optimal: proven.
    """

    assignment: np.ndarray | None
    objective: float
    bound: float
    optimal: bool


def _solver(dtime: float, seed: int) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = CPSAT_WORKERS
    solver.parameters.max_deterministic_time = float(dtime)
    solver.parameters.random_seed = int(seed)
    solver.parameters.log_search_progress = False
    solver.parameters.catch_sigint_signal = False  # Ctrl-C must reach Python (see placer.parallel)
    return solver


def merge_projected(nets: np.ndarray, weights: np.ndarray, members: np.ndarray, min_size: int = 1
                    ) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Project nets onto ``members`` (local ids 0..len-1), merge duplicates, keep size >= min_size.

    nets: [n, k]; weights: [n]; members: [m] expert ids. Returns (sets of local ids, weights [s]).
    """
    rows, w = merge_projected_array(nets, weights, members, min_size)
    sizes = (rows >= 0).sum(axis=1).tolist()
    return [tuple(row[:size]) for row, size in zip(rows.tolist(), sizes)], w


def merge_projected_array(nets: np.ndarray, weights: np.ndarray, members: np.ndarray, min_size: int = 1
                          ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_projected` as arrays: (sets [s, k] ascending local ids, -1 padding last,
    in the order of the tuples (lexicographic, a prefix first); weights [s] int64)."""
    members = np.asarray(members, dtype=np.int64)
    k = nets.shape[1] if nets.ndim == 2 else 0
    m = len(members)
    if len(nets) == 0 or m == 0 or k == 0:
        return np.zeros((0, max(k, 1)), np.int64), np.zeros(0, np.int64)
    size = int(max(int(nets.max()), int(members.max()))) + 2
    local = np.full(size, m, dtype=np.int64)  # m: not a member (sorts last)
    local[members] = np.arange(m)
    proj = local[np.where(nets >= 0, nets, size - 1)]
    proj.sort(axis=1)
    count = (proj < m).sum(axis=1)
    keep = count >= min_size
    proj, count, w = proj[keep], count[keep], np.asarray(weights)[keep].astype(np.int64)
    if len(proj) == 0:
        return np.zeros((0, k), np.int64), np.zeros(0, np.int64)
    proj[proj >= m] = -1  # padding after the ids: (1, 2, -1) sorts before (1, 2, 3) like (1, 2) < (1, 2, 3)
    order = np.lexsort(proj.T[::-1])
    proj, w = proj[order], w[order]
    first = np.ones(len(proj), bool)
    first[1:] = (proj[1:] != proj[:-1]).any(axis=1)
    starts = np.flatnonzero(first)
    return proj[starts], np.add.reduceat(w, starts).astype(np.int64)


def solve_exact(problem, *, alpha: float = 0.0, hint: np.ndarray | None = None, dtime: float = 10.0,
                seed: int = 0, gpu_level: bool = True) -> CpResult:
    """Whole-layer model: node objective ``sum_j w_j lambda_j + alpha * max touch`` (small instances).

    With ``gpu_level`` experts go to GPUs (slots and the balance cap exact); else to nodes
    (slots pooled per node). Side constraints: max_nodes (hard or coverage), groups.
    hint: [experts] GPU (gpu_level) or node of each expert. Returns GPU / node assignment.
    Excluded GPUs (``problem.live``) hold nothing; node slots are the live GPUs' slots.
    """
    E, N, G, S = problem.num_experts, problem.num_nodes, problem.gpus_per_node, problem.slots_per_gpu
    c = problem.constraints
    m = cp_model.CpModel()
    groups_free = problem.allowed is None
    live = problem.live if problem.live is not None else np.ones(N * G, bool)
    capacity = problem.node_capacity()
    # symmetry breaking: interchangeable nodes (same capacity) sorted by their smallest expert,
    # so the r-th node of its capacity class holds no expert below r (likewise live GPUs in a node)
    node_rank = np.array([int((capacity[:n] == capacity[n]).sum()) for n in range(N)])
    if gpu_level:
        gpu_rank = np.array([int(live[(g // G) * G:g].sum()) for g in range(N * G)])
        x = [[m.new_bool_var(f"x{e}_{g}") for g in range(N * G)] for e in range(E)]
        for e in range(E):
            m.add_exactly_one(x[e])
        for g in range(N * G):
            m.add(sum(x[e][g] for e in range(E)) <= (S if live[g] else 0))
        cap = problem.gpu_load_cap()
        if cap is not None:
            for g in range(N * G):
                m.add(sum(int(problem.loads[e]) * x[e][g] for e in range(E)) <= int(np.floor(cap)))
        u = [[sum(x[e][n * G:(n + 1) * G]) for n in range(N)] for e in range(E)]
        if groups_free:  # nodes (and GPUs within them) sorted by their smallest expert
            for e in range(E):
                for g in range(N * G):
                    if node_rank[g // G] > e or gpu_rank[g] > e:
                        m.add(x[e][g] == 0)
    else:
        xn = [[m.new_bool_var(f"u{e}_{n}") for n in range(N)] for e in range(E)]
        for e in range(E):
            m.add_exactly_one(xn[e])
        for n in range(N):
            m.add(sum(xn[e][n] for e in range(E)) <= int(capacity[n]))
        u = xn
        if groups_free:
            for e in range(E):
                for n in range(N):
                    if node_rank[n] > e:
                        m.add(xn[e][n] == 0)
    if problem.allowed is not None:
        for e in range(E):
            for n in range(N):
                if not problem.allowed[e, n]:
                    m.add(u[e][n] == 0)
    sets, w = merge_projected(problem.nets, problem.weights, np.arange(E))
    y = []
    touch = [[] for _ in range(N)]
    lam_terms = []
    for j, members in enumerate(sets):
        yj = [m.new_bool_var(f"y{j}_{n}") for n in range(N)]
        for n in range(N):
            for e in members:
                m.add(yj[n] >= u[e][n])
            touch[n].append(int(w[j]) * yj[n])
        y.append(yj)
        lam_terms.append(int(w[j]) * sum(yj))
        if c.max_nodes is not None and c.max_nodes_coverage is None:
            m.add(sum(yj) <= c.max_nodes)
    if c.max_nodes is not None and c.max_nodes_coverage is not None:
        ok = []
        for j, yj in enumerate(y):
            b = m.new_bool_var(f"ok{j}")
            m.add(sum(yj) <= c.max_nodes).only_enforce_if(b)
            ok.append(int(w[j]) * b)
        m.add(sum(ok) * 1_000_000 >= int(np.ceil(c.max_nodes_coverage * 1_000_000)) * int(w.sum()))
    objective = sum(lam_terms)
    if alpha > 0:
        z = m.new_int_var(0, int(w.sum()), "peak_touch")
        for n in range(N):
            m.add(z >= sum(touch[n]))
        # alpha is scaled to an integer ratio (x100) to keep the objective integral
        objective = 100 * objective + round(alpha * 100) * z
    m.minimize(objective)
    if hint is not None:
        if gpu_level:
            for e in range(E):
                for g in range(N * G):
                    m.add_hint(x[e][g], int(hint[e] == g))
        else:
            for e in range(E):
                for n in range(N):
                    m.add_hint(u[e][n], int(hint[e] == n))
    solver = _solver(dtime, seed)
    status = solver.solve(m)
    scale = 100.0 if alpha > 0 else 1.0
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpResult(None, float("inf"), solver.best_objective_bound / scale, status == cp_model.INFEASIBLE)
    if gpu_level:
        assign = np.array([next(g for g in range(N * G) if solver.value(x[e][g])) for e in range(E)])
    else:
        assign = np.array([next(n for n in range(N) if solver.value(u[e][n])) for e in range(E)])
    return CpResult(assign, solver.objective_value / scale, solver.best_objective_bound / scale,
                    status == cp_model.OPTIMAL)


def gpu_within_node(members: np.ndarray, nets: np.ndarray, weights: np.ndarray, loads: np.ndarray,
                    gpus: int, slots: int, load_cap: float, hint: np.ndarray, *, dtime: float,
                    seed: int) -> CpResult:
    """Assign one node's experts to its GPUs: minimise sum_j w_j * (GPUs of net j) under slots
    and ``max GPU load <= load_cap``. hint: [members] local GPU 0..gpus-1 (feasible)."""
    sets, w = merge_projected(nets, weights, members, min_size=2)
    n = len(members)
    m = cp_model.CpModel()
    x = [[m.new_bool_var("") for _ in range(gpus)] for _ in range(n)]
    for i in range(n):
        m.add_exactly_one(x[i])
    for g in range(gpus):
        m.add(sum(x[i][g] for i in range(n)) <= slots)
        m.add(sum(int(loads[members[i]]) * x[i][g] for i in range(n)) <= int(np.floor(load_cap)))
    obj = []
    for j, loc in enumerate(sets):
        for g in range(gpus):
            y = m.new_bool_var("")
            for i in loc:
                m.add_implication(x[i][g], y)
            obj.append(int(w[j]) * y)
    m.minimize(sum(obj) if obj else 0)
    for i in range(n):
        for g in range(gpus):
            m.add_hint(x[i][g], int(hint[i] == g))
    solver = _solver(dtime, seed)
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpResult(None, float("inf"), float("-inf"), False)
    assign = np.array([next(g for g in range(gpus) if solver.value(x[i][g])) for i in range(n)])
    return CpResult(assign, solver.objective_value, solver.best_objective_bound, status == cp_model.OPTIMAL)
