"""Cluster topology and MoE model descriptions (plain, validated-at-load dataclasses).

Units: bytes, bytes/s per direction per GPU, FLOP/s, seconds. A "node" is one
NVLink domain; GPU ``g`` sits on node ``g // gpus_per_node``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


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
