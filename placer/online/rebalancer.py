"""The online rebalancer: a routing window plus warm, migration-aware re-placement.

A :class:`Rebalancer` lives across an engine's steps. :meth:`Rebalancer.observe` folds
routing (top-k ids ``[tokens, layers, k]``) into a bounded, decayed window
(:class:`placer.online.window.RoutingWindow`); :meth:`Rebalancer.rebalance` returns a new
placement warm-started from the one in service:

* with routing in the window, each layer gets one warm candidate per rung of
  :data:`PENALTY_LADDER` (:mod:`placer.online.warm`: a local search from the nodes in service
  on the window's nets with a migration penalty, replicas re-placed by co-activation with a
  keep bonus), then (``replica_passes``) the replica-aware swap search
  (:mod:`placer.solvers.replica_search`) re-seats copies on the window's heaviest sets with
  the rung's migration penalty; its predicted gain is the relative drop of the window's
  replay-shaped cost (:func:`placer.solvers.replica_search.window_cost`; the node objective
  when the search is off) plus ``peak_weight`` x the relative drop of the predicted GPU peak;
* with no routing (loads alone, as the engines pass them), each layer's candidate is
  DeepSeek's EPLB on the loads (:func:`placer.eplb.rebalance_experts`), relabelled by
  :func:`placer.migration.minimize_moves` so experts that stay on a GPU keep their slot;
  its gain is the relative drop of the predicted GPU peak.

Then migration control (:func:`_choose`, a greedy multiple-choice knapsack): candidates whose
gain is below ``min_gain`` are never taken; the others are taken (or upgraded to a candidate
of higher gain) best extra gain per extra copy moved first, while the copies moved fit
``move_budget``; a layer with no candidate taken keeps its slots, and every expert that stays
on its GPU keeps its slot. The returned placement becomes the one
in service. Every layer of every placement returned holds every expert at least once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from placer.eplb import rebalance_experts
from placer.errors import InputError
from placer.migration import minimize_moves, moved_by_link
from placer.online.config import RebalanceConfig
from placer.online.warm import (
    anchored_spec,
    arrange_layer,
    node_objective,
    predicted_peak,
    primary_gpus,
    warm_nodes,
    with_penalty,
)
from placer.online.window import RoutingWindow
from placer.placement import Placement
from placer.solvers.node_stage import DEFAULT_ALPHA
from placer.solvers.problem import LayerProblem, build_problems
from placer.solvers.refine import SearchSpec
from placer.solvers.replica_search import MAX_NODES, pass_work, seat_replicas, window_cost
from placer.solvers.replicas import replica_counts
from placer.topology import Topology
from placer.trace import Trace, TraceSource

#: multiples of ``move_penalty`` tried per layer, stiffest first (inf: nodes kept, replicas
#: re-placed only); each rung's search starts from the previous rung's nodes
PENALTY_LADDER = (math.inf, 64.0, 16.0, 4.0, 1.0)

#: the replica search's penalty (multiples of ``move_penalty``) on the frozen rung's layout
SEAT_FROZEN = 16.0

#: most replica-search steps per rebalance (:func:`placer.solvers.replica_search.pass_work`;
#: ~10 s on one core): passes are cut to fit, and a search with no whole pass left is skipped
#: (ESFT at 8 x 8 needs 1.7e9 for 4 passes; one pass at DeepSeek-V3 shape needs 3.2e9)
SEARCH_WORK = 2e9

#: the window's heaviest distinct top-k sets per layer the replica search works on (candidates
#: are priced on every set)
SEARCH_NETS = 1024

#: a replica stays on its node unless another scores this many move penalties more
REPLICA_KEEP = 4.0

__all__ = ["Candidate", "RebalanceResult", "Rebalancer", "check_loads", "check_phy2log", "contiguous_slots",
           "slots_per_gpu_for"]


@dataclass(frozen=True)
class RebalanceResult:
    """One rebalance.

    placement: the placement now in service (phy2log [layers, gpus * slots]).
    mode: "routing" (window nets used) or "loads" (load-only EPLB candidates).
    changed_layers: layers whose slots changed. gain: [layers] predicted relative gain of
    each layer's candidate (0 where none). experts_moved: expert copies loaded onto a GPU
    (:func:`placer.migration.moved_weights`), split into nvlink / nic by the link they come
    over (:func:`placer.migration.moved_by_link`), [layers, gpus] each (receiving GPU). budget: most copies allowed.
    seconds: wall time of the call.
    """

    placement: Placement
    mode: str
    changed_layers: tuple[int, ...]
    gain: np.ndarray
    nvlink_moves: np.ndarray
    nic_moves: np.ndarray
    budget: int
    seconds: float
    facts: dict = field(default_factory=dict)

    @property
    def experts_moved(self) -> int:
        return int(self.nvlink_moves.sum() + self.nic_moves.sum())

    def bytes_moved(self, expert_param_bytes: float) -> float:
        """Bytes loaded onto GPUs: copies moved x bytes of one expert's weights."""
        return self.experts_moved * float(expert_param_bytes)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "changed_layers": list(self.changed_layers), "gain": self.gain.tolist(),
                "experts_moved": self.experts_moved, "nvlink_moves": int(self.nvlink_moves.sum()),
                "nic_moves": int(self.nic_moves.sum()), "budget": self.budget, "seconds": self.seconds,
                **self.facts}


