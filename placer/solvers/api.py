"""Entry point: ``place(trace, topology, ...) -> (Placement, SolveReport)``.

Per layer (a pure function, :func:`solve_layer`, run in parallel processes):

1. node stage: spectral embedding + capacity-exact assignment, then iterated
   local search on the exact objective ``cut + alpha * peak node touch``
   (cut = sum_j w_j * lambda_j, the expected inter-node copies / (1 - 1/N));
   ``ilp``/``auto`` then run CP-SAT: an exact model when the layer is small
   (proves optimality), otherwise two-node LNS neighbourhoods that only accept
   strict improvements;
2. GPU stage: per node, GPUs by longest-first packing (peak load target), then
   local search / CP-SAT on the intra-node spread under that load cap.

Excluded GPUs (``exclude_gpus``, e.g. failed ones in elastic serving) get no
slots: node capacities are live GPUs x slots per GPU, experts are spread over
nodes in proportion to them, the GPU stage and the replicas use live GPUs only.
The placement keeps the full GPU count (excluded GPUs' slots stay empty) and
records the sorted ids as ``metadata["excluded_gpus"]``.

Every budget is deterministic (kick counts, CP-SAT deterministic time, fixed
CP-SAT workers), so the same inputs and seed give the same phy2log for any
``workers`` and machine speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import numpy as np

from placer.eplb import rebalance_experts
from placer.errors import InfeasibleError, InputError
from placer.graph import TraceSummary, summarize
from placer.parallel import Interrupted, interruptible_map
from placer.placement import EMPTY, Placement, from_expert_gpu
from placer.progress import ProgressFn
from placer.solvers import cpsat
from placer.solvers.groups import solve_blocks, split_blocks
from placer.solvers.problem import (
    Constraints,
    LayerProblem,
    NetSample,
    build_problems,
    connectivity,
    gpu_load_lower_bound,
    live_mask,
    net_spans,
    node_touch,
    sample_nets,
)
from placer.solvers.refine import SearchSpec, evaluate, local_search
from placer.solvers.replicas import replicate
from placer.solvers.spectral import one_blas_thread as _one_blas_thread
from placer.solvers.spectral import spectral_parts
from placer.topology import Model, Topology
from placer.trace import Trace, TraceSource

SOLVERS = ("auto", "spectral", "ilp")
#: weight of the peak node touch (NIC balance) relative to the cut, per node count
DEFAULT_ALPHA = {2: 0.0, 4: 2.0, 8: 2.0}
#: layers whose exact model is small enough to prove optimality
EXACT_MAX_EXPERTS = 16
#: two-node LNS neighbourhoods only when they hold at most this many experts
LNS_MAX_MEMBERS = 16
#: at most this many node pairs per layer are re-solved by CP-SAT (Python model building is slow)
LNS_MAX_PAIRS = 4
#: layers with more distinct top-k sets than this are searched on a weighted sample of them
#: (:func:`placer.solvers.problem.sample_nets`; ``auto``/``ilp`` scale it with the layer budget)
SAMPLE_NETS = 1 << 15


@dataclass(frozen=True)
class Options:
    """Per-layer solve options (picklable)."""

    solver: str = "auto"
    seed: int = 0
    alpha: float | None = None
    kicks: int = 40
    layer_budget: float = 3.0  # deterministic effort units per layer (~seconds on one core)


@dataclass(frozen=True)
class LayerResult:
    """One layer's outcome.

    expert_gpu: [experts] GPU of each expert. objective: train cut sum_j w_j*lambda_j
    (tokens x nodes spanned); bound: proven lower bound on it; status: "optimal" when
    proven, else "feasible". peak_touch: tokens touching the busiest node.
    """

    layer: int
    expert_gpu: np.ndarray
    objective: float
    bound: float
    status: str
    peak_touch: float
    gpu_peak_load: float
    gpu_load_bound: float
    intra_spread: float
    messages: tuple[str, ...] = ()
    sample: NetSample | None = None

    @property
    def gap(self) -> float:
        return 0.0 if self.objective <= 0 else max(0.0, (self.objective - self.bound) / self.objective)


@dataclass
class SolveReport:
    """Per-layer status/objective/bound/gap and the messages of one :func:`place` call."""

    solver: str
    layers: list[LayerResult] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: layers with status "interrupted" are quick stand-ins

    @property
    def objective(self) -> float:
        return float(sum(r.objective for r in self.layers))

    @property
    def bound(self) -> float:
        return float(sum(r.bound for r in self.layers))

    @property
    def gap(self) -> float:
        return 0.0 if self.objective <= 0 else (self.objective - self.bound) / self.objective

    def summary(self) -> str:
        optimal = sum(r.status == "optimal" for r in self.layers)
        return (f"solver {self.solver}: train cut {self.objective:.0f}, bound {self.bound:.0f}, "
                f"gap {100 * self.gap:.1f}% ({optimal}/{len(self.layers)} layers proven optimal)"
                + (f"; INTERRUPTED: {self.interrupted_facts()['note']}" if self.interrupted else "")
                + ("; " + "; ".join(self.messages) if self.messages else ""))

    def interrupted_facts(self) -> dict:
        """Which layers Ctrl-C left to quick stand-ins (spectral start, no search)."""
        unsolved = [r.layer for r in self.layers if r.status == "interrupted"]
        return {"layers_solved": len(self.layers) - len(unsolved), "layers_unsolved": unsolved,
                "note": f"{len(self.layers) - len(unsolved)} of {len(self.layers)} layers solved; the other "
                        f"{len(unsolved)} hold the spectral start without search"}

    def to_dict(self) -> dict:
        return {
            "solver": self.solver, "objective": self.objective, "bound": self.bound, "gap": self.gap,
            "messages": list(self.messages), "interrupted": self.interrupted_facts() if self.interrupted else None,
            "layers": [{"layer": r.layer, "status": r.status, "objective": r.objective, "bound": r.bound,
                        "gap": r.gap, "peak_touch": r.peak_touch, "gpu_peak_load": r.gpu_peak_load,
                        "intra_spread": r.intra_spread, "messages": list(r.messages)} for r in self.layers],
        }


# ---------------------------------------------------------------- node stage


def _spec(problem: LayerProblem, alpha: float) -> SearchSpec:
    N = problem.num_nodes
    ptr, inc = problem.incidence()
    c = problem.constraints
    cap = problem.gpu_load_cap()
    load_cap = np.full(N, np.inf) if cap is None else cap * problem.node_live().astype(np.float64)
    allowed = problem.allowed if problem.allowed is not None else np.ones((problem.num_experts, N), bool)
    M = c.max_nodes or 0
    unc = -1.0
    if M and c.max_nodes_coverage is not None:
        unc = float(math.floor((1.0 - c.max_nodes_coverage) * problem.weights.sum() + 1e-9))
    # with GPUs out of service, the proportional counts are a hard cap so no live GPU is left idle
    slot_cap = problem.node_capacity() if problem.live is None else problem.node_counts()
    return SearchSpec(ptr, inc, problem.nets, problem.weights.astype(np.float64),
                      problem.loads.astype(np.float64), slot_cap,
                      load_cap, allowed, float(alpha), int(M), unc)


def search_problem(problem: LayerProblem, opts: Options) -> tuple[LayerProblem, NetSample | None]:
    """The problem the searches run on: the layer itself, or for a layer with more distinct
    sets than the effort allows, a weighted sample of them (:func:`sample_nets`).

    ``spectral`` keeps up to :data:`SAMPLE_NETS` nets; ``auto``/``ilp`` up to SAMPLE_NETS x
    layer budget (clamped to 1..8): at scale a larger sample helps held-out traffic more
    than more kicks. Layers with a hard ``max_nodes`` limit are never sampled (the limit
    must hold on every set). Deterministic (depends on the seed only).
    """
    if problem.constraints.max_nodes is not None:
        return problem, None
    return sample_nets(problem, search_limit(opts.solver, opts.layer_budget), seed=opts.seed)


def search_limit(solver: str, budget: float) -> int:
    """Most nets a layer's search uses (:func:`search_problem`)."""
    return SAMPLE_NETS if solver == "spectral" else int(SAMPLE_NETS * max(1.0, min(8.0, budget)))


