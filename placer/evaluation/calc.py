"""Analytic expert-parallel all-to-all volume under uniform routing (no trace needed).

Notation: E experts, k experts per token, P GPUs in the EP group, G GPUs of the group
per node (G = min(gpus_per_node, P)), N = P / G nodes, T tokens per GPU, h hidden size.
Experts sit contiguously, E / P per GPU (so E / N per node), and every token picks k
distinct experts uniformly at random. A "vector" is one token's hidden state (h
elements). Unless a name says otherwise, figures are per GPU, per MoE layer and one
way: dispatch sends them, combine returns as many.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from math import comb

from placer.errors import InputError
from placer.topology import Model, Topology


@dataclass(frozen=True)
class AllToAllVolume:
    """All-to-all traffic of one GPU (vectors, bytes) and, given hardware, its time (s)."""

    model: str
    ep_size: int
    gpus_per_node: int
    nodes: int
    tokens_per_gpu: int
    max_nodes: int | None
    remote_vectors: float
    intra_node_vectors: float
    inter_node_vectors: float
    node_dedup_vectors: float
    node_limited_vectors: float | None
    dispatch_bytes_per_vector: float
    combine_bytes_per_vector: float
    dispatch_bytes: float
    combine_bytes: float
    forward_bytes: float
    nic_vectors: float
    nic_dispatch_bytes: float
    nic_combine_bytes: float
    topology: str | None = None
    all_to_all_time_s: float | None = None
    expert_compute_time_s: float | None = None
    comm_compute_ratio: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def all_to_all_volume(
    model: Model,
    ep_size: int,
    tokens_per_gpu: int,
    gpus_per_node: int,
    max_nodes: int | None = None,
    topology: Topology | None = None,
) -> AllToAllVolume:
    """Expected all-to-all traffic of one GPU when routing is uniform.

    Vector counts (per GPU, per layer, one way):
      remote_vectors       = T k (P-1)/P        (token-expert pairs on another GPU)
      intra_node_vectors   = T k (G-1)/P        (... on another GPU of the same node)
      inter_node_vectors   = T k (N-1)/N        (... on another node, one copy per pair)
      node_dedup_vectors   = T (N-1) (1 - C(E - E/N, k) / C(E, k))
                             (one copy per remote node holding >= 1 of the token's experts)
      node_limited_vectors = T min(M, N, k) (N-1)/N   with max_nodes = M, else None
                             (DeepSeek-V3: a token reaches at most M nodes, one copy each)
    Bytes: dispatch_bytes = remote_vectors x h x dispatch bytes/element, combine_bytes
    likewise with the combine element size; forward_bytes = (dispatch + combine) x MoE layers.
    The NIC carries one copy per remote node (as DeepEP does): nic_vectors is
    node_limited_vectors when max_nodes is given, else node_dedup_vectors.

    With a topology (``gpus_per_node`` above still defines the nodes; the topology gives
    bandwidths, latency and FLOP/s), per layer:
      one way       = max(NIC bytes / nic_bandwidth, intra-node bytes / nvlink_bandwidth)
                      + latency_s
      all_to_all    = dispatch way + combine way
      expert_compute = T k x model.flops_per_pair / gpu_flops   (T k pairs land on each GPU)
      comm_compute_ratio = all_to_all / expert_compute
    """
    _check_arguments(model, ep_size, tokens_per_gpu, gpus_per_node, max_nodes)
    experts, k, tokens = model.num_experts, model.top_k, tokens_per_gpu
    group = min(gpus_per_node, ep_size)
    nodes = ep_size // group
    dispatch_bpv = model.hidden_size * model.dispatch_bytes_per_element
    combine_bpv = model.hidden_size * model.combine_bytes_per_element
    remote = tokens * k * (ep_size - 1) / ep_size
    intra = tokens * k * (group - 1) / ep_size
    dedup = tokens * expected_remote_nodes(experts, k, nodes)
    limited = None
    if max_nodes is not None:
        limited = tokens * min(max_nodes, nodes, k) * (nodes - 1) / nodes
    nic = dedup if limited is None else limited
    volume = AllToAllVolume(
        model=model.name,
        ep_size=ep_size,
        gpus_per_node=group,
        nodes=nodes,
        tokens_per_gpu=tokens,
        max_nodes=max_nodes,
        remote_vectors=remote,
        intra_node_vectors=intra,
        inter_node_vectors=tokens * k * (nodes - 1) / nodes,
        node_dedup_vectors=dedup,
        node_limited_vectors=limited,
        dispatch_bytes_per_vector=dispatch_bpv,
        combine_bytes_per_vector=combine_bpv,
        dispatch_bytes=remote * dispatch_bpv,
        combine_bytes=remote * combine_bpv,
        forward_bytes=remote * (dispatch_bpv + combine_bpv) * model.num_moe_layers,
        nic_vectors=nic,
        nic_dispatch_bytes=nic * dispatch_bpv,
        nic_combine_bytes=nic * combine_bpv,
    )
    return volume if topology is None else _with_times(volume, model, topology)


def expected_remote_nodes(num_experts: int, top_k: int, nodes: int) -> float:
    """Expected number of other nodes holding >= 1 of a token's k uniformly chosen experts.

    Each node holds E / N experts (E divisible by N); a given node is missed with
    probability C(E - E/N, k) / C(E, k), so the answer is (N-1)(1 - that).
    """
    return float((nodes - 1) * _hit_probability(num_experts, top_k, nodes))


def expected_nvlink_copies(num_experts: int, top_k: int, ep_size: int, gpus_per_node: int) -> float:
    """Expected NVLink copies one token causes per layer and way under DeepEP normal dispatch.

    Contiguous experts, uniform routing: every GPU of the group other than the source and
    the N-1 remote landing GPUs gets one copy if it holds >= 1 of the token's experts,
    (P - N)(1 - C(E - E/P, k) / C(E, k)). (Per-pair dispatch: ``intra_node_vectors`` / T.)
    """
    nodes = ep_size // min(gpus_per_node, ep_size)
    return float((ep_size - nodes) * _hit_probability(num_experts, top_k, ep_size))


def _hit_probability(num_experts: int, top_k: int, holders: int) -> Fraction:
    """Probability that a token's k uniform experts include >= 1 of one holder's E / holders experts."""
    return 1 - Fraction(comb(num_experts - num_experts // holders, top_k), comb(num_experts, top_k))


def _with_times(volume: AllToAllVolume, model: Model, topology: Topology) -> AllToAllVolume:
    """``volume`` with per-layer all-to-all and expert-compute times on ``topology``."""

    def one_way(nic_bytes: float, bytes_per_vector: float) -> float:
        nvlink_s = volume.intra_node_vectors * bytes_per_vector / topology.nvlink_bandwidth
        return max(nic_bytes / topology.nic_bandwidth, nvlink_s) + topology.latency_s

    comm = one_way(volume.nic_dispatch_bytes, volume.dispatch_bytes_per_vector) + one_way(
        volume.nic_combine_bytes, volume.combine_bytes_per_vector
    )
    pairs = volume.tokens_per_gpu * model.top_k
    compute = pairs * model.flops_per_pair / topology.gpu_flops
    return replace(
        volume,
        topology=topology.name,
        all_to_all_time_s=comm,
        expert_compute_time_s=compute,
        comm_compute_ratio=comm / compute,
    )


def _check_arguments(
    model: Model, ep_size: int, tokens_per_gpu: int, gpus_per_node: int, max_nodes: int | None
) -> None:
    """Raise InputError unless the EP group splits into whole nodes and whole expert shares."""
    for name, value in (
        ("ep_size", ep_size),
        ("tokens_per_gpu", tokens_per_gpu),
        ("gpus_per_node", gpus_per_node),
        ("max_nodes", 1 if max_nodes is None else max_nodes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(None, name, f"expected a positive integer, got {value!r}")
    if ep_size > gpus_per_node and ep_size % gpus_per_node:
        raise InputError(
            None,
            "ep_size",
            f"expected at most or a multiple of gpus_per_node ({gpus_per_node}), got {ep_size}",
        )
    if model.num_experts % ep_size:
        raise InputError(
            None,
            "ep_size",
            f"expected a divisor of {model.name}'s num_experts ({model.num_experts}),"
            f" got {ep_size}",
        )