def contiguous_slots(num_layers: int, num_experts: int, num_gpus: int, gpus_per_node: int,
                     slots_per_gpu: int) -> Placement:
    """The engines' initial layout in ``slots_per_gpu`` slots per GPU: physical slot ``p`` holds
    expert ``p mod E`` (vLLM's initial physical-to-logical map), so the first E slots are
    placer's ``contiguous`` blocks and the spare slots repeat the experts in order (a slot that
    would repeat an expert on its own GPU stays empty); the placement in service before any
    rebalance."""
    row = np.arange(num_gpus * slots_per_gpu, dtype=np.int64) % num_experts
    per_gpu = row.reshape(num_gpus, slots_per_gpu)
    repeat = np.zeros_like(per_gpu, dtype=bool)
    for slot in range(1, slots_per_gpu):
        repeat[:, slot] = (per_gpu[:, :slot] == per_gpu[:, slot:slot + 1]).any(axis=1)
    row = np.where(repeat.ravel(), -1, row)
    return Placement(np.tile(row, (num_layers, 1)), num_experts, gpus_per_node, slots_per_gpu,
                     {"solver": {"name": "contiguous"}})


def slots_per_gpu_for(num_replicas: object, num_gpus: object, field_name: str = "num_replicas") -> int:
    """Slots per GPU of an engine's ``num_replicas`` physical experts over ``num_gpus`` ranks;
    InputError(field_name) unless both are positive integers and the ranks divide the replicas."""
    for name, value in ((field_name, num_replicas), ("num_gpus", num_gpus)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(None, name, f"expected a positive integer, got {value!r}")
    if num_replicas % num_gpus:
        raise InputError(None, field_name, f"{num_replicas} physical experts are not a multiple of "
                         f"{num_gpus} ranks")
    return int(num_replicas) // int(num_gpus)


def _host_array(value: object, field_name: str, kinds: str, what: str, shape: tuple[int, int],
                axes: str) -> np.ndarray:
    """``value`` (numpy, list or torch tensor) as a host array of one of the dtype ``kinds`` and ``shape``."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise InputError(None, field_name, f"expected {what}, got dtype {array.dtype}")
    if array.shape != shape:
        raise InputError(None, field_name, f"expected shape [{shape[0]}, {shape[1]}] ({axes}), "
                         f"got {tuple(array.shape)}")
    return array


def check_loads(loads: object, num_layers: int, num_experts: int, field_name: str = "loads") -> np.ndarray:
    """loads as float64 [layers, experts]: finite and non-negative (torch tensors accepted)."""
    array = _host_array(loads, field_name, "iuf", "numeric loads", (num_layers, num_experts), "layers, experts")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError(None, field_name, "holds NaN or infinite loads")
    if (array < 0).any():
        raise InputError(None, field_name, f"holds a negative load ({array.min():g})")
    return array


def check_phy2log(phy2log: object, num_layers: int, num_experts: int, num_slots: int,
                  field_name: str = "current") -> np.ndarray:
    """A slots map as int64 [layers, slots]: ids in -1..E-1 and every expert present per layer."""
    array = _host_array(phy2log, field_name, "iu", "integer expert ids", (num_layers, num_slots), "layers, slots")
    array = array.astype(np.int64)
    if array.size and (array.min() < -1 or array.max() >= num_experts):
        raise InputError(None, field_name, f"expert ids must lie in -1..{num_experts - 1}")
    for layer, row in enumerate(array):
        missing = np.setdiff1d(np.arange(num_experts), row)
        if missing.size:
            raise InputError(None, field_name, f"layer {layer} holds no copy of expert {int(missing[0])}")
    return array


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(None, name, f"expected a positive integer, got {value!r}")
    return int(value)


class Rebalancer:
    """Online, migration-aware rebalancer of one model on one cluster (see the module docstring).

    num_layers, num_experts: MoE layers and routed experts; num_nodes, gpus_per_node,
    slots_per_gpu: the cluster (every GPU in service; slots x GPUs >= experts; spare slots
    hold replicas); config: :class:`RebalanceConfig`; top_k: experts per token (None: from
    the first batch); placement: the placement in service (default :func:`contiguous_slots`);
    workers: threads re-placing layers (the result does not depend on it).
    """

    def __init__(self, num_layers: int, num_experts: int, num_nodes: int, gpus_per_node: int,
                 slots_per_gpu: int, config: RebalanceConfig | None = None, *, top_k: int | None = None,
                 placement: Placement | None = None, workers: int = 1) -> None:
        self.num_layers = _positive("num_layers", num_layers)
        self.num_experts = _positive("num_experts", num_experts)
        self.num_nodes = _positive("num_nodes", num_nodes)
        self.gpus_per_node = _positive("gpus_per_node", gpus_per_node)
        self.slots_per_gpu = _positive("slots_per_gpu", slots_per_gpu)
        self.workers = _positive("workers", workers)
        if self.num_gpus * self.slots_per_gpu < self.num_experts:
            raise InputError(None, "slots_per_gpu", f"{self.num_gpus} GPUs x {self.slots_per_gpu} slots < "
                             f"{self.num_experts} experts")
        self.config = config if config is not None else RebalanceConfig()
        if not isinstance(self.config, RebalanceConfig):
            raise InputError(None, "config", f"expected a RebalanceConfig, got {type(self.config).__name__}")
        self.window = RoutingWindow(self.num_layers, self.num_experts, top_k,
                                    half_life_tokens=self.config.half_life_tokens, max_nets=self.config.max_nets)
        self.placement = (contiguous_slots(self.num_layers, self.num_experts, self.num_gpus, self.gpus_per_node,
                                           self.slots_per_gpu) if placement is None else self._as_placement(placement))

    @classmethod
    def for_topology(cls, topology: Topology, num_layers: int, num_experts: int, slots_per_gpu: int,
                     config: RebalanceConfig | None = None, **kwargs: object) -> Rebalancer:
        """A rebalancer for ``topology``'s nodes and GPUs per node."""
        return cls(num_layers, num_experts, topology.nodes, topology.gpus_per_node, slots_per_gpu, config,
                   **kwargs)

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def num_slots(self) -> int:
        return self.num_gpus * self.slots_per_gpu

    def observe(self, topk_ids: object) -> None:
        """Fold routing into the window: topk_ids [tokens, layers, k] (-1 padding), any batch size."""
        self.window.observe(topk_ids)

    def seed(self, trace: Trace | TraceSource | str | Path) -> None:
        """Fold a prior trace (a :class:`Trace`, a streamed source, or a .npz path) into the window."""
        if isinstance(trace, (str, Path)):
            trace = TraceSource(trace)
        self.window.observe_trace(trace)

    def _as_placement(self, current: Placement | np.ndarray | object) -> Placement:
        if isinstance(current, Placement):
            if (current.num_layers, current.num_experts, current.num_gpus, current.gpus_per_node,
                    current.slots_per_gpu) != (self.num_layers, self.num_experts, self.num_gpus,
                                               self.gpus_per_node, self.slots_per_gpu):
                raise InputError(None, "current", "the placement's layers, experts, GPUs, GPUs per node or slots "
                                 "per GPU differ from the rebalancer's")
            check_phy2log(current.phy2log, self.num_layers, self.num_experts, self.num_slots)
            return current
        phy2log = check_phy2log(current, self.num_layers, self.num_experts, self.num_slots)
        return Placement(phy2log, self.num_experts, self.gpus_per_node, self.slots_per_gpu)

    def rebalance(self, loads: object | None = None, current: Placement | np.ndarray | None = None,
                  num_groups: int = 1) -> RebalanceResult:
        """A new placement warm-started from ``current`` (default: the one in service), which
        then becomes the one in service.

        loads: [layers, experts] expert loads (e.g. the engine's counts); used to size and
        balance replicas; needed when the window holds no routing. current: a Placement or a
        phy2log [layers, gpus * slots]. num_groups: expert groups for the load-only (EPLB)
        candidate (hierarchical EPLB when the node count divides them).
        """
        start = time.perf_counter()
        given = None if loads is None else check_loads(loads, self.num_layers, self.num_experts)
        serving = self.placement if current is None else self._as_placement(current)
        if self.window.empty:
            if given is None:
                raise InputError(None, "loads", "needed when no routing has been observed")
            mode, candidates = "loads", self._load_candidates(given, serving, num_groups)
        else:
            mode, candidates = "routing", self._routing_candidates(given, serving)
        budget = int(self.config.move_budget * self.num_layers * self.num_slots)
        choice = _choose(candidates, budget, self.config.min_gain)
        phy2log = serving.phy2log.copy()
        gains = np.zeros(self.num_layers)
        for layer, pick in enumerate(choice):
            if pick is not None:
                phy2log[layer], gains[layer] = pick.row, pick.gain
        _check_complete(phy2log, self.num_experts)
        placement = Placement(phy2log, self.num_experts, self.gpus_per_node, self.slots_per_gpu,
                              {"solver": {"name": "placer-online", "mode": mode, **_config_facts(self.config)}})
        nvlink, nic = moved_by_link(serving, placement)
        self.placement = placement
        changed = tuple(int(i) for i in np.flatnonzero((phy2log != serving.phy2log).any(axis=1)))
        facts = {"candidates": sum(len(c) for c in candidates)}
        return RebalanceResult(placement, mode, changed, gains, nvlink, nic, budget, time.perf_counter() - start,
                               facts)

    # ------------------------------------------------------------ candidates

    def _routing_candidates(self, loads: np.ndarray | None, serving: Placement) -> list[list[Candidate]]:
        """Per layer the warm candidates, one per rung of :data:`PENALTY_LADDER` (distinct ones),
        layers on ``workers`` threads (the searches release the GIL; results do not depend on it)."""
        summary = self.window.summary()
        one_copy = -(-self.num_experts // self.num_gpus)
        problems = build_problems(summary, self.num_nodes, self.gpus_per_node, one_copy)
        window_loads = self.window.loads() if loads is None else loads
        searched = [_heaviest(problem) for problem in problems]
        passes = self._search_passes([nets for nets, _ in searched])

        def layer_candidates(layer: int) -> list[Candidate]:
            return self._layer_candidates(layer, problems[layer], summary.layers[layer].coactivation.toarray(),
                                          serving.phy2log[layer], window_loads[layer], one_copy, searched[layer],
                                          passes)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(layer_candidates, range(self.num_layers)))

    def _search_passes(self, layer_nets: list[np.ndarray]) -> int:
        """Replica-search passes per rung this rebalance affords: ``replica_passes`` cut to fit
        :data:`SEARCH_WORK` over every layer (its searched sets [n, k]) and rung (0: the search
        and its cost model are off)."""
        if not self.config.replica_passes or self.num_nodes > MAX_NODES:
            return 0
        work = sum(pass_work(self.num_slots, self.num_experts, self.num_nodes, nets) for nets in layer_nets)
        return min(self.config.replica_passes, int(SEARCH_WORK // max(work * len(PENALTY_LADDER), 1.0)))

    def _layer_candidates(self, layer: int, problem: LayerProblem, affinity: np.ndarray, current: np.ndarray,
                          loads: np.ndarray, one_copy: int, searched: tuple[np.ndarray, np.ndarray],
                          passes: int) -> list[Candidate]:
        """One layer's distinct warm candidates, stiffest rung first. affinity: [E, E]
        co-activation; current: [slots] row in service; loads: [E]; searched: the sets [n, k]
        and weights [n] the replica search works on; passes: replica-search passes per rung
        (0: none, candidates priced by the node objective)."""
        cfg = self.config
        alpha = cfg.alpha if cfg.alpha is not None else DEFAULT_ALPHA.get(self.num_nodes, 2.0)
        start_gpu = primary_gpus(current, self.num_experts, self.slots_per_gpu, self.gpus_per_node, one_copy)
        start_node = start_gpu // self.gpus_per_node
        spec = anchored_spec(problem, start_node, alpha)
        cost = self._cost_model(problem, spec, passes)
        before = cost(current, start_node)
        copies = replica_counts(loads, self.num_slots)
        peak = predicted_peak(current, loads, self.slots_per_gpu)
        mean = float(problem.loads.sum()) / self.num_experts
        candidates: list[Candidate] = []
        nets, weights = searched
        node = start_node
        for rung in PENALTY_LADDER:
            penalty = rung * cfg.move_penalty * mean
            if not math.isinf(rung):  # each rung searches on from the stiffer rung's nodes
                node = warm_nodes(with_penalty(spec, self.num_experts, penalty), node, cfg.kicks, cfg.seed + layer)
            row = arrange_layer(current, node, start_gpu, loads, copies, affinity, self.gpus_per_node,
                                self.slots_per_gpu, one_copy, REPLICA_KEEP * penalty)
            if passes:
                seat_penalty = penalty if not math.isinf(rung) else SEAT_FROZEN * cfg.move_penalty * mean
                row = seat_replicas(row, nets, weights, loads, affinity, self.gpus_per_node,
                                    self.slots_per_gpu, service=current, penalty=seat_penalty,
                                    passes=passes)
            if any(np.array_equal(row, other.row) for other in candidates):
                continue
            gain = (_relative_drop(before, cost(row, node))
                    + cfg.peak_weight * _relative_drop(peak, predicted_peak(row, loads, self.slots_per_gpu)))
            candidates.append(Candidate(row, gain, _moved(current, row, self.slots_per_gpu, self.num_experts)))
        return candidates

    def _cost_model(self, problem: LayerProblem, spec: SearchSpec,
                    passes: int) -> Callable[[np.ndarray, np.ndarray], float]:
        """How a layer's candidates are priced on the window: the replay-shaped cost of the
        slots row (:func:`placer.solvers.replica_search.window_cost`) when the replica search
        runs, else the node objective of the primaries' nodes."""
        if passes:
            return lambda row, node: window_cost(row, problem.nets, problem.weights, self.slots_per_gpu,
                                                 self.gpus_per_node)
        return lambda row, node: node_objective(spec, node)

    def _load_candidates(self, loads: np.ndarray, serving: Placement, num_groups: int) -> list[list[Candidate]]:
        """Per layer EPLB's row on the loads, relabelled to keep experts in place, with its
        predicted GPU-peak gain."""
        groups = num_groups if num_groups >= 1 and self.num_experts % num_groups == 0 else 1
        phy2log, _, _ = rebalance_experts(loads, self.num_slots, groups, self.num_nodes, self.num_gpus)
        proposed = Placement(phy2log, self.num_experts, self.gpus_per_node, self.slots_per_gpu)
        rows = minimize_moves(serving, proposed).phy2log
        return [[Candidate(new, _relative_drop(predicted_peak(old, load, self.slots_per_gpu),
                                               predicted_peak(new, load, self.slots_per_gpu)),
                           _moved(old, new, self.slots_per_gpu, self.num_experts))]
                for old, new, load in zip(serving.phy2log, rows, loads)]


@dataclass(frozen=True)
class Candidate:
    """One way to re-place one layer: its slots row [gpus * slots], predicted relative gain,
    and expert copies it loads onto GPUs."""

    row: np.ndarray
    gain: float
    moved: int


def _heaviest(problem: LayerProblem) -> tuple[np.ndarray, np.ndarray]:
    """The layer's :data:`SEARCH_NETS` heaviest sets (in their order) and weights."""
    keep = np.sort(np.argsort(-problem.weights, kind="stable")[:SEARCH_NETS])
    return problem.nets[keep], problem.weights[keep]


def _moved(old: np.ndarray, new: np.ndarray, slots_per_gpu: int, num_experts: int) -> int:
    """Copies of ``new`` [slots] whose GPU lacks them in ``old`` [slots] (as a multiset)."""
    def counts(row: np.ndarray) -> np.ndarray:
        held = row >= 0
        keys = (np.flatnonzero(held) // slots_per_gpu) * num_experts + row[held]
        return np.bincount(keys, minlength=len(row) // slots_per_gpu * num_experts)
    before, after = counts(old), counts(new)
    return int((after - np.minimum(before, after)).sum())


def _choose(candidates: list[list[Candidate]], budget: int, min_gain: float) -> list[Candidate | None]:
    """One candidate (or none) per layer: a greedy multiple-choice knapsack. Each step takes the
    upgrade (a layer's candidate of higher gain than its current pick, gain >= min_gain,
    positive) with the most gain per extra copy moved that keeps the total within ``budget``;
    ties to the lower layer. Deterministic; no layer moves for a gain below ``min_gain``."""
    choice: list[Candidate | None] = [None] * len(candidates)
    spent = 0
    while True:
        best: tuple[float, int, Candidate] | None = None
        for layer, options in enumerate(candidates):
            held = choice[layer]
            gain, moved = (0.0, 0) if held is None else (held.gain, held.moved)
            for option in options:
                if option.gain < min_gain or option.gain <= gain or spent - moved + option.moved > budget:
                    continue
                ratio = (option.gain - gain) / max(option.moved - moved, 0.5)
                if best is None or ratio > best[0]:
                    best = (ratio, layer, option)
        if best is None:
            return choice
        _, layer, option = best
        held = choice[layer]
        spent += option.moved - (0 if held is None else held.moved)
        choice[layer] = option


def _relative_drop(before: float, after: float) -> float:
    return (before - after) / before if before > 0 else 0.0


def _config_facts(config: RebalanceConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def _check_complete(phy2log: np.ndarray, num_experts: int) -> None:
    """Every layer holds every expert (a broken invariant is a bug, never returned)."""
    for layer, row in enumerate(phy2log):
        if np.setdiff1d(np.arange(num_experts), row).size:
            raise AssertionError(f"rebalance lost an expert on layer {layer}")
