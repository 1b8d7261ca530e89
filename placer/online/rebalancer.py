"""The online rebalancer: a routing window plus warm, migration-aware re-placement.

A :class:`Rebalancer` lives across an engine's steps. :meth:`Rebalancer.observe` folds
routing (top-k ids ``[tokens, layers, k]``) into a bounded, decayed window
(:class:`placer.online.window.RoutingWindow`); :meth:`Rebalancer.rebalance` returns a new
placement warm-started from the one in service:

* with routing in the window, each layer is re-placed by :mod:`placer.online.warm`
  (a penalised local search from the nodes in service on the window's nets, replicas kept
  where still wanted, intra-node swaps for the GPU peak);
* with no routing (loads alone, as the engines pass them), each layer's candidate is
  DeepSeek's EPLB on the loads (:func:`placer.eplb.rebalance_experts`), relabelled by
  :func:`placer.migration.minimize_moves` so experts that stay on a GPU keep their slot.

Then migration control: a layer whose predicted gain is below ``min_gain`` keeps its slots;
the others are taken best gain per moved copy first while their moved copies fit
``move_budget``; every unmoved expert keeps its slot. The returned placement becomes the one
in service. Every layer of every placement returned holds every expert at least once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from placer.eplb import rebalance_experts
from placer.errors import InputError
from placer.migration import minimize_moves, moved_by_link
from placer.online.config import RebalanceConfig
from placer.online.warm import (
    arrange_layer,
    node_objective,
    predicted_peak,
    primary_gpus,
    warm_nodes,
)
from placer.online.window import RoutingWindow
from placer.placement import Placement, baseline_expert_gpu, from_expert_gpu
from placer.solvers.node_stage import DEFAULT_ALPHA
from placer.solvers.problem import build_problems
from placer.solvers.replicas import replica_counts
from placer.topology import Topology
from placer.trace import Trace, TraceSource

__all__ = ["RebalanceResult", "Rebalancer", "check_loads", "check_phy2log", "contiguous_slots"]


@dataclass(frozen=True)
class RebalanceResult:
    """One rebalance.

    placement: the placement now in service (phy2log [layers, gpus * slots]).
    mode: "routing" (window nets used) or "loads" (load-only EPLB candidates).
    changed_layers: layers whose slots changed. gain: [layers] predicted relative gain of
    each layer's candidate (0 where none). experts_moved: expert copies loaded onto a GPU
    (:func:`placer.migration.moved_weights`), split into nvlink / nic by the link they come
    over (:func:`placer.migration.moved_by_link`), [layers] each. budget: most copies allowed.
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
    """Contiguous blocks (placer's ``contiguous`` baseline, one copy each) in ``slots_per_gpu``
    slots per GPU, spare slots empty: the default placement in service before any rebalance."""
    expert_gpu = baseline_expert_gpu("contiguous", num_layers, num_experts, num_gpus)
    return from_expert_gpu(expert_gpu, num_gpus, gpus_per_node, slots_per_gpu,
                           {"solver": {"name": "contiguous"}})