def layer_budget(time_limit: float, layers: int) -> float:
    """Deterministic effort units per layer for a total ``time_limit``."""
    return max(0.2, 1.6 * time_limit / max(1, layers))


def stream_cap(solver: str, time_limit: float, layers: int, max_nodes: int | None) -> int | None:
    """Distinct sets per layer worth keeping while summarising a trace for :func:`place`: what
    the search uses (:func:`search_limit`), none for ``eplb`` (loads only), every set with a
    hard ``max_nodes`` (it must hold on all of them)."""
    if solver == "eplb":
        return 0
    if max_nodes is not None:
        return None
    return search_limit(solver, layer_budget(time_limit, layers))


def summary_cap(max_nets: int | None | Literal["auto"], solver: str, time_limit: float, layers: int,
                max_nodes: int | None) -> int | None:
    """The streaming cap :func:`place` summarises a trace with: ``max_nets``, or for "auto"
    :func:`stream_cap`."""
    return stream_cap(solver, time_limit, layers, max_nodes) if max_nets == "auto" else max_nets


def descent_cost(problem: LayerProblem) -> float:
    """Estimated work of one local-search descent (E^2 x nodes swap candidates plus the pin
    pairs of the nets), in units of about a second on one core."""
    E = problem.num_experts
    size = (problem.nets >= 0).sum(axis=1).astype(np.float64)
    pins = float((size * (size - 1)).sum())
    return DESCENT_COST[0] * E * E * problem.num_nodes + DESCENT_COST[1] * pins


