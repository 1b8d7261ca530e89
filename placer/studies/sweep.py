"""Expert-parallel sweep: all-to-all bytes and time per training step as EP grows (seed 001's "network cliff").

For an EP size P the EP group is min(P, G) GPUs per node x max(1, P / G) nodes (G: the
topology's GPUs per node) and the cluster's ``topology.num_gpus`` GPUs hold num_gpus / P
such groups side by side (data parallel), each on its share of the step's tokens.

Per EP, two placements are measured: contiguous experts (the Megatron / vLLM default)
and placer's placement (solved on one trace, replayed on another, ideally held out).
Without a trace, routing is uniform and the figures are the expectations of
:mod:`placer.evaluation.calc` for contiguous experts (placer's placement has nothing to learn then,
so its figures equal contiguous).

Every figure starts from per-layer copies per token of the EP group (one way), then is
scaled by :class:`StepModel`:

- traffic per step (GB, the whole cluster): tokens_per_step x copies per token per layer
  (mean over the trace's layers) x MoE layers x (dispatch + combine bytes per token) x
  ``A2A_PASSES``. ``dispatch="normal"`` counts one inter-node copy per remote node a token
  reaches (DeepEP normal mode) and NVLink copies including the forwarding on the remote
  node; ``"low-latency"`` counts one copy per remote (token, expert) pair;
- time per step on the bottleneck: per layer, :func:`placer.evaluation.replay.layer_times` of the
  busiest node's NIC copies and busiest GPU's NVLink copies at the step's tokens per
  group, plus ``peer_latency_s`` per inter-node peer per phase; all-to-all =
  ``A2A_PASSES`` x layers x (dispatch + combine); expert compute = ``COMPUTE_PASSES`` x
  layers x tokens per GPU x k x FLOPs per pair / GPU FLOP/s (balanced load, so the ratio
  compares placements by their all-to-all alone; the busiest GPU's load over the mean is
  reported as ``gpu_imbalance``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from placer.checks import check_choice, check_type
from placer.errors import InputError
from placer.evaluation.calc import all_to_all_volume, expected_nvlink_copies
from placer.evaluation.replay import DISPATCH_MODES, bottlenecks, count_traffic, layer_times
from placer.graph import TraceSummary, summarize
from placer.placement import Placement, baseline
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve
from placer.topology import Model, Topology
from placer.trace import Trace, TraceSource

A2A_PASSES = 2
"""All-to-all rounds per step: the forward dispatch + combine, and the backward pass's
gradients of both (same volume, opposite direction)."""
COMPUTE_PASSES = 3
"""Expert compute per step in forward passes: backward costs twice the forward FLOPs
(gradients of inputs and of weights)."""
DEFAULT_EPS = (1, 2, 4, 8, 16, 32)
DEFAULT_TOKENS_PER_STEP = 524_288
"""2^19 tokens per step (e.g. 128 sequences of 4,096): with seed001's assumed hidden size
4,096 in BF16 and 32 MoE layers, uniform top-2 routing puts EP 16 near the seed's 400 GB."""
SEED001_REFERENCE = {
    16: {"internode_gb": 400.0, "a2a_to_compute": 1.47},
    32: {"internode_gb": 800.0, "a2a_to_compute": 3.36},
}
"""Seed 001's figures (../shared/seeds/001): inter-node traffic "approaches 400 GB" per step
at EP 16 and "exceeds 800 GB" at EP 32; all-to-all / expert compute 1.47x and 3.36x."""
PLACEMENTS = ("contiguous", "placer")


@dataclass(frozen=True)
class StepModel:
    """What one training step is (every assumption that turns copies into GB and seconds).

    tokens_per_step: tokens of the whole cluster per step, one pass over them.
    dispatch: "normal" (per-node dedup, DeepEP normal) or "low-latency" (one copy per pair).
    peer_latency_s: extra cost per inter-node peer a GPU exchanges with, per all-to-all
    phase (N - 1 peers in normal mode, P - G in low-latency mode); 0 = bandwidth and the
    topology's fixed latency only.
    """

    tokens_per_step: int = DEFAULT_TOKENS_PER_STEP
    dispatch: str = "normal"
    peer_latency_s: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "a2a_passes": A2A_PASSES, "compute_passes": COMPUTE_PASSES}


