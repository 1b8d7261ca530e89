"""Online rebalancing: a bounded routing window and a warm, migration-aware rebalancer.

``Rebalancer(layers, experts, nodes, gpus_per_node, slots_per_gpu, RebalanceConfig())``
lives across an engine's steps: ``observe(topk_ids)`` folds routing ``[tokens, layers, k]``
into a decayed window (:mod:`placer.online.window`); ``rebalance(loads=None, current=None)``
returns a :class:`RebalanceResult` whose ``placement`` (phy2log ``[layers, gpus * slots]``)
is warm-started from the one in service (:mod:`placer.online.rebalancer`,
:mod:`placer.online.warm`). Settings: :class:`RebalanceConfig` (:mod:`placer.online.config`).
"""

from placer.online.config import RebalanceConfig
from placer.online.rebalancer import (
    Rebalancer,
    RebalanceResult,
    check_loads,
    check_phy2log,
    contiguous_slots,
    slots_per_gpu_for,
)
from placer.online.window import RoutingWindow, memory_bound

__all__ = [
    "RebalanceConfig", "RebalanceResult", "Rebalancer", "RoutingWindow", "check_loads", "check_phy2log",
    "contiguous_slots", "memory_bound", "slots_per_gpu_for",
]