def kick_count(problem: LayerProblem, opts: Options, sampled: bool) -> int:
    """Kicks of the node-stage iterated local search.

    ``spectral``: ``opts.kicks``; ``auto``/``ilp``: ``max(opts.kicks, 30 x layer budget)``.
    For large layers (sampled, or one descent estimated above :data:`LARGE_DESCENT`) the
    count is capped so that the estimated work (:func:`descent_cost` per kick, one more for
    the first descent) fits the layer budget (a quarter of it for ``spectral``, half for the
    others): deterministic, no clock. ESFT-sized layers (64 experts, ~10k sets) are not large.
    """
    kicks = opts.kicks if opts.solver == "spectral" else max(opts.kicks, int(opts.layer_budget * 30))
    descent = descent_cost(problem)
    if not sampled and descent <= LARGE_DESCENT:
        return kicks
    budget = opts.layer_budget * (0.25 if opts.solver == "spectral" else 0.5)
    return int(min(kicks, max(0.0, budget / descent - 1.0)))


#: estimated seconds per descent of the node stage: per (E^2 x nodes) and per pin pair
DESCENT_COST = (4e-9, 5e-8)
#: layers whose descent is estimated above this are "large": their kicks follow the budget
LARGE_DESCENT = 0.05


def node_stage(problem: LayerProblem, opts: Options, search: LayerProblem | None = None
               ) -> tuple[np.ndarray, float, str, list[str]]:
    """Node of every expert [experts], a proven lower bound on the cut, status, messages.

    search: the (sampled) problem the searches run on (default: ``problem``); the bound is
    always on ``problem``.
    """
    N = problem.num_nodes
    alpha = opts.alpha if opts.alpha is not None else DEFAULT_ALPHA.get(N, 2.0)
    messages: list[str] = []
    full = problem
    sampled = search is not None and search is not problem
    problem = problem if search is None else search
    counts = problem.node_counts()
    if N == 1:
        return np.zeros(problem.num_experts, np.int64), float(full.weights.sum()), "optimal", messages
    part = spectral_parts(problem.nets, problem.weights, problem.num_experts, counts, problem.allowed,
                          seed=opts.seed)
    spec = _spec(problem, alpha)
    kicks = kick_count(problem, opts, sampled)
    part, value = local_search(spec, part, seed=opts.seed, kicks=kicks)
    part = _better_from_contiguous(problem, spec, counts, part, value, opts.seed, kicks)
    _, cut, viol = evaluate(spec, part)
    bound = trivial_bound(full)
    status = "feasible"
    if opts.solver != "spectral":
        if problem.num_experts <= EXACT_MAX_EXPERTS:
            res = cpsat.solve_exact(problem, hint=part, dtime=min(30.0, max(2.0, opts.layer_budget)),
                                    seed=opts.seed, gpu_level=False)
            if res.assignment is not None:
                _, cut_cp, viol_cp = evaluate(spec, res.assignment)
                if viol_cp <= 0 and (cut_cp < cut or viol > 0 or res.optimal):
                    part, cut, viol = res.assignment, cut_cp, viol_cp
                bound = max(bound, res.bound)
                status = "optimal" if res.optimal and cut <= res.bound + 1e-9 else "feasible"
        elif 2 * problem.node_slots <= LNS_MAX_MEMBERS:
            part = lns(problem, spec, part, alpha, budget=0.3 * opts.layer_budget, seed=opts.seed)
            _, cut, viol = evaluate(spec, part)
    if viol > 0:
        part, cut, viol = _repair(problem, spec, part, opts)
    return part, bound, status, messages


