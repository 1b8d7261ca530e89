"""Placements: which expert sits in which physical slot, and the built-in baselines.

``phy2log: [layers, gpus * slots_per_gpu]`` gives the logical expert in each
physical slot (-1 = empty); slot ``p`` is on GPU ``p // slots_per_gpu`` and GPU
``g`` on node ``g // gpus_per_node``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

EMPTY = -1
BASELINES = ("contiguous", "round-robin", "random")


@dataclass(frozen=True)
class Placement:
    """Expert-to-slot maps for every MoE layer plus the facts that produced them.

    phy2log: [layers, gpus * slots_per_gpu] int64, -1 for an empty slot.
    metadata: JSON-ready facts (topology, model, solver, objective, trace digest).
    """

    phy2log: np.ndarray
    num_experts: int
    gpus_per_node: int
    slots_per_gpu: int
    metadata: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def num_gpus(self) -> int:
        return int(self.phy2log.shape[1]) // self.slots_per_gpu

    @property
    def num_nodes(self) -> int:
        return self.num_gpus // self.gpus_per_node

    @property
    def excluded_gpus(self) -> list[int]:
        """GPUs out of service when placed (``metadata["excluded_gpus"]``, sorted; [] = none)."""
        return sorted(int(g) for g in self.metadata.get("excluded_gpus", []))

    def live_gpus(self) -> np.ndarray:
        """Ids of the GPUs in service (not in :attr:`excluded_gpus`), ascending: [live] int64."""
        live = np.ones(self.num_gpus, dtype=bool)
        live[np.asarray(self.excluded_gpus, dtype=np.int64)] = False
        return np.flatnonzero(live)

    def expert_gpu(self) -> np.ndarray:
        """GPU of every expert: [layers, experts] (each expert held exactly once)."""
        result = np.full((self.num_layers, self.num_experts), EMPTY, dtype=np.int64)
        slots = np.arange(self.phy2log.shape[1])
        for layer, row in enumerate(self.phy2log):
            held = row >= 0
            result[layer, row[held]] = slots[held] // self.slots_per_gpu
        return result

    def expert_copies(self) -> np.ndarray:
        """Slots holding each expert: [layers, experts]."""
        return np.stack([np.bincount(row[row >= 0], minlength=self.num_experts) for row in self.phy2log])

    def gpu_expert_counts(self) -> np.ndarray:
        """Experts held per GPU: [layers, gpus]."""
        filled = (self.phy2log >= 0).reshape(self.num_layers, self.num_gpus, self.slots_per_gpu)
        return filled.sum(axis=2)


def decoder_layer_ids(placement: Placement, first_dense_layers: int | None = None) -> np.ndarray:
    """The model's decoder-layer index of every placement row: [layers] int64.

    From the trace it was solved on (``metadata["trace"]["layer_ids"]``), else
    ``first_dense_layers`` (given, else the recorded model's) + row.
    """
    recorded = (placement.metadata.get("trace") or {}).get("layer_ids")
    if recorded is not None:
        return np.asarray(recorded, dtype=np.int64)
    if first_dense_layers is None:
        first_dense_layers = int((placement.metadata.get("model") or {}).get("first_dense_layers") or 0)
    return first_dense_layers + np.arange(placement.num_layers, dtype=np.int64)


def from_expert_gpu(
    expert_gpu: np.ndarray,
    num_gpus: int,
    gpus_per_node: int,
    slots_per_gpu: int | None = None,
    metadata: dict | None = None,
) -> Placement:
    """Build a placement from an expert -> GPU map.

    expert_gpu: [layers, experts] GPU id of every expert. Experts fill their
    GPU's slots in increasing id order; ``slots_per_gpu`` defaults to the most
    experts any GPU holds.
    """
    layers, experts = expert_gpu.shape
    counts = np.stack([np.bincount(row, minlength=num_gpus) for row in expert_gpu])
    slots = int(counts.max()) if slots_per_gpu is None else slots_per_gpu
    phy2log = np.full((layers, num_gpus * slots), EMPTY, dtype=np.int64)
    for layer, row in enumerate(expert_gpu):
        order = np.argsort(row, kind="stable")
        gpus = row[order]
        first_of_gpu = np.searchsorted(gpus, gpus, side="left")
        position = np.arange(experts) - first_of_gpu
        phy2log[layer, gpus * slots + position] = order
    return Placement(phy2log, experts, gpus_per_node, slots, dict(metadata or {}))


def contiguous_gpus(num_experts: int, num_gpus: int) -> np.ndarray:
    """Megatron / vLLM ``linear``: GPU r owns a block of E // P experts, the first E mod P one more.

    Returns expert_gpu: [experts].
    """
    base, extra = divmod(num_experts, num_gpus)
    sizes = np.full(num_gpus, base) + (np.arange(num_gpus) < extra)
    return np.repeat(np.arange(num_gpus), sizes)


def baseline_expert_gpu(name: str, num_layers: int, num_experts: int, num_gpus: int) -> np.ndarray:
    """Expert -> GPU map of a named baseline: [layers, experts].

    contiguous: blocks as :func:`contiguous_gpus`; round-robin: expert e on GPU
    e mod P (vLLM); random: per layer a permutation drawn from one generator
    seeded with 0, then contiguous blocks.
    """
    block = contiguous_gpus(num_experts, num_gpus)
    if name == "contiguous":
        return np.tile(block, (num_layers, 1))
    if name == "round-robin":
        return np.tile(np.arange(num_experts) % num_gpus, (num_layers, 1))
    if name == "random":
        rng = np.random.default_rng(0)
        result = np.empty((num_layers, num_experts), dtype=np.int64)
        for layer in range(num_layers):
            result[layer, rng.permutation(num_experts)] = block
        return result
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")


def baseline(
    name: str,
    num_layers: int,
    num_experts: int,
    num_gpus: int,
    gpus_per_node: int,
    excluded_gpus: Sequence[int] = (),
) -> Placement:
    """A named baseline placement (see :func:`baseline_expert_gpu`) over the GPUs in service."""
    live = np.setdiff1d(np.arange(num_gpus), np.asarray(excluded_gpus, dtype=np.int64))
    expert_gpu = live[baseline_expert_gpu(name, num_layers, num_experts, len(live))]
    metadata: dict = {"solver": {"name": name}}
    if len(live) < num_gpus:
        metadata["excluded_gpus"] = sorted(int(g) for g in excluded_gpus)
    slots = -(-num_experts // len(live))
    return from_expert_gpu(expert_gpu, num_gpus, gpus_per_node, slots, metadata)
