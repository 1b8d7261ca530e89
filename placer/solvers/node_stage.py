"""Node stage: which node each expert goes to (spectral start, exact local search, CP-SAT).

The objective is ``cut + alpha * peak node touch`` (cut = sum_j w_j * lambda_j, the expected
inter-node copies / (1 - 1/N)); ``ilp``/``auto`` then run CP-SAT's exact model when the layer
is small (it proves optimality). CP-SAT also repairs a search that left a hard limit violated.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from placer.constraints import uncovered_allowance
from placer.errors import InfeasibleError
from placer.solvers import cpsat
from placer.solvers.options import Options
from placer.solvers.problem import LayerProblem, connectivity
from placer.solvers.refine import SearchSpec, evaluate, local_search
from placer.solvers.spectral import spectral_parts

#: weight of the peak node touch (NIC balance) relative to the cut, per node count
DEFAULT_ALPHA = {2: 0.0, 4: 2.0, 8: 2.0}


#: layers whose exact model is small enough to prove optimality
EXACT_MAX_EXPERTS = 16


def _spec(problem: LayerProblem, alpha: float) -> SearchSpec:
    N = problem.num_nodes
    ptr, inc = problem.incidence()
    c = problem.constraints
    cap = problem.gpu_load_cap()
    load_cap = np.full(N, np.inf) if cap is None else cap * problem.node_live().astype(np.float64)
    allowed = problem.allowed if problem.allowed is not None else np.ones((problem.num_experts, N), bool)
    M = c.max_nodes or 0
    unc = uncovered_allowance(c.max_nodes_coverage if M else None, float(problem.weights.sum()))
    # with GPUs out of service, the proportional counts are a hard cap so no live GPU is left idle
    slot_cap = problem.node_capacity() if problem.live is None else problem.node_counts()
    return SearchSpec(
        ptr,
        inc,
        problem.nets,
        problem.weights.astype(np.float64),
        problem.loads.astype(np.float64),
        slot_cap,
        load_cap,
        allowed,
        float(alpha),
        int(M),
        unc,
    )


def descent_cost(problem: LayerProblem) -> float:
    """Estimated work of one local-search descent (E^2 x nodes swap candidates plus the pin
    pairs of the nets), in units of about a second on one core."""
    E = problem.num_experts
    size = (problem.nets >= 0).sum(axis=1).astype(np.float64)
    pins = float((size * (size - 1)).sum())
    return DESCENT_COST[0] * E * E * problem.num_nodes + DESCENT_COST[1] * pins


def kick_count(problem: LayerProblem, opts: Options) -> int:
    """Kicks of the node-stage iterated local search: ``spectral``: ``opts.kicks``;
    ``auto``/``ilp``: ``max(opts.kicks, 30 x layer budget)``; never more than the estimated
    work fits the layer budget (a quarter of it for ``spectral``, half for the others): the
    first descent (:func:`descent_cost`) and :data:`KICK_COST` of one per kick. Deterministic,
    no clock; small layers (descents of microseconds) always get the full count.
    """
    kicks = opts.kicks if opts.solver == "spectral" else max(opts.kicks, int(opts.layer_budget * 30))
    descent = descent_cost(problem)
    budget = opts.layer_budget * (0.25 if opts.solver == "spectral" else 0.5)
    return int(min(kicks, max(0.0, (budget - descent) / (KICK_COST * descent))))


#: estimated seconds per descent of the node stage: per (E^2 x nodes) and per pin pair
DESCENT_COST = (4e-9, 5e-8)


#: estimated work of one kick (a perturbation and the descent back) as a share of a full
#: descent's (measured 0.15-0.3 at 60-256 experts, 2k-100k tokens: the descent is local)
KICK_COST = 0.3


def node_stage(
    problem: LayerProblem, opts: Options, search: LayerProblem | None = None
) -> tuple[np.ndarray, float, str, list[str]]:
    """Node of every expert [experts], a proven lower bound on the cut, status, messages.

    search: the (sampled) problem the searches run on (default: ``problem``); the bound is
    always on ``problem``.
    """
    N = problem.num_nodes
    alpha = opts.alpha if opts.alpha is not None else DEFAULT_ALPHA.get(N, 2.0)
    messages: list[str] = []
    full = problem
    problem = problem if search is None else search
    counts = problem.node_counts()
    if N == 1:
        return np.zeros(problem.num_experts, np.int64), float(full.weights.sum()), "optimal", messages
    part = spectral_parts(problem.nets, problem.weights, problem.num_experts, counts, problem.allowed, seed=opts.seed)
    spec = _spec(problem, alpha)
    kicks = kick_count(problem, opts)
    part, value = local_search(spec, part, seed=opts.seed, kicks=kicks)
    part = _better_from_contiguous(problem, spec, counts, part, value, opts.seed, kicks)
    _, cut, viol = evaluate(spec, part)
    bound = trivial_bound(full)
    status = "feasible"
    if opts.solver != "spectral":
        if problem.num_experts <= EXACT_MAX_EXPERTS:
            res = cpsat.solve_exact(
                problem, hint=part, dtime=min(30.0, max(2.0, opts.layer_budget)), seed=opts.seed, gpu_level=False
            )
            if res.assignment is not None:
                _, cut_cp, viol_cp = evaluate(spec, res.assignment)
                if viol_cp <= 0 and (cut_cp < cut or viol > 0 or res.optimal):
                    part, cut, viol = res.assignment, cut_cp, viol_cp
                bound = max(bound, res.bound)
                status = "optimal" if res.optimal and cut <= res.bound + 1e-9 else "feasible"
    if viol > 0:
        part, cut, viol = _repair(problem, spec, part, opts)
    return part, bound, status, messages


def search_from(problem: LayerProblem, opts: Options, start: np.ndarray, touch_floor: float = 0.0) -> np.ndarray:
    """The node stage's iterated local search (``cut + alpha x max(peak touch, touch_floor)``,
    :func:`kick_count` kicks) from ``start`` [experts] (a node per expert within the node
    capacities): [experts]; never worse than the start on that objective."""
    alpha = opts.alpha if opts.alpha is not None else DEFAULT_ALPHA.get(problem.num_nodes, 2.0)
    spec = replace(_spec(problem, alpha), touch_floor=float(touch_floor))
    return local_search(spec, start, seed=opts.seed, kicks=kick_count(problem, opts))[0]


def _better_from_contiguous(
    problem: LayerProblem, spec: SearchSpec, counts: np.ndarray, part: np.ndarray, value: float, seed: int, kicks: int
) -> np.ndarray:
    """``part`` [experts], or the local search from the contiguous placement (experts in id
    order filling the nodes' ``counts``) when that start already beats ``value``: routers that
    pick experts by id ranges (groups) can make the baseline a better basin than the spectral one."""
    start = np.repeat(np.arange(problem.num_nodes), counts)
    if problem.allowed is not None and not problem.allowed[np.arange(problem.num_experts), start].all():
        return part
    if evaluate(spec, start)[0] >= value:
        return part
    searched, searched_value = local_search(spec, start, seed=seed, kicks=kicks)
    return searched if searched_value < value else part


def _repair(
    problem: LayerProblem, spec: SearchSpec, part: np.ndarray, opts: Options
) -> tuple[np.ndarray, float, float]:
    """The search left max_nodes / balance violated: ask CP-SAT (which may prove infeasibility)."""
    c = problem.constraints
    res = cpsat.solve_exact(
        problem, hint=part, dtime=min(10.0, max(2.0, opts.layer_budget)), seed=opts.seed, gpu_level=False
    )
    if res.assignment is not None:
        _, cut, viol = evaluate(spec, res.assignment)
        if viol <= 0:
            return res.assignment, cut, viol
    lam = connectivity(problem, part)
    what = (
        f"max_nodes {c.max_nodes}"
        + ("" if c.max_nodes_coverage is None else f" with coverage {c.max_nodes_coverage:g}")
        if c.max_nodes is not None
        else ""
    ) or f"balance {c.balance:g}"
    share = float(problem.weights[lam <= c.max_nodes].sum() / problem.weights.sum()) if c.max_nodes else float("nan")
    proven = res.optimal and res.assignment is None
    raise InfeasibleError(
        f"{what} on layer {problem.layer}: "
        + (
            "CP-SAT proved that no placement satisfies it"
            if proven
            else "no placement satisfying it was found within the budget (not proven impossible)"
        )
        + (
            f"; the best placement found keeps {share:.3f} of tokens within {c.max_nodes} nodes"
            f" (try max_nodes_coverage <= {share:.3f} or a larger max_nodes)"
            if c.max_nodes
            else ""
        )
    )


def trivial_bound(problem: LayerProblem) -> float:
    """Each set spans >= ceil(size / node slots) nodes (with excluded GPUs: the fewest largest
    nodes holding it): a valid but weak lower bound on the cut."""
    size = (problem.nets >= 0).sum(axis=1)
    return float((problem.weights * problem.min_nodes(size)).sum())