def _better_from_contiguous(problem: LayerProblem, spec: SearchSpec, counts: np.ndarray, part: np.ndarray,
                            value: float, seed: int, kicks: int) -> np.ndarray:
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


def _repair(problem: LayerProblem, spec: SearchSpec, part: np.ndarray, opts: Options
            ) -> tuple[np.ndarray, float, float]:
    """The search left max_nodes / balance violated: ask CP-SAT (which may prove infeasibility)."""
    c = problem.constraints
    res = cpsat.solve_exact(problem, hint=part, dtime=min(10.0, max(2.0, opts.layer_budget)),
                            seed=opts.seed, gpu_level=False)
    if res.assignment is not None:
        _, cut, viol = evaluate(spec, res.assignment)
        if viol <= 0:
            return res.assignment, cut, viol
    lam = connectivity(problem, part)
    what = (f"max_nodes {c.max_nodes}" + ("" if c.max_nodes_coverage is None else f" with coverage {c.max_nodes_coverage:g}")
            if c.max_nodes is not None else "") or f"balance {c.balance:g}"
    share = float(problem.weights[lam <= c.max_nodes].sum() / problem.weights.sum()) if c.max_nodes else float("nan")
    proven = res.optimal and res.assignment is None
    raise InfeasibleError(
        f"{what} on layer {problem.layer}: "
        + ("CP-SAT proved that no placement satisfies it" if proven else
           "no placement satisfying it was found within the budget (not proven impossible)")
        + (f"; the best placement found keeps {share:.3f} of tokens within {c.max_nodes} nodes"
           f" (try max_nodes_coverage <= {share:.3f} or a larger max_nodes)" if c.max_nodes else "")
    )


def trivial_bound(problem: LayerProblem) -> float:
    """Each set spans >= ceil(size / node slots) nodes (with excluded GPUs: the fewest largest
    nodes holding it): a valid but weak lower bound on the cut."""
    size = (problem.nets >= 0).sum(axis=1)
    return float((problem.weights * problem.min_nodes(size)).sum())


def lns(problem: LayerProblem, spec: SearchSpec, part: np.ndarray, alpha: float, *, budget: float,
        seed: int) -> np.ndarray:
    """CP-SAT large-neighbourhood search over node pairs; keeps only strict improvements of J."""
    N = problem.num_nodes
    pairs = [(a, b) for a in range(N) for b in range(a + 1, N)]
    rng = np.random.default_rng(seed)
    pairs = [pairs[i] for i in rng.permutation(len(pairs))[:LNS_MAX_PAIRS]]
    per = budget / max(1, len(pairs))
    best_J, _, best_v = evaluate(spec, part)
    for a, b in pairs:
        touch = node_touch(problem, part)
        others = [touch[n] for n in range(N) if n not in (a, b)]
        res = cpsat.improve_pair(problem, part, a, b, alpha=alpha, other_peak=max(others, default=0),
                                 dtime=per, seed=seed)
        if res.assignment is None:
            continue
        cand = part.copy()
        cand[np.flatnonzero((part == a) | (part == b))] = res.assignment
        J, _, v = evaluate(spec, cand)
        if (v, J) < (best_v, best_J - 1e-9):
            part, best_J, best_v = cand, J, v
            part, best_J = local_search(spec, part, seed=seed, kicks=0)
            _, _, best_v = evaluate(spec, part)
    return part


