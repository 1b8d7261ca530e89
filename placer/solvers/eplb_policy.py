"""DeepSeek's EPLB as a placement: the load-only baseline over the GPUs in service.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from placer.constraints import check_slots, live_mask
from placer.eplb import rebalance_experts
from placer.errors import InputError
from placer.placement import EMPTY, Placement
from placer.topology import Model, Topology


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
    check_slots(experts, total, slots)
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
