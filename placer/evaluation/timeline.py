"""Timeline replay: placement policies side by side over a time-ordered trace.

The trace is cut into windows of ``window_tokens`` tokens (the last one may be shorter and
counts as a window). Window ``i`` is served by the placement each policy decided from the
data *before* it, never from window ``i`` itself (the oracle excepted, as a reference):

- ``static``: solved once on window 0, served from window 1 on;
- ``eplb``: DeepSeek's EPLB on window i-1's expert loads (every window);
- ``placer``: the online :class:`placer.online.Rebalancer` (its defaults unless a config is
  given), which has observed windows 0..i-1 and re-places warm from what is in service;
- ``naive``: a fresh solve on window i-1 alone, no migration limit;
- ``oracle``: a fresh solve on window i itself (a reference, not a policy).

Fresh solves (static, eplb, naive, oracle) are relabelled against the placement they
replace (:func:`placer.migration.minimize_moves`), so they move as few copies as their
layout allows. Window 0 is served by ``contiguous`` (one copy of each expert, spare slots
empty) for every policy and is left out of every total. Per window and policy the replay
(:func:`placer.evaluation.replay.evaluate`, token source ``t mod P`` with ``t`` the position
in the whole stream) gives inter-node copies, the NIC peak and GPU peak (busiest node / GPU,
summed over layers as the replay sums them), and with a model the all-to-all time; the
migration into the window gives expert copies moved over NVLink and over the NIC, bytes
(copies x the model's expert bytes) and its time: per GPU, the NVLink bytes it receives at
the topology's NVLink bandwidth plus the NIC bytes at its NIC bandwidth, the slowest GPU.
Totals sum over windows 1.. . Break-even: migration seconds / all-to-all seconds saved over
``static``, both summed: how many serving steps of one window's tokens each window must
stand for before the policy's migration pays for itself (inf when it saves nothing).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from placer.dispatch import LP_BATCH_TOKENS
from placer.errors import InputError
from placer.evaluation.replay import evaluate
from placer.migration import minimize_moves, moved_by_link
from placer.online import RebalanceConfig, Rebalancer, contiguous_slots
from placer.placement import Placement
from placer.progress import ProgressFn
from placer.request import BATCHED_RULES, PlacementProblem, SolverSettings
from placer.solvers.api import solve
from placer.solvers.eplb_policy import eplb_placement
from placer.topology import Model, Topology
from placer.trace import Trace

__all__ = ["POLICIES", "Timeline", "replay_timeline", "window_bounds"]

POLICIES = ("static", "eplb", "placer", "naive", "oracle")
STAGE = "replaying timeline"


def window_bounds(num_tokens: int, window_tokens: int) -> list[tuple[int, int]]:
    """[lo, hi) token range of every window, in order; the last may be shorter."""
    return [(lo, min(lo + window_tokens, num_tokens)) for lo in range(0, num_tokens, window_tokens)]


@dataclass
class Timeline:
    """A timeline replay's results.

    windows: [lo, hi) token range of each window. per_window: policy -> one dict per window
    (window 0 included, served by contiguous, ``counted`` False). totals: policy -> sums over
    windows 1.. (see the module docstring). config: how it was run.
    """

    windows: list[tuple[int, int]]
    per_window: dict[str, list[dict]]
    totals: dict[str, dict]
    config: dict = field(default_factory=dict)

    def series(self, policy: str, name: str) -> np.ndarray:
        """[windows] one figure of one policy over time (NaN where missing)."""
        return np.array([np.nan if row.get(name) is None else row[name] for row in self.per_window[policy]],
                        dtype=np.float64)

    def to_dict(self) -> dict:
        return {"windows": [list(w) for w in self.windows], "totals": self.totals,
                "per_window": self.per_window, "config": self.config}


def _digest(placement: Placement) -> str:
    return hashlib.sha256(np.ascontiguousarray(placement.phy2log, dtype=np.int64).tobytes()).hexdigest()[:16]


def _migration(previous: Placement, current: Placement, topology: Topology, model: Model | None) -> dict:
    """Copies moved into ``current`` by link, bytes and seconds (slowest receiving GPU)."""
    nvlink, nic = moved_by_link(previous, current)
    expert_bytes = None if model is None or model.expert_param_bytes <= 0 else model.expert_param_bytes
    facts = {"nvlink_moves": int(nvlink.sum()), "nic_moves": int(nic.sum()),
             "experts_moved": int(nvlink.sum() + nic.sum()), "bytes_moved": None, "migration_s": None}
    if expert_bytes is not None:
        per_gpu = (nvlink.sum(axis=0) * expert_bytes / topology.nvlink_bandwidth
                   + nic.sum(axis=0) * expert_bytes / topology.nic_bandwidth)
        facts["bytes_moved"] = facts["experts_moved"] * expert_bytes
        facts["migration_s"] = float(per_gpu.max()) if per_gpu.size else 0.0
    return facts


def _served(trace: Trace, lo: int, hi: int, placement: Placement, topology: Topology, model: Model | None,
            rule: str, dispatch: str, lp_batch: int) -> dict:
    """Replay of tokens [lo, hi) against ``placement``: the timeline's per-window figures."""
    part = Trace(trace.topk_ids[lo:hi], trace.num_experts)
    totals = evaluate(part, placement, topology, model, dispatch=dispatch, rule=rule, token_offset=lo,
                      lp_batch=lp_batch).totals
    tier = "dedup" if dispatch == "normal" else "naive"
    return {"internode_copies": int(totals[f"internode_tokens_{tier}"]), "nic_peak": int(totals["nic_peak_tokens"]),
            "gpu_peak": int(totals["gpu_peak_load"]), "all_to_all_s": totals.get("all_to_all_s")}