# ---------------------------------------------------------------- GPU stage


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
              ) -> tuple[np.ndarray, float, float, list[str]]:
    """GPU of every expert [experts], intra-node spread, layer peak GPU load, messages.

    Each node's experts go to its live GPUs only (local index i = i-th live GPU of the node).
    search: the (sampled) problem the spread search runs on (default: ``problem``); the
    spread is always measured on ``problem``.
    """
    full = problem
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
                        f"lower bound {gpu_load_lower_bound(problem):.0f})")
    elif cap is not None:
        target = cap
    expert_gpu = np.empty(problem.num_experts, np.int64)
    spread = 0.0
    for n in range(problem.num_nodes):
        members = np.flatnonzero(node == n)
        local = packs[n]
        gpus = problem.live_gpus(n)
        if S > 1 and len(members) > 1:
            local = _spread_search(problem, members, local, len(gpus), target, opts)
        expert_gpu[members] = gpus[local]
    spread = _intra_spread(full, expert_gpu)
    return expert_gpu, spread, peak, messages


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


def _intra_spread(problem: LayerProblem, expert_gpu: np.ndarray) -> float:
    """sum_j w_j * (distinct GPUs of net j): the NVLink+NIC copy count at GPU level."""
    distinct, _ = net_spans(problem.nets, problem.weights, expert_gpu, problem.num_gpus)
    return float((problem.weights * distinct).sum())


# ---------------------------------------------------------------- layer + entry point


def solve_layer(problem: LayerProblem, opts: Options) -> LayerResult:
    """Solve one layer (pure: depends only on its arguments).

    Layers with many distinct sets are searched on a weighted sample of them
    (:func:`search_problem`, recorded in ``LayerResult.sample``); the objective, peak
    touch and spread are always measured on every set of the layer.
    """
    search, sample = search_problem(problem, opts)
    blocks = split_blocks(problem)
    with _one_blas_thread(sample is not None or blocks is not None):
        if blocks is None:
            node, bound, status, messages = node_stage(problem, opts, search)
        else:
            node, bound, status, messages = solve_blocks(problem, blocks, partial(_block_stage, opts))
    expert_gpu, spread, peak, gpu_messages = gpu_stage(problem, node, opts, search)
    lam, touch = net_spans(problem.nets, problem.weights, node, problem.num_nodes)
    return LayerResult(
        problem.layer, expert_gpu, float((problem.weights * lam).sum()), bound, status,
        float(touch.max()), peak, gpu_load_lower_bound(problem), spread,
        tuple(messages + gpu_messages), sample,
    )


def _block_stage(opts: Options, block: LayerProblem, share: float) -> tuple[np.ndarray, float, str, list[str]]:
    """The node stage of one kept-groups block (:mod:`groups`) on ``share`` of the layer budget."""
    sub_opts = replace(opts, layer_budget=opts.layer_budget * share)
    return node_stage(block, sub_opts, search_problem(block, sub_opts)[0])


def interrupted_layer(problem: LayerProblem) -> LayerResult:
    """A quick stand-in for a layer that Ctrl-C left unsolved: the spectral start (no search)
    and longest-first GPU packing, status "interrupted", bound the trivial one."""
    opts = Options(solver="spectral", kicks=0)
    search, sample = search_problem(problem, opts)
    node = spectral_parts(search.nets, search.weights, search.num_experts, search.node_counts(), search.allowed)
    expert_gpu, spread, peak, messages = gpu_stage(problem, node, opts, search)
    lam, touch = net_spans(problem.nets, problem.weights, node, problem.num_nodes)
    return LayerResult(
        problem.layer, expert_gpu, float((problem.weights * lam).sum()), trivial_bound(problem), "interrupted",
        float(touch.max()), peak, gpu_load_lower_bound(problem), spread, tuple(messages), sample,
    )