@dataclass(frozen=True)
class Shares:
    """Copies per token of the EP group, one way, per layer: [layers] each.

    internode / intranode: all inter-node (NIC) and NVLink copies; nic_peak: the busiest
    node's NIC copies; nvlink_peak: the busiest GPU's NVLink copies; gpu_peak: the busiest
    GPU's (token, expert) pairs.
    """

    internode: np.ndarray
    intranode: np.ndarray
    nic_peak: np.ndarray
    nvlink_peak: np.ndarray
    gpu_peak: np.ndarray


@dataclass(frozen=True)
class Traffic:
    """One placement at one EP size, per training step (whole cluster for bytes, per GPU for time).

    internode_copies / intranode_copies: copies per token per MoE layer, one way.
    gpu_imbalance: busiest GPU's (token, expert) pairs over the mean, mean over layers.
    """

    internode_copies: float
    intranode_copies: float
    internode_gb: float
    intranode_gb: float
    all_to_all_s: float
    compute_s: float
    a2a_to_compute: float
    gpu_imbalance: float


@dataclass(frozen=True)
class EpPoint:
    """The sweep at one EP size: the group's shape and both placements' traffic."""

    ep: int
    gpus_per_node: int
    nodes: int
    groups: int
    tokens_per_gpu: float
    internode_peers: int
    routing: str
    contiguous: Traffic
    placer: Traffic

    @property
    def internode_ratio(self) -> float | None:
        """placer / contiguous inter-node bytes (None when contiguous sends none)."""
        base = self.contiguous.internode_gb
        return self.placer.internode_gb / base if base else None

    def to_dict(self) -> dict:
        return {**asdict(self), "internode_ratio": self.internode_ratio}


@dataclass(frozen=True)
class SweepResult:
    """A whole sweep: one :class:`EpPoint` per EP size, ascending, and what produced it."""

    model: Model
    topology: Topology
    step: StepModel
    solver: str
    seed: int
    alpha: float | None
    routing: str
    points: list[EpPoint] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model.to_dict(),
            "topology": self.topology.to_dict(),
            "assumptions": self.step.to_dict(),
            "solver": self.solver,
            "seed": self.seed,
            "alpha": self.alpha,
            "routing": self.routing,
            "points": [p.to_dict() for p in self.points],
        }