class _Policies:
    """The placement each policy serves a window with (decided from the windows before it)."""

    def __init__(self, trace: Trace, topology: Topology, model: Model | None, slots_per_gpu: int,
                 config: RebalanceConfig, solver: str, time_limit: float, seed: int) -> None:
        self.trace, self.topology, self.model, self.slots = trace, topology, model, slots_per_gpu
        self.solver, self.time_limit, self.seed = solver, time_limit, seed
        self.rebalancer = Rebalancer.for_topology(topology, trace.num_layers, trace.num_experts, slots_per_gpu,
                                                  config, top_k=trace.top_k)
        self.static: Placement | None = None

    def _part(self, lo: int, hi: int) -> Trace:
        return Trace(self.trace.topk_ids[lo:hi], self.trace.num_experts)

    def _solve(self, lo: int, hi: int) -> Placement:
        problem = PlacementProblem(self.topology, self.model, slots_per_gpu=self.slots)
        settings = SolverSettings(self.solver, self.time_limit, self.seed)
        placement, _ = solve(self._part(lo, hi), problem, settings)
        return placement

    def decide(self, policy: str, previous: Placement, prior: tuple[int, int], serving: tuple[int, int],
               first: tuple[int, int]) -> Placement:
        """The placement ``policy`` serves window ``serving`` with; ``prior`` is the window just
        before it, ``first`` window 0, ``previous`` the policy's placement in service."""
        if policy == "placer":
            self.rebalancer.observe(self.trace.topk_ids[prior[0]:prior[1]])
            return self.rebalancer.rebalance(current=previous).placement
        if policy == "static":
            if self.static is None:
                self.static = minimize_moves(previous, self._solve(*first))
            return self.static
        if policy == "eplb":
            part = self._part(*prior)
            loads = np.stack([np.bincount(layer[layer >= 0], minlength=part.num_experts)
                              for layer in part.topk_ids.swapaxes(0, 1)])
            return minimize_moves(previous, eplb_placement(loads, self.topology, self.model, self.slots))
        window = serving if policy == "oracle" else prior
        return minimize_moves(previous, self._solve(*window))


def _check(trace: Trace, topology: Topology, window_tokens: int, slots_per_gpu: int,
           policies: Sequence[str]) -> None:
    if isinstance(window_tokens, bool) or not isinstance(window_tokens, (int, np.integer)) or window_tokens < 1:
        raise InputError(None, "window_tokens", f"expected a positive token count, got {window_tokens!r}")
    if trace.num_tokens <= window_tokens:
        raise InputError(None, "window_tokens", f"{window_tokens} tokens leave no window after the first "
                         f"(the trace has {trace.num_tokens})")
    if slots_per_gpu * topology.num_gpus < trace.num_experts:
        raise InputError(None, "slots_per_gpu", f"{topology.num_gpus} GPUs x {slots_per_gpu} slots < "
                         f"{trace.num_experts} experts")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise InputError(None, "policies", f"expected some of {', '.join(POLICIES)}, got {list(policies)}")