def check_loads(loads: object, num_layers: int, num_experts: int, field_name: str = "loads") -> np.ndarray:
    """loads as float64 [layers, experts]: finite and non-negative (torch tensors accepted)."""
    if hasattr(loads, "detach"):
        loads = loads.detach().cpu().numpy()
    array = np.asarray(loads)
    if array.dtype.kind not in "iuf":
        raise InputError(None, field_name, f"expected numeric loads, got dtype {array.dtype}")
    if array.shape != (num_layers, num_experts):
        raise InputError(None, field_name, f"expected shape [{num_layers}, {num_experts}] (layers, experts), "
                         f"got {tuple(array.shape)}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError(None, field_name, "holds NaN or infinite loads")
    if (array < 0).any():
        raise InputError(None, field_name, f"holds a negative load ({array.min():g})")
    return array


def check_phy2log(phy2log: object, num_layers: int, num_experts: int, num_slots: int,
                  field_name: str = "current") -> np.ndarray:
    """A slots map as int64 [layers, slots]: ids in -1..E-1 and every expert present per layer."""
    if hasattr(phy2log, "detach"):
        phy2log = phy2log.detach().cpu().numpy()
    array = np.asarray(phy2log)
    if array.dtype.kind not in "iu":
        raise InputError(None, field_name, f"expected integer expert ids, got dtype {array.dtype}")
    if array.shape != (num_layers, num_slots):
        raise InputError(None, field_name, f"expected shape [{num_layers}, {num_slots}] (layers, slots), "
                         f"got {tuple(array.shape)}")
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
    the first batch); placement: the placement in service (default :func:`contiguous_slots`).
    """

    def __init__(self, num_layers: int, num_experts: int, num_nodes: int, gpus_per_node: int,
                 slots_per_gpu: int, config: RebalanceConfig | None = None, *, top_k: int | None = None,
                 placement: Placement | None = None) -> None:
        self.num_layers = _positive("num_layers", num_layers)
        self.num_experts = _positive("num_experts", num_experts)
        self.num_nodes = _positive("num_nodes", num_nodes)
        self.gpus_per_node = _positive("gpus_per_node", gpus_per_node)
        self.slots_per_gpu = _positive("slots_per_gpu", slots_per_gpu)
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
            mode, rows, gains = "loads", *self._load_candidates(given, serving, num_groups)
        else:
            mode, rows, gains = "routing", *self._routing_candidates(given, serving)
        chosen, budget = self._select(serving, rows, gains)
        phy2log = serving.phy2log.copy()
        phy2log[chosen] = rows[chosen]
        _check_complete(phy2log, self.num_experts)
        placement = Placement(phy2log, self.num_experts, self.gpus_per_node, self.slots_per_gpu,
                              {"solver": {"name": "placer-online", "mode": mode, **_config_facts(self.config)}})
        nvlink, nic = moved_by_link(serving, placement)
        self.placement = placement
        changed = tuple(int(i) for i in np.flatnonzero((phy2log != serving.phy2log).any(axis=1)))
        return RebalanceResult(placement, mode, changed, gains, nvlink, nic, budget, time.perf_counter() - start)

    # ------------------------------------------------------------ candidates

    def _routing_candidates(self, loads: np.ndarray | None, serving: Placement) -> tuple[np.ndarray, np.ndarray]:
        """Per layer the warm candidate row [layers, slots] and its predicted gain [layers]."""
        cfg = self.config
        summary = self.window.summary()
        one_copy = -(-self.num_experts // self.num_gpus)
        problems = build_problems(summary, self.num_nodes, self.gpus_per_node, one_copy)
        alpha = cfg.alpha if cfg.alpha is not None else DEFAULT_ALPHA.get(self.num_nodes, 2.0)
        window_loads = self.window.loads() if loads is None else loads
        rows = serving.phy2log.copy()
        gains = np.zeros(self.num_layers)
        for layer, (problem, part) in enumerate(zip(problems, summary.layers)):
            current = serving.phy2log[layer]
            start_gpu = primary_gpus(current, self.num_experts, self.slots_per_gpu, self.gpus_per_node, one_copy)
            start_node = start_gpu // self.gpus_per_node
            penalty = cfg.move_penalty * float(problem.loads.sum()) / self.num_experts
            node = warm_nodes(problem, start_node, penalty, alpha, cfg.kicks, cfg.seed + layer)
            before, _ = node_objective(problem, start_node, alpha)
            after, _ = node_objective(problem, node, alpha)
            layer_loads = window_loads[layer]
            copies = replica_counts(layer_loads, self.num_slots)
            row = arrange_layer(current, node, start_gpu, layer_loads, copies, part.coactivation.toarray(),
                                self.gpus_per_node, self.slots_per_gpu, one_copy, cfg.balance_rounds)
            rows[layer] = row
            gains[layer] = max(_relative_drop(before, after), _relative_drop(
                predicted_peak(current, layer_loads, self.slots_per_gpu),
                predicted_peak(row, layer_loads, self.slots_per_gpu)))
        return rows, gains

    def _load_candidates(self, loads: np.ndarray, serving: Placement, num_groups: int
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Per layer EPLB's row on the loads, relabelled to keep experts in place, and its
        predicted GPU-peak gain [layers]."""
        groups = num_groups if num_groups >= 1 and self.num_experts % num_groups == 0 else 1
        phy2log, _, _ = rebalance_experts(loads, self.num_slots, groups, self.num_nodes, self.num_gpus)
        proposed = Placement(phy2log, self.num_experts, self.gpus_per_node, self.slots_per_gpu)
        rows = minimize_moves(serving, proposed).phy2log
        gains = np.array([_relative_drop(predicted_peak(old, load, self.slots_per_gpu),
                                         predicted_peak(new, load, self.slots_per_gpu))
                          for old, new, load in zip(serving.phy2log, rows, loads)])
        return rows, gains

    # ------------------------------------------------------------ migration control

    def _select(self, serving: Placement, rows: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, int]:
        """Layers to re-place: gain >= min_gain, best gain per moved copy first, while the moved
        copies fit the budget (floor(move_budget x layers x slots)). Returns (layers, budget)."""
        budget = int(self.config.move_budget * self.num_layers * self.num_slots)
        proposed = Placement(rows, self.num_experts, self.gpus_per_node, self.slots_per_gpu)
        nvlink, nic = moved_by_link(serving, proposed)
        moved = nvlink + nic
        worth = np.flatnonzero((gains >= self.config.min_gain) & (gains > 0)
                               & (rows != serving.phy2log).any(axis=1))
        order = sorted(worth, key=lambda layer: (-gains[layer] / max(moved[layer], 1), layer))
        chosen, spent = [], 0
        for layer in order:
            if spent + moved[layer] <= budget:
                chosen.append(layer)
                spent += int(moved[layer])
        return np.array(sorted(chosen), dtype=np.int64), budget


def _relative_drop(before: float, after: float) -> float:
    return (before - after) / before if before > 0 else 0.0


def _config_facts(config: RebalanceConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def _check_complete(phy2log: np.ndarray, num_experts: int) -> None:
    """Every layer holds every expert (a broken invariant is a bug, never returned)."""
    for layer, row in enumerate(phy2log):
        if np.setdiff1d(np.arange(num_experts), row).size:
            raise AssertionError(f"rebalance lost an expert on layer {layer}")