def group_topology(topology: Topology, ep: int) -> Topology:
    """The EP group's hardware: min(P, G) GPUs per node x max(1, P / G) nodes."""
    per_node = min(ep, topology.gpus_per_node)
    return topology.resized(nodes=ep // per_node, gpus_per_node=per_node)


def check_eps(eps: Sequence[int], model: Model, topology: Topology) -> list[int]:
    """The EP sizes, ascending; InputError (field "ep") unless each makes whole groups of whole nodes."""
    if not eps:
        raise InputError(None, "ep", "expected at least one EP size")
    gpus, per_node = topology.num_gpus, topology.gpus_per_node
    for ep in eps:
        if isinstance(ep, bool) or not isinstance(ep, (int, np.integer)) or ep < 1:
            raise InputError(None, "ep", f"expected positive integers, got {ep!r}")
        if ep > gpus or gpus % ep:
            raise InputError(None, "ep", f"EP {ep} does not divide {topology.name}'s {gpus} GPUs into whole groups")
        if ep > per_node and ep % per_node:
            raise InputError(None, "ep", f"EP {ep} is neither at most nor a multiple of {per_node} GPUs per node")
        if model.num_experts % ep:
            raise InputError(None, "ep", f"EP {ep} does not divide {model.name}'s {model.num_experts} experts")
    if len(set(eps)) < len(eps):
        raise InputError(None, "ep", f"EP sizes repeat: {list(eps)}")
    return sorted(int(ep) for ep in eps)


def uniform_shares(model: Model, ep: int, gpus_per_node: int, dispatch: str) -> Shares:
    """Expected shares under uniform routing with contiguous experts (:mod:`placer.evaluation.calc`): [1] each.

    By symmetry every node and GPU carries the mean: the busiest node sends 1 / N of the
    group's NIC copies, the busiest GPU 1 / P of its NVLink copies and k / P pairs per token.
    """
    volume = all_to_all_volume(model, ep, 1, gpus_per_node)
    if dispatch == "normal":
        internode = volume.node_dedup_vectors
        intranode = expected_nvlink_copies(model.num_experts, model.top_k, ep, gpus_per_node)
    else:
        internode, intranode = volume.inter_node_vectors, volume.intra_node_vectors
    return Shares(
        *(
            np.array([value])
            for value in (internode, intranode, internode / volume.nodes, intranode / ep, model.top_k / ep)
        )
    )


def replay_shares(trace: Trace | TraceSource, placement: Placement, topology: Topology, dispatch: str) -> Shares:
    """Shares measured by replaying ``trace`` against ``placement`` on the EP group's ``topology``."""
    counts = count_traffic(trace, placement, topology, dispatch=dispatch)
    tokens = counts["tokens"].astype(float)
    tier = "dedup" if dispatch == "normal" else "naive"
    peaks = bottlenecks(counts, dispatch)
    return Shares(
        counts[f"internode_tokens_{tier}"] / tokens,
        counts["nvlink_sent"].sum(axis=1) / tokens,
        peaks["nic_copies"] / tokens,
        peaks["nvlink_copies"] / tokens,
        peaks["gpu_pairs"] / tokens,
    )


def step_traffic(shares: Shares, model: Model, group: Topology, groups: int, step: StepModel) -> Traffic:
    """Scale per-token shares to one training step (see the module docstring)."""
    layers = model.num_moe_layers
    round_trip = model.dispatch_bytes_per_token + model.combine_bytes_per_token
    per_step_gb = step.tokens_per_step * layers * round_trip * A2A_PASSES / 1e9
    group_tokens = step.tokens_per_step / groups
    mean_pairs = model.top_k / group.num_gpus
    times = layer_times(
        shares.nic_peak * group_tokens, shares.nvlink_peak * group_tokens, mean_pairs * group_tokens, group, model
    )
    peers = internode_peers(group, step.dispatch)
    phases = np.mean(times["dispatch_s"] + times["combine_s"]) + 2 * step.peer_latency_s * peers
    a2a = A2A_PASSES * layers * float(phases)
    compute = COMPUTE_PASSES * layers * float(np.mean(times["compute_s"]))
    internode, intranode = float(np.mean(shares.internode)), float(np.mean(shares.intranode))
    return Traffic(
        internode,
        intranode,
        internode * per_step_gb,
        intranode * per_step_gb,
        a2a,
        compute,
        a2a / compute,
        float(np.mean(shares.gpu_peak)) / mean_pairs,
    )


def internode_peers(group: Topology, dispatch: str) -> int:
    """Inter-node peers of one GPU per phase: one per other node (normal), every GPU there (low-latency)."""
    others = group.nodes - 1
    return others if dispatch == "normal" else others * group.gpus_per_node


def ep_point(
    ep: int,
    model: Model,
    topology: Topology,
    step: StepModel,
    summary: TraceSummary | None = None,
    replay: Trace | TraceSource | None = None,
    solver: str = "spectral",
    seed: int = 0,
    alpha: float | None = None,
) -> EpPoint:
    """One EP size: place (on ``summary``) and replay (``replay``), or uniform expectations.

    alpha: the solver's NIC-balance weight (None: its default per node count).

    A pure function of picklable arguments, so a parallel backend can map it over EP sizes.
    """
    group = group_topology(topology, ep)
    groups = topology.num_gpus // ep
    if summary is None or replay is None:
        shares = {"contiguous": uniform_shares(model, ep, group.gpus_per_node, step.dispatch)}
        shares["placer"] = shares["contiguous"]
        routing = "uniform"
    else:
        contiguous = baseline("contiguous", len(summary.layer_ids), model.num_experts, ep, group.gpus_per_node)
        # one GPU leaves no choice: every placement is contiguous
        placed = (
            contiguous
            if ep == 1
            else solve(
                summary, PlacementProblem(group, model=model), SolverSettings(solver=solver, seed=seed, alpha=alpha)
            )[0]
        )
        shares = {
            name: replay_shares(replay, p, group, step.dispatch)
            for name, p in (("contiguous", contiguous), ("placer", placed))
        }
        routing = "trace"
    traffic = {name: step_traffic(s, model, group, groups, step) for name, s in shares.items()}
    return EpPoint(
        ep,
        group.gpus_per_node,
        group.nodes,
        groups,
        step.tokens_per_step / topology.num_gpus,
        internode_peers(group, step.dispatch),
        routing,
        traffic["contiguous"],
        traffic["placer"],
    )


def check_step(step: StepModel) -> StepModel:
    """``step`` if valid, else InputError naming the field."""
    tokens = step.tokens_per_step
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 1:
        raise InputError(None, "tokens_per_step", f"expected a positive integer, got {tokens!r}")
    check_choice(step.dispatch, "dispatch", DISPATCH_MODES)
    if not np.isfinite(step.peer_latency_s) or step.peer_latency_s < 0:
        raise InputError(None, "peer_latency_s", f"expected a finite number >= 0, got {step.peer_latency_s!r}")
    return step


def _check_trace(trace: Trace | TraceSource, model: Model, name: str) -> None:
    if trace.num_experts != model.num_experts or trace.top_k != model.top_k:
        raise InputError(
            None,
            name,
            f"trace has {trace.num_experts} experts, top-{trace.top_k}; {model.name} has "
            f"{model.num_experts}, top-{model.top_k}",
        )


def run_sweep(
    model: Model,
    topology: Topology,
    trace: Trace | TraceSource | None = None,
    eval_trace: Trace | TraceSource | None = None,
    *,
    eps: Iterable[int] = DEFAULT_EPS,
    step: StepModel = StepModel(),
    solver: str = "spectral",
    seed: int = 0,
    alpha: float | None = None,
    mapper: Callable = map,
) -> SweepResult:
    """Sweep EP sizes: contiguous vs placer's placement, GB and a2a/compute per step.

    trace: routing to solve placer's placement on (and to replay, unless ``eval_trace``
    is given); without one, uniform routing. alpha: placer's NIC-balance weight (weight
    of the busiest node's traffic against the total; None: the solver's default).
    mapper: a ``map``-like callable over EP
    sizes (e.g. a parallel backend's), applied to :func:`ep_point`.
    """
    check_type(model, "model", Model)
    check_type(topology, "topology", Topology)
    sizes = check_eps(list(eps), model, topology)
    check_step(step)
    SolverSettings(solver=solver, seed=seed, alpha=alpha)  # checks them before any work
    if eval_trace is not None and trace is None:
        raise InputError(None, "eval_trace", "needs a trace to solve placer's placement on")
    summary = None
    routing = "uniform"
    if trace is not None:
        for name, given in (("trace", trace), ("eval_trace", eval_trace)):
            if given is not None:
                _check_trace(given, model, name)
        summary = summarize(trace)
        routing = "held-out trace" if eval_trace is not None else "in-sample trace"
    replay = eval_trace if eval_trace is not None else trace
    point = partial(
        ep_point,
        model=model,
        topology=topology,
        step=step,
        summary=summary,
        replay=replay,
        solver=solver,
        seed=seed,
        alpha=alpha,
    )
    return SweepResult(model, topology, step, solver, seed, alpha, routing, list(mapper(point, sizes)))
