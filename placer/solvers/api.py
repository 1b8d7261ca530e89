"""Entry point: ``place(trace, topology, ...) -> (Placement, SolveReport)``.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np

from placer.errors import InputError
from placer.graph import TraceSummary, summarize
from placer.parallel import Interrupted, interruptible_map
from placer.placement import Placement, from_expert_gpu
from placer.progress import ProgressFn
from placer.solvers.eplb_policy import eplb_placement
from placer.solvers.options import LayerResult, Options, layer_budget, search_limit
from placer.solvers.pipeline import interrupted_layer, solve_layer
from placer.solvers.problem import (
    Constraints,
    LayerProblem,
    build_problems,
    live_mask,
)
from placer.solvers.replicas import replicate
from placer.topology import Model, Topology
from placer.trace import Trace, TraceSource

SOLVERS = ("auto", "spectral", "ilp")


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
    (e.g. :meth:`placer.studies.cluster.Cluster.map`); default: a pool of ``workers`` processes.
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