def _solve_all(problems: list[LayerProblem], opts: Options, workers: int, progress: ProgressFn | None,
               on_interrupt: str) -> tuple[list[LayerResult], bool]:
    """solve_layer over every layer (in processes when ``workers`` > 1), and whether Ctrl-C
    cut it short: with ``on_interrupt="best"`` unsolved layers get :func:`interrupted_layer`
    (unless a balance or max-nodes limit is set, which the stand-in does not enforce)."""
    try:
        return interruptible_map(partial(solve_layer, opts=opts), problems, workers, progress, "solving layers"), False
    except Interrupted as stop:
        limited = problems and (problems[0].constraints.balance is not None
                                or problems[0].constraints.max_nodes is not None)
        if on_interrupt != "best" or limited:
            raise
        return [r if r is not None else interrupted_layer(p) for r, p in zip(stop.results, problems)], True


def expert_groups(model: Model | None, num_experts: int) -> np.ndarray:
    """Contiguous expert groups of ``model`` ([experts] group id)."""
    if model is None or model.num_groups <= 0:
        raise InputError(None, "keep_groups", "needs a model with num_groups > 0")
    if num_experts % model.num_groups:
        raise InputError(None, "num_groups", f"{model.num_groups} does not divide {num_experts} experts")
    return np.arange(num_experts) // (num_experts // model.num_groups)


def eplb_placement(loads: np.ndarray, topology: Topology, model: Model | None, slots_per_gpu: int | None,
                   exclude_gpus: Sequence[int] = ()) -> Placement:
    """DeepSeek's EPLB on expert loads [layers, E]: hierarchical with the model's groups, else global.

    exclude_gpus: GPUs out of service. EPLB assumes uniform nodes, so it runs on the live
    GPUs as a smaller cluster (the nodes with live GPUs, in order) and its GPU i is mapped
    back to the i-th live GPU id; when the nodes keep different numbers of live GPUs it
    uses EPLB's global policy (one node, one group) over the live GPUs. Excluded GPUs'
    slots stay empty (-1); ``metadata["excluded_gpus"]`` lists them.
    """
    layers, experts = loads.shape
    total = topology.num_gpus
    live = live_mask(exclude_gpus, total, experts, slots_per_gpu)
    live_ids = np.flatnonzero(live)
    slots = slots_per_gpu or math.ceil(experts / len(live_ids))
    groups = model.num_groups if model is not None and model.num_groups > 0 else 1
    if slots * total < experts:
        raise InputError(None, "slots_per_gpu", f"{total} GPUs x {slots} slots < {experts} experts")
    if experts % groups:
        raise InputError(None, "num_groups", f"{groups} groups do not divide {experts} experts")
    metadata = {"solver": {"name": "eplb", "groups": groups}, "topology": topology.to_dict()}
    if live.all():
        phy2log, _, _ = rebalance_experts(loads, slots * total, groups, topology.nodes, total)
        return Placement(phy2log, experts, topology.gpus_per_node, slots, metadata)
    per_node = live.reshape(topology.nodes, topology.gpus_per_node).sum(axis=1)
    used = per_node[per_node > 0]
    if (used == used[0]).all():
        nodes, policy = len(used), "hierarchical" if groups % len(used) == 0 else "global"
        live_phy2log, _, _ = rebalance_experts(loads, slots * len(live_ids), groups, nodes, len(live_ids))
    else:
        policy = "global"
        live_phy2log, _, _ = rebalance_experts(loads, slots * len(live_ids), 1, 1, len(live_ids))
    phy2log = np.full((layers, total * slots), EMPTY, dtype=np.int64)
    target = (live_ids[:, None] * slots + np.arange(slots)[None, :]).ravel()
    phy2log[:, target] = live_phy2log
    metadata["solver"]["policy"] = policy
    metadata["excluded_gpus"] = np.flatnonzero(~live).tolist()
    return Placement(phy2log, experts, topology.gpus_per_node, slots, metadata)


