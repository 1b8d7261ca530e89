"""Entry point: ``solve(trace, problem, settings) -> (Placement, SolveReport)``.

Orchestration only: summarise the trace, build one problem per layer
(:mod:`problem`), run :func:`pipeline.solve_layer` over the layers (in processes, or
through a mapper such as a Dask cluster), add replicas in spare slots
(:mod:`replicas`) and assemble the placement and its report.

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
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np

from placer.constraints import expert_groups, live_mask, resolve_slots
from placer.errors import InputError
from placer.graph import TraceSummary, summarize
from placer.parallel import Interrupted, interruptible_map
from placer.placement import Placement, from_expert_gpu
from placer.progress import ProgressFn
from placer.request import SOLVERS, PlacementProblem, SolverSettings
from placer.solvers.eplb_policy import eplb_placement
from placer.solvers.options import LayerResult, Options, layer_budget, search_limit
from placer.solvers.pipeline import interrupted_layer, solve_layer
from placer.solvers.problem import LayerProblem, build_problems
from placer.solvers.replicas import replicate
from placer.trace import Trace, TraceSource


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

    def quality(self) -> str:
        """The train objective and what is proven about it, without passing a weak bound off
        as a distance to optimal: layers not proven optimal keep the trivial bound (each set
        spans >= ceil(size / node slots) nodes) or CP-SAT's bound at its time limit."""
        optimal = sum(r.status == "optimal" for r in self.layers)
        facts = f"train objective {self.objective:,.0f} token-node copies"
        if self.layers and optimal == len(self.layers):
            return f"{facts}, every layer proven optimal"
        return (f"{facts}; {optimal}/{len(self.layers)} layers proven optimal; the lower bound of the "
                f"others ({self.bound:,.0f} in all) is weak, so it does not measure the distance to optimal")

    def summary(self) -> str:
        return (f"solver {self.solver}: {self.quality()}"
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


def _solve_all(problems: list[LayerProblem], opts: Options, workers: int, progress: ProgressFn | None,
               on_interrupt: str) -> tuple[list[LayerResult], bool]:
    """solve_layer over every layer (in processes when ``workers`` > 1), and whether Ctrl-C
    cut it short: with ``on_interrupt="best"`` unsolved layers get :func:`interrupted_layer`
    (unless a balance or max-nodes limit is set, which the stand-in does not enforce)."""
    try:
        return interruptible_map(partial(solve_layer, opts=opts), problems, workers, progress, "solving layers"), False
    except Interrupted as stop:
        if on_interrupt != "best" or (problems and problems[0].constraints.limited):
            raise
        return [r if r is not None else interrupted_layer(p) for r, p in zip(stop.results, problems)], True


def layer_options(settings: SolverSettings, layers: int) -> Options:
    """The per-layer options :func:`solve` runs ``layers`` layers with under ``settings``
    (the time limit shared out as deterministic layer budgets)."""
    return Options(settings.solver, settings.seed, settings.alpha, 15, layer_budget(settings.time_limit, layers))


def solve(
    trace: Trace | TraceSource | TraceSummary,
    problem: PlacementProblem,
    settings: SolverSettings = SolverSettings(),
) -> tuple[Placement, SolveReport]:
    """Place every layer's experts on ``problem.topology`` from ``trace`` with a solver.

    settings.solver: "spectral", "ilp", "auto" (per layer the best of several candidates on a
    validation split of the tokens, :mod:`validation`) or "eplb" (baselines are the workflow's,
    :func:`placer.workflow.place`). Spare slots (slots per GPU x live GPUs > experts) hold
    replicas (:mod:`replicas`). GPUs in ``problem.exclude_gpus`` get no slots: every expert
    and replica lands on a live GPU, node capacities are live GPUs x slots per GPU (experts
    spread over nodes in proportion), slots per GPU default to ceil(E / live GPUs); the
    placement keeps every GPU (excluded ones empty) and records ``metadata["excluded_gpus"]``
    (sorted ids); their GPUs are packed by the load each copy serves under ``problem.rule``
    (the engine's replica dispatch rule). With ``settings.on_interrupt="best"`` Ctrl-C returns the layers solved so
    far and quick stand-ins for the rest (status "interrupted", ``report.interrupted``),
    except with a balance or max_nodes limit, which the stand-ins do not enforce (then
    Ctrl-C propagates). A trace (not a summary) is summarised with the streaming cap
    ``settings.max_nets`` ("auto" = :func:`stream_cap`); the share of tokens whose set was
    dropped is reported (loads and co-activation stay exact).
    Returns (Placement with metadata, SolveReport). Raises InfeasibleError / InputError.
    """
    solver = settings.solver
    if solver not in SOLVERS:
        raise InputError(None, "solver", f"{solver!r} is not a solver; expected one of {', '.join(SOLVERS)}")
    topology, model = problem.topology, problem.model
    if isinstance(trace, TraceSummary):
        summary = trace
    else:
        cap = summary_cap(settings.max_nets, solver, settings.time_limit, trace.num_layers, problem.max_nodes)
        summary = summarize(trace, workers=settings.workers, max_nets=cap, progress=settings.progress)
    slots_per_gpu = resolve_slots(problem.slots_per_gpu, problem.memory_reserve, summary.num_experts,
                                  topology, model)
    live = live_mask(problem.exclude_gpus, topology.num_gpus, summary.num_experts, slots_per_gpu)
    excluded = np.flatnonzero(~live).tolist()
    if solver == "eplb":
        return eplb_placement(summary.loads, topology, model, slots_per_gpu, excluded), SolveReport(solver)
    groups = expert_groups(model, summary.num_experts) if problem.keep_groups else None
    constraints = problem.constraints(groups)
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
    opts = layer_options(settings, len(problems))
    if settings.mapper is None:
        results, interrupted = _solve_all(problems, opts, settings.workers, settings.progress,
                                          settings.on_interrupt)
    else:
        results, interrupted = settings.mapper(partial(solve_layer, opts=opts), problems), False
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
    expert_gpu = np.stack([r.expert_gpu for r in results])
    metadata = {
        "solver": {"name": solver, "seed": settings.seed, "time_limit": settings.time_limit,
                   **({} if settings.alpha is None else {"alpha": settings.alpha}),
                   "objective": report.objective, "bound": report.bound, "gap": report.gap,
                   **({"interrupted": report.interrupted_facts()} if interrupted else {})},
        "topology": topology.to_dict(),
        "constraints": constraints.to_dict(),
    }
    if excluded:
        metadata["excluded_gpus"] = excluded
    slots = problems[0].slots_per_gpu
    placement = from_expert_gpu(expert_gpu, topology.num_gpus, topology.gpus_per_node, slots, metadata)
    if spare:
        tokens = [np.repeat(part.sets, part.set_counts, axis=0) for part in summary.layers]
        coactivation = [part.coactivation for part in summary.layers]
        allowed = None if groups is None else [problem.allowed for problem in problems]
        placement = replicate(placement, tokens, coactivation, summary.loads, slots_per_gpu, excluded, allowed,
                              problem.rule, problem.lp_batch)
        report.messages.append(
            f"{slots_per_gpu * live_gpus - summary.num_experts} spare slots per layer hold replicas "
            f"(counts by load per copy, nodes by co-activation, GPUs by load served under the {problem.rule} rule)"
        )
    return placement, report
