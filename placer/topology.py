"""Cluster topology and MoE model descriptions (plain, validated-at-load dataclasses).

Units: bytes, bytes/s per direction per GPU, FLOP/s, seconds. A "node" is one
NVLink domain; GPU ``g`` sits on node ``g // gpus_per_node``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from placer.errors import InputError

MAX_NODES = 4096
"""Largest node count accepted (bounds every per-node and per-GPU array)."""
MAX_GPUS = 1 << 16
"""Largest GPU count accepted (nodes x gpus_per_node)."""
MAX_EXPERTS = 1 << 16
"""Largest expert count accepted (today's largest MoE layers have a few hundred)."""
MAX_LAYERS = 4096
"""Largest layer count accepted (MoE layers, and dense layers before them)."""
MAX_WIDTH = 1 << 24
"""Largest hidden or expert FFN width accepted."""


def check_fields(obj: object, limits: dict[str, tuple[float, float]]) -> None:
    """Every field of the dataclass ``obj`` has its annotated type (an int field a true int,
    not a float or bool; a float field a finite real number) and lies within ``limits``
    (``{field: (low, high)}``, inclusive). Raises :class:`InputError` naming the field."""
    for spec in fields(obj):
        value = getattr(obj, spec.name)
        if spec.type == "str":
            if not isinstance(value, str):
                raise InputError(None, spec.name, f"expected a string, got {value!r}")
            continue
        if spec.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(None, spec.name, f"expected an integer, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(None, spec.name, f"expected a finite number, got {value!r}")
        low, high = limits.get(spec.name, (0, math.inf))
        if not low <= value <= high:
            raise InputError(None, spec.name, f"expected {low:g}..{high:g}, got {value!r}")


@dataclass(frozen=True)
class Topology:
    """GPUs grouped into NVLink domains (nodes) joined by NICs."""

    name: str
    nodes: int
    gpus_per_node: int
    gpu_memory_bytes: float
    gpu_flops: float
    nvlink_bandwidth: float
    nic_bandwidth: float
    latency_s: float

    def __post_init__(self) -> None:
        tiny = math.ulp(0.0)
        check_fields(self, {"nodes": (1, MAX_NODES), "gpus_per_node": (1, MAX_GPUS),
                            "gpu_memory_bytes": (tiny, math.inf), "gpu_flops": (tiny, math.inf),
                            "nvlink_bandwidth": (tiny, math.inf), "nic_bandwidth": (tiny, math.inf)})
        if self.nodes * self.gpus_per_node > MAX_GPUS:
            raise InputError(None, "nodes", f"{self.nodes} x {self.gpus_per_node} GPUs exceed placer's "
                                            f"limit of {MAX_GPUS:,} GPUs")

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def node_nic_bandwidth(self) -> float:
        """A node's inter-node bandwidth: G x the per-GPU NIC figure (bytes/s, one direction)."""
        return self.gpus_per_node * self.nic_bandwidth

    def resized(self, nodes: int | None = None, gpus_per_node: int | None = None) -> Topology:
        """The same hardware with another node count or node size."""
        return replace(
            self,
            nodes=self.nodes if nodes is None else nodes,
            gpus_per_node=self.gpus_per_node if gpus_per_node is None else gpus_per_node,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Model:
    """The MoE facts placement and replay need."""

    name: str
    num_experts: int
    top_k: int
    hidden_size: int
    moe_intermediate_size: int
    num_moe_layers: int
    first_dense_layers: int = 0
    dispatch_bytes_per_element: float = 2.0
    combine_bytes_per_element: float = 2.0
    expert_param_bytes: float = 0.0
    num_groups: int = 0
    groups_per_token: int = 0

    def __post_init__(self) -> None:
        tiny = math.ulp(0.0)
        check_fields(self, {"num_experts": (1, MAX_EXPERTS), "top_k": (1, self.num_experts),
                            "hidden_size": (1, MAX_WIDTH), "moe_intermediate_size": (1, MAX_WIDTH),
                            "num_moe_layers": (1, MAX_LAYERS), "first_dense_layers": (0, MAX_LAYERS),
                            "dispatch_bytes_per_element": (tiny, 64), "combine_bytes_per_element": (tiny, 64),
                            "num_groups": (0, self.num_experts), "groups_per_token": (0, self.num_experts)})

    @property
    def flops_per_pair(self) -> float:
        """Forward FLOPs of one token through one expert's gated FFN: 6 x hidden x width."""
        return 6.0 * self.hidden_size * self.moe_intermediate_size

    @property
    def dispatch_bytes_per_token(self) -> float:
        return self.hidden_size * self.dispatch_bytes_per_element

    @property
    def combine_bytes_per_token(self) -> float:
        return self.hidden_size * self.combine_bytes_per_element

    @property
    def num_hidden_layers(self) -> int:
        return self.first_dense_layers + self.num_moe_layers

    def to_dict(self) -> dict:
        return asdict(self)