def place(
    trace: Trace | TraceSource | TraceSummary,
    topology: Topology,
    *,
    solver: str = "auto",
    balance: float | None = None,
    max_nodes: int | None = None,
    max_nodes_coverage: float | None = None,
    keep_groups: bool = False,
    model: Model | None = None,
    time_limit: float = 60.0,
    seed: int = 0,
    workers: int = 1,
    slots_per_gpu: int | None = None,
    alpha: float | None = None,
    exclude_gpus: Sequence[int] = (),
    mapper: Callable[[Callable[[LayerProblem], LayerResult], list[LayerProblem]], list[LayerResult]] | None = None,
    progress: ProgressFn | None = None,
    on_interrupt: str = "raise",
    max_nets: int | None | Literal["auto"] = "auto",
) -> tuple[Placement, SolveReport]:
    """Place every layer's experts on ``topology`` from ``trace``.

    solver: "spectral" (seconds), "ilp" / "auto" (spectral, then CP-SAT within ``time_limit``),
    "eplb" (DeepSeek's load balancer on the loads alone).
    slots_per_gpu: when its slots outnumber the experts, the spare slots hold replicas (see :mod:`replicas`).
    balance: EPS (max GPU load <= (1+EPS) x mean on the trace); max_nodes: M nodes per token,
    hard over the distinct top-k sets or, with ``max_nodes_coverage`` Q, for >= Q of tokens;
    keep_groups: each of ``model.num_groups`` contiguous expert groups on its own nodes.
    time_limit: total budget in seconds, converted to deterministic per-layer effort (the
    result never depends on machine speed or ``workers``). alpha: NIC-balance weight.
    exclude_gpus: GPU ids out of service (e.g. failed): they get no slots, every expert and
    replica lands on a live GPU, node capacities are live GPUs x slots per GPU (experts
    spread over nodes in proportion), slots_per_gpu defaults to ceil(E / live GPUs); the
    placement keeps every GPU (excluded ones empty) and records ``metadata["excluded_gpus"]``
    (sorted ids). Raises InputError(field "exclude_gpus") for ids out of range, all GPUs
    excluded, or too few live slots for the experts.
    mapper: runs the per-layer solves, ``mapper(fn, problems) -> [fn(p) for p in problems]``
    (e.g. :meth:`placer.cluster.Cluster.map`); default: a pool of ``workers`` processes.
    progress: callback for the summarising and solving stages (:mod:`placer.progress`).
    on_interrupt: "raise" lets Ctrl-C propagate; "best" returns the layers solved so far and
    quick stand-ins for the rest (status "interrupted", ``report.interrupted``), except with a
    balance or max_nodes limit, which the stand-ins do not enforce (then Ctrl-C propagates).
    max_nets: distinct top-k sets kept per layer while summarising a trace (not a summary):
    "auto" = :func:`stream_cap`, None = every set; the share of tokens whose set was dropped
    is reported (loads and co-activation stay exact).
    Returns (Placement with metadata, SolveReport). Raises InfeasibleError / InputError.
    """
    if on_interrupt not in ("raise", "best"):
        raise InputError(None, "on_interrupt", f"expected 'raise' or 'best', got {on_interrupt!r}")
    if solver not in (*SOLVERS, "eplb"):
        raise InputError(None, "solver", f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    if balance is not None and balance < 0:
        raise InputError(None, "balance", f"expected >= 0, got {balance}")
    if max_nodes_coverage is not None and not (0 < max_nodes_coverage <= 1):
        raise InputError(None, "max_nodes_coverage", f"expected a share in (0, 1], got {max_nodes_coverage}")
    if max_nodes_coverage is not None and max_nodes is None:
        raise InputError(None, "max_nodes_coverage", "needs max_nodes")
    if isinstance(trace, TraceSummary):
        summary = trace
    else:
        cap = summary_cap(max_nets, solver, time_limit, trace.num_layers, max_nodes)
        summary = summarize(trace, workers=max(1, workers), max_nets=cap, progress=progress)
    live = live_mask(exclude_gpus, topology.num_gpus, summary.num_experts, slots_per_gpu)
    excluded = np.flatnonzero(~live).tolist()
    if solver == "eplb":
        return eplb_placement(summary.loads, topology, model, slots_per_gpu, excluded), SolveReport(solver)
    groups = expert_groups(model, summary.num_experts) if keep_groups else None
    constraints = Constraints(balance, max_nodes, max_nodes_coverage, groups)
    live_gpus = int(live.sum())
    one_copy_slots = math.ceil(summary.num_experts / live_gpus)
    spare = slots_per_gpu is not None and slots_per_gpu * live_gpus > summary.num_experts
    # the one-copy stage runs on the fewest slots holding every expert; kept groups see every
    # slot, so their node sets are sized by the capacity their replicas fill (blocks then
    # place one copy on their own fewest slots, see groups.split_blocks)
    problems = build_problems(
        summary, topology.nodes, topology.gpus_per_node,
        one_copy_slots if spare and groups is None else slots_per_gpu, constraints, excluded,
    )
    opts = Options(solver, seed, alpha, 15, layer_budget(time_limit, len(problems)))
    if mapper is None:
        results, interrupted = _solve_all(problems, opts, workers, progress, on_interrupt)
    else:
        results, interrupted = mapper(partial(solve_layer, opts=opts), problems), False
    report = SolveReport(solver, results, interrupted=interrupted)
    for r in results:
        report.messages.extend(r.messages)
    sampled = [r.sample for r in results if r.sample is not None]
    if sampled:
        kept = sum(x.kept for x in sampled)
        nets = sum(x.nets for x in sampled)
        dropped = [x.dropped_share for x in sampled]
        report.messages.append(
            f"{len(sampled)} of {len(results)} layers have more distinct top-k sets than the search "
            f"uses: it ran on a weighted sample ({kept} of {nets} sets; sets of >= r tokens kept "
            f"exactly, lighter ones with probability w/r at weight r, r = {min(x.rate for x in sampled)}"
            f"..{max(x.rate for x in sampled)}), leaving out {min(dropped):.1%}..{max(dropped):.1%} "
            "of each layer's tokens (unbiased: re-weighted); objectives and bounds are on every set")
    dropped = summary.dropped_shares
    if dropped.any():
        report.messages.append(
            f"the streaming cap kept at most {max(len(part.sets) for part in summary.layers)} distinct top-k "
            f"sets per layer, dropping {dropped.min():.1%}..{dropped.max():.1%} of each layer's tokens' sets "
            "(kept by priority count/hash, each standing for max(count, threshold) tokens; loads and co-activation "
            "are exact; objectives are on the kept sets)")
    if solver != "spectral" and any(r.status != "optimal" for r in results):
        report.messages.append(
            "bounds of layers not proven optimal are the trivial bound (each set spans >= "
            "ceil(size/node slots) nodes): valid but weak, so their gap overstates the distance to optimal")
    expert_gpu = np.stack([r.expert_gpu for r in results])
    metadata = {
        "solver": {"name": solver, "seed": seed, "time_limit": time_limit, "objective": report.objective,
                   "bound": report.bound, "gap": report.gap,
                   **({"interrupted": report.interrupted_facts()} if interrupted else {})},
        "topology": topology.to_dict(),
        "constraints": {"balance": balance, "max_nodes": max_nodes, "max_nodes_coverage": max_nodes_coverage,
                        "keep_groups": keep_groups},
    }
    if excluded:
        metadata["excluded_gpus"] = excluded
    slots = problems[0].slots_per_gpu
    placement = from_expert_gpu(expert_gpu, topology.num_gpus, topology.gpus_per_node, slots, metadata)
    if spare:
        tokens = [np.repeat(part.sets, part.set_counts, axis=0) for part in summary.layers]
        coactivation = [part.coactivation for part in summary.layers]
        allowed = None if groups is None else [problem.allowed for problem in problems]
        placement = replicate(placement, tokens, coactivation, summary.loads, slots_per_gpu, excluded, allowed)
        report.messages.append(
            f"{slots_per_gpu * live_gpus - summary.num_experts} spare slots per layer hold replicas "
            "(counts by load per copy, nodes by co-activation, GPUs by load served under the nearest rule)"
        )
    return placement, report
