"""Placements: which expert sits in which physical slot, and the built-in baselines.

``phy2log: [layers, gpus * slots_per_gpu]`` gives the logical expert in each
physical slot (-1 = empty); slot ``p`` is on GPU ``p // slots_per_gpu`` and GPU
``g`` on node ``g // gpus_per_node``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from placer.checks import check_count
from placer.errors import InputError
from placer.topology import MAX_EXPERTS, MAX_GPUS, MAX_LAYERS

EMPTY = -1
MAX_SLOT_ENTRIES = 1 << 24
"""Largest layers x slots of a placement (4,096 GPUs x 64 slots x 64 layers; 128 MB of ids)."""
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

    def __post_init__(self) -> None:
        """Shape facts every consumer relies on (O(1) and the excluded ids; the slot contents
        of an untrusted map are checked by :func:`placer.formats.placement_io.check_phy2log`)."""
        if not isinstance(self.phy2log, np.ndarray) or self.phy2log.ndim != 2 or self.phy2log.dtype.kind not in "iu":
            raise InputError(None, "phy2log", "expected a [layers, gpus * slots_per_gpu] integer array")
        check_count(self.num_experts, "num_experts", 1, MAX_EXPERTS)
        check_count(self.slots_per_gpu, "slots_per_gpu", 1, MAX_EXPERTS)
        check_count(self.gpus_per_node, "gpus_per_node", 1, MAX_GPUS)
        slots = self.phy2log.shape[1]
        if self.phy2log.shape[0] == 0 or slots == 0 or slots % self.slots_per_gpu:
            raise InputError(None, "phy2log", f"shape {self.phy2log.shape} is not [layers, gpus x "
                                              f"{self.slots_per_gpu} slots]")
        if (slots // self.slots_per_gpu) % self.gpus_per_node:
            raise InputError(None, "gpus_per_node", f"{self.gpus_per_node} does not divide "
                                                    f"{slots // self.slots_per_gpu} GPUs")
        for gpu in self.metadata.get("excluded_gpus") or []:
            check_count(gpu, "excluded_gpus", 0, slots // self.slots_per_gpu - 1)

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
    check_count(num_gpus, "num_gpus", 1, MAX_GPUS)
    expert_gpu = np.asarray(expert_gpu)
    if expert_gpu.ndim != 2 or expert_gpu.dtype.kind not in "iu" or 0 in expert_gpu.shape:
        raise InputError(None, "expert_gpu", f"expected a non-empty [layers, experts] integer array, got "
                                             f"shape {expert_gpu.shape} of {expert_gpu.dtype}")
    if expert_gpu.min() < 0 or expert_gpu.max() >= num_gpus:
        bad = int(expert_gpu.min()) if expert_gpu.min() < 0 else int(expert_gpu.max())
        raise InputError(None, "expert_gpu", f"GPU {bad} is not among the {num_gpus} GPUs")
    layers, experts = expert_gpu.shape
    _check_entries(layers, experts)
    counts = np.stack([np.bincount(row, minlength=num_gpus) for row in expert_gpu])
    slots = int(counts.max()) if slots_per_gpu is None else check_count(slots_per_gpu, "slots_per_gpu", 1)
    _check_entries(layers, num_gpus * slots)
    if counts.max() > slots:
        raise InputError(None, "slots_per_gpu", f"{slots} slots cannot hold the {int(counts.max())} experts "
                                                "one GPU is given")
    phy2log = np.full((layers, num_gpus * slots), EMPTY, dtype=np.int64)
    for layer, row in enumerate(expert_gpu):
        order = np.argsort(row, kind="stable")
        gpus = row[order]
        first_of_gpu = np.searchsorted(gpus, gpus, side="left")
        position = np.arange(experts) - first_of_gpu
        phy2log[layer, gpus * slots + position] = order
    return Placement(phy2log, experts, gpus_per_node, slots, dict(metadata or {}))


def _check_entries(layers: int, slots: int) -> None:
    if layers * slots > MAX_SLOT_ENTRIES:
        raise InputError(None, "num_layers", f"{layers:,} layers x {slots:,} slots exceed placer's limit of "
                                             f"{MAX_SLOT_ENTRIES:,} slot entries")


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
    raise InputError(None, "name", f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")


def baseline(
    name: str,
    num_layers: int,
    num_experts: int,
    num_gpus: int,
    gpus_per_node: int,
    excluded_gpus: Sequence[int] = (),
) -> Placement:
    """A named baseline placement (see :func:`baseline_expert_gpu`) over the GPUs in service."""
    if name not in BASELINES:
        raise InputError(None, "name", f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
    check_count(num_layers, "num_layers", 1, MAX_LAYERS)
    check_count(num_experts, "num_experts", 1, MAX_EXPERTS)
    check_count(num_gpus, "num_gpus", 1, MAX_GPUS)
    check_count(gpus_per_node, "gpus_per_node", 1, num_gpus)
    _check_entries(num_layers, max(num_experts, num_gpus))
    if num_gpus % gpus_per_node:
        raise InputError(None, "gpus_per_node", f"{gpus_per_node} does not divide num_gpus {num_gpus}")
    excluded_gpus = [check_count(g, "excluded_gpus", 0, num_gpus - 1) for g in excluded_gpus]
    live = np.setdiff1d(np.arange(num_gpus), np.asarray(excluded_gpus, dtype=np.int64))
    if not len(live):
        raise InputError(None, "excluded_gpus", f"all {num_gpus} GPUs excluded")
    expert_gpu = live[baseline_expert_gpu(name, num_layers, num_experts, len(live))]
    metadata: dict = {"solver": {"name": name}}
    if len(live) < num_gpus:
        metadata["excluded_gpus"] = sorted(int(g) for g in excluded_gpus)
    slots = -(-num_experts // len(live))
    return from_expert_gpu(expert_gpu, num_gpus, gpus_per_node, slots, metadata)
