"""What ``placer place`` and ``placer evaluate`` do, as functions the CLI, the report, the
sweep and Python users share.

:func:`place` opens the trace, matches the model, sizes the slots against GPU memory,
solves (or builds a baseline), records where the placement came from (topology, model,
trace digest) and relabels it against the placement in service. :func:`with_baselines`
and :func:`compare` build and replay "placements vs the baselines" the one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from placer import instances
from placer.checks import check_type
from placer.cluster import Cluster
from placer.constraints import resolve_slots
from placer.errors import InputError
from placer.evaluation.replay import ReplayReport, evaluate
from placer.formats.importers import ExpertCounts, load_routing
from placer.formats.layers import recorded_layer_ids
from placer.formats.placement_io import check_topology, read_placement
from placer.migration import minimize_moves, moved_weights
from placer.placement import BASELINES, Placement, baseline
from placer.progress import ProgressFn, prefixed
from placer.request import PlacementProblem, SolverSettings
from placer.solvers.api import SolveReport, solve, summary_cap
from placer.solvers.eplb_policy import eplb_placement
from placer.topology import Model, Topology
from placer.trace import Trace, TraceSource, trace_digest

__all__ = ["PlaceResult", "compare", "match_model", "open_routing", "open_trace", "place", "with_baselines"]

Routing = Trace | TraceSource | ExpertCounts


def open_routing(path: str | Path) -> Routing:
    """A routing input by path: native .npz traces and shard folders stream from disk; every
    other format is read whole (:func:`placer.formats.importers.load_routing`)."""
    given = Path(path)
    if str(path) == "":
        raise InputError(None, "trace", "expected a file or folder, got an empty path")
    if given.suffix == ".npz" or (given.is_dir() and any(given.glob("*.npz"))):
        return TraceSource(given)
    return load_routing(given)


def open_trace(path: str | Path) -> Trace | TraceSource:
    """A routing input that must hold tokens (replay and statistics need who is routed together)."""
    routing = open_routing(path)
    if isinstance(routing, ExpertCounts):
        raise InputError(path, "trace", "holds expert counts only; this needs token-level routing")
    return routing


def match_model(model: str | Model | None, num_experts: int, top_k: int | None) -> Model | None:
    """``model`` (a preset name, .toml file or Model) checked against the trace's shape; for
    None the unique preset with this expert count and top-k, else None."""
    if model is None:
        return None if top_k is None else instances.match_model(num_experts, top_k)
    loaded = model if isinstance(model, Model) else instances.load_model(model)
    if loaded.num_experts < num_experts or top_k not in (None, loaded.top_k):
        raise InputError(
            loaded.name,
            "model",
            f"{loaded.num_experts} experts, top-{loaded.top_k} does not fit a trace with "
            f"{num_experts} experts, top-{top_k}",
        )
    return loaded


@dataclass(frozen=True)
class PlaceResult:
    """A placement with how it was found.

    placement: the result, metadata included (solver, topology, model, trace digest).
    report: the solver's report (None for a baseline or EPLB from counts).
    moves: with a placement in service, expert copies and bytes to load after relabelling
    (``experts_moved``, ``bytes_moved``, ``experts_moved_per_layer``) and
    ``without_relabel`` (copies moved had the result not been relabelled); else None.
    """

    placement: Placement
    report: SolveReport | None
    moves: dict | None = None

    def facts(self) -> dict:
        """JSON-ready summary of the solve (and of the moves)."""
        facts = (
            self.report.to_dict() if self.report is not None else {"solver": self.placement.metadata["solver"]["name"]}
        )
        return {**facts, **({"moves": self.moves} if self.moves is not None else {})}


def _routing(trace: str | Path | Routing) -> Routing:
    if isinstance(trace, (str, Path)):
        return open_routing(trace)
    if not isinstance(trace, (Trace, TraceSource, ExpertCounts)):
        raise InputError(
            None, "trace", f"expected a path, Trace, TraceSource or ExpertCounts, got {type(trace).__name__}"
        )
    return trace


def place(
    trace: str | Path | Routing,
    problem: PlacementProblem | Topology,
    settings: SolverSettings = SolverSettings(),
    *,
    current: Placement | None = None,
    cluster: Cluster | None = None,
) -> PlaceResult:
    """Place every layer of ``trace`` (a path, trace or expert counts) for ``problem`` (a
    :class:`PlacementProblem`, or a :class:`Topology` for the problem with no other constraint).

    settings.solver: a solver or a named baseline (:data:`placer.request.METHODS`); expert
    counts carry no co-activation, so they take "eplb" or a baseline. The model is matched
    to the trace (:func:`match_model`: for None, the unique preset of its shape) and the
    slots are checked against GPU memory. current: the placement in service: the result is
    relabelled to move the fewest experts (:func:`placer.migration.minimize_moves`).
    cluster: a Dask cluster that summarises the shards, solves the layers and hashes the
    trace on its workers (same result).
    """
    if isinstance(problem, Topology):  # place(trace, topology): the problem with nothing but the cluster
        problem = PlacementProblem(problem)
    check_type(problem, "problem", PlacementProblem)
    check_type(settings, "settings", SolverSettings)
    check_type(current, "current", Placement, optional=True)
    routing = _routing(trace)
    counts_only = isinstance(routing, ExpertCounts)
    method = settings.solver
    if counts_only and method not in (*BASELINES, "eplb"):
        raise InputError(
            getattr(trace, "path", None) or (trace if isinstance(trace, (str, Path)) else None),
            "trace",
            "expert counts carry no co-activation; use solver eplb or a routing trace",
        )
    model = match_model(problem.model, routing.num_experts, None if counts_only else routing.top_k)
    topology = problem.topology
    experts = model.num_experts if model is not None else routing.num_experts
    slots = resolve_slots(problem.slots_per_gpu, problem.memory_reserve, experts, topology, model)
    problem = replace(problem, model=model, slots_per_gpu=slots)
    if current is not None and (current.num_gpus, current.gpus_per_node) != (topology.num_gpus, topology.gpus_per_node):
        raise InputError(
            None,
            "current",
            f"placement in service is for {current.num_gpus} GPUs "
            f"({current.gpus_per_node} per node); the topology has {topology.nodes} x "
            f"{topology.gpus_per_node}",
        )
    report = None
    digest = None
    if method in BASELINES:
        chosen = baseline(
            method, routing.num_layers, experts, topology.num_gpus, topology.gpus_per_node, problem.exclude_gpus
        )
    elif counts_only:
        chosen = eplb_placement(routing.counts, topology, model, slots, problem.exclude_gpus)
    elif cluster is None:
        if isinstance(routing, TraceSource):
            routing.digest_while_reading()  # the summary's pass gives the digest: no second read
        chosen, report = solve(routing, problem, settings)
    else:
        chosen, report, digest = _solve_on(cluster, routing, problem, settings)
    metadata = {
        **chosen.metadata,
        "topology": topology.to_dict(),
        "model": None if model is None else model.to_dict(),
        "trace": {
            "sha256": digest or trace_digest(routing),
            "layers": routing.num_layers,
            "tokens": None if counts_only else routing.num_tokens,
            "layer_ids": recorded_layer_ids(routing),
        },
    }
    chosen = replace(chosen, metadata=metadata)
    moves = None
    if current is not None:
        expert_bytes = model.expert_param_bytes if model is not None else 0.0
        naive = moved_weights(current, chosen, expert_bytes)
        chosen = minimize_moves(current, chosen)
        moves = {"without_relabel": naive["experts_moved"], **moved_weights(current, chosen, expert_bytes)}
    return PlaceResult(chosen, report, moves)


def _solve_on(
    cluster: Cluster, routing: Trace | TraceSource, problem: PlacementProblem, settings: SolverSettings
) -> tuple[Placement, SolveReport, str]:
    """solve() with the shard summaries, the per-layer solves and the digest on ``cluster``."""
    if not isinstance(routing, TraceSource):
        raise InputError(None, "scheduler", "needs a native .npz trace or shard directory (convert with placer import)")
    cap = summary_cap(settings.max_nets, settings.solver, settings.time_limit, routing.num_layers, problem.max_nodes)
    digest = cluster.submit(trace_digest, routing)
    chosen, report = solve(cluster.summarize(routing, max_nets=cap), problem, replace(settings, mapper=cluster.map))
    return chosen, report, digest.result()


def load_placement(
    spec: str | Path, num_layers: int, num_experts: int, topology: Topology, model: Model | None
) -> tuple[str, Placement]:
    """A baseline by name or a placement file (checked to have the topology's shape), with the
    label to show it under."""
    if str(spec) in BASELINES:
        return str(spec), baseline(str(spec), num_layers, num_experts, topology.num_gpus, topology.gpus_per_node)
    placement = read_placement(spec, topology.num_gpus, topology.gpus_per_node, model, num_experts)
    check_topology(spec, placement, topology)
    return Path(spec).name, placement


def with_baselines(
    placements: Mapping[str, Placement], names: Sequence[str], num_layers: int, num_experts: int, topology: Topology
) -> list[tuple[str, Placement]]:
    """The named baselines not already given (by name or identical slots) first, then
    ``placements``. Baselines avoid the GPUs the first given placement leaves out of service."""
    given = list(placements.items())
    excluded = given[0][1].excluded_gpus if given else []
    added = []
    for name in names:
        if name in placements:
            continue
        candidate = baseline(name, num_layers, num_experts, topology.num_gpus, topology.gpus_per_node, excluded)
        if not any(
            p.phy2log.shape == candidate.phy2log.shape and (p.phy2log == candidate.phy2log).all() for _, p in given
        ):
            added.append((name, candidate))
    return [*added, *given]


def compare(
    trace: Trace | TraceSource,
    entries: Sequence[tuple[str, Placement]],
    topology: Topology,
    model: Model | None,
    *,
    progress: ProgressFn | None = None,
    **replay: object,
) -> list[tuple[str, ReplayReport]]:
    """Replay ``trace`` against each (label, placement); ``replay``: options of
    :func:`placer.evaluation.replay.evaluate` (source, dispatch, max_nodes, rule)."""
    return [
        (label, evaluate(trace, p, topology, model, progress=prefixed(progress, f"{label}: "), **replay))
        for label, p in entries
    ]
