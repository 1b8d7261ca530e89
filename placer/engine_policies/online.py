"""A :class:`placer.online.Rebalancer` as the drop-ins' proposer: a live window or a prior trace.

:class:`RebalancerProposer` answers each engine call with the rebalancer's
placement (``Rebalancer.rebalance(loads=weight, current=<map in service>,
num_groups=...)``): co-activation-aware when its window holds routing (fed by
a routing hook through :meth:`RebalancerProposer.observe`, or seeded from a
prior trace file), no opinion (None, so the drop-in serves EPLB) while the
window is empty or when the engine's cluster shape is not the rebalancer's.
After the drop-in has chosen what to serve (the peak guard may keep EPLB's
layers), :meth:`served` makes that the rebalancer's placement in service, so
SGLang, which passes no map in service, stays in step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from placer.engine_policies.inputs import EngineCall
from placer.online import RebalanceConfig, Rebalancer
from placer.placement import Placement

__all__ = ["RebalancerProposer"]

log = logging.getLogger(__name__)


class RebalancerProposer:
    """Proposer backed by a Rebalancer, given or built at the first engine call.

    rebalancer: an existing :class:`Rebalancer` (its layers, experts, nodes,
    GPUs per node and slots must match the engine's calls); or None to build one
    from the first call's shape with ``config``. trace: a prior trace (.npz path,
    Trace or TraceSource) folded into the window when the rebalancer is built or
    attached. ``last`` holds the last :class:`placer.online.RebalanceResult`.
    """

    def __init__(self, rebalancer: Rebalancer | None = None, *, trace: object = None,
                 config: RebalanceConfig | None = None) -> None:
        self.rebalancer = rebalancer
        self.config = config
        self.trace = str(trace) if isinstance(trace, Path) else trace
        self.last = None
        self._pending: list[np.ndarray] = []
        if rebalancer is not None and trace is not None:
            rebalancer.seed(trace)

    def observe(self, topk_ids: np.ndarray) -> None:
        """Routing [tokens, layers, k] into the window (held until the rebalancer exists)."""
        if self.rebalancer is None:
            self._pending.append(np.asarray(topk_ids).copy())
        else:
            self.rebalancer.observe(topk_ids)

    def _build(self, call: EngineCall) -> Rebalancer:
        rebalancer = Rebalancer(call.num_layers, call.num_experts, call.num_nodes, call.ranks_per_node,
                                call.slots_per_rank, self.config)
        if self.trace is not None:
            rebalancer.seed(self.trace)
        for batch in self._pending:
            rebalancer.observe(batch)
        self._pending.clear()
        return rebalancer

    def _matches(self, call: EngineCall) -> bool:
        r = self.rebalancer
        return (r.num_layers, r.num_experts, r.num_nodes, r.gpus_per_node, r.slots_per_gpu) == (
            call.num_layers, call.num_experts, call.num_nodes, call.ranks_per_node, call.slots_per_rank)

    def __call__(self, call: EngineCall) -> np.ndarray | None:
        """The rebalancer's phy2log for this call, or None (window empty or cluster shape differs)."""
        if self.rebalancer is None:
            self.rebalancer = self._build(call)
        if not self._matches(call):
            log.warning("engine call shape differs from the rebalancer's; serving EPLB")
            return None
        if self.rebalancer.window.empty:
            return None
        current = call.old_phy2log
        if current is not None and any(np.setdiff1d(np.arange(call.num_experts), row).size for row in current):
            current = None  # a map with a missing expert cannot be warm-started from
        self.last = self.rebalancer.rebalance(loads=call.weight, current=current, num_groups=call.num_groups)
        return self.last.placement.phy2log

    def served(self, phy2log: np.ndarray) -> None:
        """The placement the engine will serve becomes the rebalancer's placement in service."""
        r = self.rebalancer
        if r is not None and phy2log.shape == (r.num_layers, r.num_slots):
            r.placement = Placement(phy2log, r.num_experts, r.gpus_per_node, r.slots_per_gpu,
                                    dict(r.placement.metadata))