def replay_timeline(
    trace: Trace,
    topology: Topology,
    model: Model | None = None,
    *,
    window_tokens: int,
    slots_per_gpu: int,
    policies: Sequence[str] = POLICIES,
    config: RebalanceConfig | None = None,
    rule: str = "nearest",
    lp_batch: int = LP_BATCH_TOKENS,
    dispatch: str = "normal",
    solver: str = "spectral",
    time_limit: float = 60.0,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Timeline:
    """Replay ``trace`` (time-ordered, in memory) window by window under each policy.

    solver, time_limit, seed: the fresh solves of static, naive and oracle (:func:`place`).
    rule, lp_batch: the replica dispatch rule of every window's replay (:mod:`placer.dispatch`).
    config: the rebalancer's settings (default :class:`RebalanceConfig`). Returns a
    :class:`Timeline`. Raises InputError for bad windows, slots or policy names.
    """
    policies = tuple(dict.fromkeys(policies))
    _check(trace, topology, window_tokens, slots_per_gpu, policies)
    config = config if config is not None else RebalanceConfig()
    windows = window_bounds(trace.num_tokens, int(window_tokens))
    deciders = _Policies(trace, topology, model, slots_per_gpu, config, solver, time_limit, seed)
    start = contiguous_slots(trace.num_layers, trace.num_experts, topology.num_gpus, topology.gpus_per_node,
                             slots_per_gpu)
    first = _served(trace, *windows[0], start, topology, model, rule, dispatch, lp_batch)
    per_window = {p: [{"window": 0, "counted": False, "placement": _digest(start), **first,
                       **_migration(start, start, topology, model), "decide_s": 0.0}] for p in policies}
    serving = dict.fromkeys(policies, start)
    total_steps = (len(windows) - 1) * len(policies)
    for i in range(1, len(windows)):
        for j, policy in enumerate(policies):
            began = time.perf_counter()
            placement = deciders.decide(policy, serving[policy], windows[i - 1], windows[i], windows[0])
            decided = time.perf_counter() - began
            row = {"window": i, "counted": True, "placement": _digest(placement),
                   **_served(trace, *windows[i], placement, topology, model, rule, dispatch, lp_batch),
                   **_migration(serving[policy], placement, topology, model), "decide_s": decided}
            per_window[policy].append(row)
            serving[policy] = placement
            if progress is not None:
                progress(STAGE, (i - 1) * len(policies) + j + 1, total_steps)
    totals = {p: _totals(per_window[p], per_window.get("static")) for p in policies}
    config_facts = {"window_tokens": int(window_tokens), "windows": len(windows), "tokens": trace.num_tokens,
                    "slots_per_gpu": slots_per_gpu, "rule": rule, "dispatch": dispatch, "solver": solver,
                    "time_limit": time_limit, "seed": seed, "topology": topology.name, "nodes": topology.nodes,
                    "gpus_per_node": topology.gpus_per_node, "model": None if model is None else model.name,
                    "rebalancer": {name: getattr(config, name) for name in config.__dataclass_fields__},
                    **({"lp_batch": lp_batch} if rule in BATCHED_RULES else {})}
    return Timeline(windows, per_window, totals, config_facts)


def _sum(rows: list[dict], name: str) -> float | None:
    values = [row[name] for row in rows]
    return None if any(v is None for v in values) else float(sum(values))


def _totals(rows: list[dict], static_rows: list[dict] | None) -> dict:
    """Sums over the counted windows, moves per rebalance, a2a + migration and break-even."""
    counted = [row for row in rows if row["counted"]]
    totals = {name: _sum(counted, name) for name in ("internode_copies", "nic_peak", "gpu_peak", "all_to_all_s",
                                                      "nvlink_moves", "nic_moves", "experts_moved", "bytes_moved",
                                                      "migration_s", "decide_s")}
    totals["moves_per_rebalance"] = totals["experts_moved"] / len(counted)
    a2a, migration = totals["all_to_all_s"], totals["migration_s"]
    totals["a2a_plus_migration_s"] = None if a2a is None or migration is None else a2a + migration
    totals["break_even_steps"] = None
    if static_rows is not None and a2a is not None and migration is not None and rows is not static_rows:
        saved = _sum([r for r in static_rows if r["counted"]], "all_to_all_s") - a2a
        totals["break_even_steps"] = migration / saved if saved > 0 else math.inf
    return totals
