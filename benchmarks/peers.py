"""Mt-KaHyPar, the general-purpose partitioner placer is judged against (``pip install -e ".[bench]"``,
``mtkahypar>=1.5``).

Three variants, each from one layer summary's distinct top-k sets (nets weighted by their
token counts), seed 0, one thread, one copy of each expert on ceil(E / GPUs) slots per GPU:

- ``mtk-km1``: QUALITY preset, km1 (connectivity - 1) onto the nodes with equal expert
  counts (epsilon 0), then longest-first packing by train load onto each node's GPUs;
- ``mtk-km1-hq``: the same with the HIGHEST_QUALITY preset;
- ``mtk-steiner``: Steiner-tree mapping of the hypergraph onto a two-level target graph
  (nodes x GPUs, complete; an edge inside a node weighs 1, between nodes
  :data:`INTER_NODE_WEIGHT`), one block per GPU (epsilon 0), QUALITY preset (Mt-KaHyPar
  1.5 and later: ``Hypergraph.map_onto_graph``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from placer import Placement, Topology, from_expert_gpu
from placer.graph import LayerSummary, TraceSummary
from placer.solvers.gpu_stage import longest_first_pack
from placer.solvers.mtk import create_hypergraph, km1_parts, library

__all__ = ["INTER_NODE_WEIGHT", "PEERS", "available", "mtkahypar_placement"]

#: weight of a target-graph edge between two nodes (one inside a node weighs 1)
INTER_NODE_WEIGHT = 10

PEERS = ("mtk-km1", "mtk-km1-hq", "mtk-steiner")


def available() -> bool:
    """Whether Mt-KaHyPar >= 1.5 (Steiner-tree mapping) is importable."""
    try:
        import mtkahypar
    except ImportError:
        return False
    return hasattr(mtkahypar.Hypergraph, "map_onto_graph")


def _km1_layer(preset: str) -> Callable[[LayerSummary, Topology, int], np.ndarray]:
    def solve(part: LayerSummary, topology: Topology, slots: int) -> np.ndarray:
        node = km1_parts(part.sets, part.set_counts, part.num_experts, topology.nodes, preset)
        expert_gpu = np.zeros(len(node), dtype=np.int64)
        gpus = topology.gpus_per_node
        for n in range(topology.nodes):
            members = np.flatnonzero(node == n)
            expert_gpu[members] = n * gpus + longest_first_pack(members, part.loads, gpus, slots)
        return expert_gpu
    return solve


def _steiner_layer(part: LayerSummary, topology: Topology, slots: int) -> np.ndarray:
    """GPU of every expert [E]: the hypergraph mapped onto the two-level target graph."""
    import mtkahypar

    lib = library()
    mtkahypar.set_seed(0)
    gpus = topology.num_gpus
    context = lib.context_from_preset(mtkahypar.PresetType.QUALITY)
    context.set_mapping_parameters(gpus, 0.0)
    context.logging = False
    edges = [(a, b) for a in range(gpus) for b in range(a + 1, gpus)]
    weights = [1 if a // topology.gpus_per_node == b // topology.gpus_per_node else INTER_NODE_WEIGHT
               for a, b in edges]
    target = lib.create_target_graph(context, gpus, len(edges), edges, weights)
    mapped = create_hypergraph(context, part.sets, part.set_counts, part.num_experts).map_onto_graph(target, context)
    return np.array([mapped.block_id(e) for e in range(part.num_experts)], dtype=np.int64)


_LAYER = {"mtk-km1": _km1_layer("QUALITY"), "mtk-km1-hq": _km1_layer("HIGHEST_QUALITY"),
          "mtk-steiner": _steiner_layer}


def mtkahypar_placement(summary: TraceSummary, topology: Topology, variant: str = "mtk-km1") -> Placement:
    """The ``variant`` (see :data:`PEERS`) of every layer of ``summary`` on ``topology``, with
    ceil(E / GPUs) slots per GPU. Raises ImportError when Mt-KaHyPar is not installed."""
    slots = -(-summary.num_experts // topology.num_gpus)
    expert_gpu = np.stack([_LAYER[variant](part, topology, slots) for part in summary.layers])
    return from_expert_gpu(expert_gpu, topology.num_gpus, topology.gpus_per_node, slots,
                           {"solver": {"name": variant}})
