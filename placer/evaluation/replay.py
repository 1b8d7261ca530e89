"""Trace replay: traffic per link tier, NIC load, GPU load and all-to-all time of a placement.

Conventions (shared by every figure placer prints):

- Token source: token ``t`` (0-based row of the replayed trace) starts on GPU
  ``src_rank[t]`` when the trace has it, else on GPU ``t mod P``; with
  ``source="sequence"`` sequence ``i`` sits whole on GPU ``i mod P``. When the
  placement excludes GPUs, ``P`` counts and indexes the GPUs in service only.
- ``dispatch="normal"`` (DeepEP normal mode): one RDMA copy per remote node a
  token reaches, landing on the GPU with the source's local index, then
  forwarded over NVLink to the target GPUs there; on the source node one
  NVLink copy per target GPU other than the source.
- ``dispatch="low-latency"`` (plain all-to-all, DeepEP low-latency mode): one
  copy per (token, expert) pair whose expert is on another GPU, straight to it.
- Combine traffic mirrors dispatch with the combine element size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from placer.checks import check_choice, check_count
from placer.dispatch import LP_BATCH_TOKENS, RULES, Dispatcher
from placer.errors import InputError
from placer.placement import Placement
from placer.progress import ProgressFn, track
from placer.request import BATCHED_RULES, MAX_LP_BATCH
from placer.topology import MAX_NODES, Model, Topology
from placer.trace import Trace, TraceChunk, TraceSource, chunk_count

SOURCES = ("token", "sequence")
DISPATCH_MODES = ("normal", "low-latency")

# Per-layer integer counters accumulated over trace chunks, with their trailing axis.
_COUNTERS = {
    "tokens": None,
    "internode_tokens_dedup": None,
    "internode_tokens_naive": None,
    "intranode_tokens": None,
    "forward_tokens": None,
    "over_max_nodes": None,
    "node_recv_dedup": "nodes",
    "node_sent_dedup": "nodes",
    "node_recv_naive": "nodes",
    "node_sent_naive": "nodes",
    "nvlink_sent": "gpus",
    "nvlink_recv": "gpus",
    "gpu_load": "gpus",
    "nodes_per_token": "histogram",
}


@dataclass
class ReplayReport:
    """Replay results.

    per_layer: name -> [layers] or [layers, nodes|gpus|nodes+1] arrays.
    totals: name -> number, summed or averaged over layers as documented in README.
    config: how the replay was run (source, dispatch, topology, model).
    """

    per_layer: dict[str, np.ndarray]
    totals: dict[str, float | None]
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready: totals at top level, plus per-layer lists and the config."""
        return {
            **self.totals,
            "config": self.config,
            "per_layer": {name: value.tolist() for name, value in self.per_layer.items()},
        }


def source_gpus(chunk: TraceChunk, live: np.ndarray, source: str, origin: str | Path | None = None) -> np.ndarray:
    """GPU each token of the chunk starts on: [tokens].

    live: [L] ids of the GPUs in service (all GPUs unless some are excluded);
    token t starts on live[t mod L], sequence i on live[i mod L]. origin: the trace's file,
    named by errors.
    """
    trace = chunk.trace
    if source == "sequence":
        if trace.seq_lens is None:
            raise InputError(None, "seq_lens", "source 'sequence' needs a trace with seq_lens")
        sequence = chunk.sequence_offset + np.repeat(np.arange(len(trace.seq_lens)), trace.seq_lens)
        return live[sequence % len(live)]
    if trace.src_rank is not None:
        outside = np.setdiff1d(np.unique(trace.src_rank), live)
        if outside.size:
            gaps = np.setdiff1d(np.arange(live.min(), live.max() + 1), live)
            expected = f"{live.min()}..{live.max()}" + (f" except {gaps.tolist()}" if gaps.size else "")
            raise InputError(origin, "src_rank",
                             f"GPU rank {int(outside[0])} is not a GPU in service (expected {expected})")
        return trace.src_rank
    return live[(chunk.token_offset + np.arange(trace.num_tokens)) % len(live)]


def _first_distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row and mark the first occurrence of every non-negative value.

    values: [tokens, k] with -1 for nothing. Returns (sorted [tokens, k], first [tokens, k] bool).
    """
    ordered = np.sort(values, axis=1)
    first = np.ones_like(ordered, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return ordered, first & (ordered >= 0)


def layer_counts(
    gpu: np.ndarray,
    src_gpu: np.ndarray,
    gpus_per_node: int,
    num_gpus: int,
    dispatch: str,
    max_nodes: int,
) -> dict[str, np.ndarray | int]:
    """Traffic and load counters of one layer of one chunk.

    gpu: [tokens, k] GPU serving each (token, expert) pair, -1 for padding.
    src_gpu: [tokens]. Returns the counters named in ``_COUNTERS`` (in token copies / pairs).
    """
    nodes = num_gpus // gpus_per_node
    valid = gpu >= 0
    node = np.where(valid, gpu // gpus_per_node, -1)
    src_node = src_gpu // gpus_per_node

    node_sorted, node_first = _first_distinct(node)
    remote_node = node_first & (node_sorted != src_node[:, None])
    touched = node_first.sum(axis=1)
    remote_per_token = remote_node.sum(axis=1)

    remote_pair = valid & (node != src_node[:, None])
    remote_pairs_per_token = remote_pair.sum(axis=1)

    gpu_sorted, gpu_first = _first_distinct(gpu)
    gpu_node = gpu_sorted // gpus_per_node
    local = gpu_first & (gpu_node == src_node[:, None]) & (gpu_sorted != src_gpu[:, None])
    forward = gpu_first & (gpu_node != src_node[:, None])

    if dispatch == "normal":
        landing = gpu_node * gpus_per_node + (src_gpu % gpus_per_node)[:, None]
        relayed = forward & (gpu_sorted != landing)
        senders = np.concatenate([np.broadcast_to(src_gpu[:, None], local.shape)[local], landing[relayed]])
        receivers = np.concatenate([gpu_sorted[local], gpu_sorted[relayed]])
    else:
        same_node_pair = valid & (node == src_node[:, None]) & (gpu != src_gpu[:, None])
        senders = np.broadcast_to(src_gpu[:, None], gpu.shape)[same_node_pair]
        receivers = gpu[same_node_pair]

    return {
        "tokens": gpu.shape[0],
        "internode_tokens_dedup": int(remote_per_token.sum()),
        "internode_tokens_naive": int(remote_pairs_per_token.sum()),
        "intranode_tokens": int(local.sum()),
        "forward_tokens": int(forward.sum()),
        "over_max_nodes": int((touched > max_nodes).sum()) if max_nodes else 0,
        "node_recv_dedup": np.bincount(node_sorted[remote_node], minlength=nodes),
        "node_sent_dedup": np.bincount(src_node, weights=remote_per_token, minlength=nodes).astype(np.int64),
        "node_recv_naive": np.bincount(node[remote_pair], minlength=nodes),
        "node_sent_naive": np.bincount(src_node, weights=remote_pairs_per_token, minlength=nodes).astype(np.int64),
        "nvlink_sent": np.bincount(senders, minlength=num_gpus),
        "nvlink_recv": np.bincount(receivers, minlength=num_gpus),
        "gpu_load": np.bincount(gpu[valid], minlength=num_gpus),
        "nodes_per_token": np.bincount(touched, minlength=nodes + 1),
    }


def _check_types(trace: object, placement: object, topology: object, model: object) -> None:
    """The arguments of :func:`evaluate` are what it replays (InputError naming the argument)."""
    for name, value, kind in (("trace", trace, (Trace, TraceSource)), ("placement", placement, Placement),
                              ("topology", topology, Topology), ("model", model, (Model, type(None)))):
        if not isinstance(value, kind):
            raise InputError(None, name, f"expected a {name.capitalize()}, got {type(value).__name__}")


def _check_compatible(trace_experts: int, trace_layers: int, placement: Placement, topology: Topology) -> None:
    if placement.num_gpus != topology.num_gpus or placement.gpus_per_node != topology.gpus_per_node:
        raise InputError(
            None,
            "placement",
            f"placement is for {placement.num_gpus} GPUs ({placement.gpus_per_node} per node), "
            f"topology has {topology.nodes} x {topology.gpus_per_node}",
        )
    if placement.num_layers != trace_layers:
        raise InputError(None, "placement", f"placement has {placement.num_layers} layers, trace has {trace_layers}")
    if trace_experts > placement.num_experts:
        raise InputError(
            None, "placement", f"trace uses {trace_experts} experts, placement places {placement.num_experts}"
        )
    unplaced = np.argwhere(placement.expert_copies()[:, :trace_experts] == 0)
    if unplaced.size:
        layer, expert = unplaced[0]
        raise InputError(None, "placement", f"expert {expert} of layer {layer} is in no slot")


def count_traffic(
    trace: Trace | TraceSource,
    placement: Placement,
    topology: Topology,
    *,
    source: str = "token",
    dispatch: str = "normal",
    max_nodes: int | None = None,
    rule: str = "nearest",
    progress: ProgressFn | None = None,
    token_offset: int = 0,
    lp_batch: int = LP_BATCH_TOKENS,
) -> dict[str, np.ndarray]:
    """Per-layer counters of a replay, accumulated chunk by chunk: name -> [layers, ...].

    token_offset: position of an in-memory trace's first token in a longer stream (its token
    t then starts on GPU (token_offset + t) mod P; :mod:`placer.evaluation.timeline`)."""
    chunks = trace.chunks() if isinstance(trace, TraceSource) else [TraceChunk(trace, token_offset, 0)]
    steps = trace.num_layers * chunk_count(trace)
    dispatcher = Dispatcher(placement, rule, lp_batch)
    totals: dict[str, np.ndarray] = {}
    for index, chunk in enumerate(chunks):
        _check_compatible(chunk.trace.num_experts, chunk.trace.num_layers, placement, topology)
        src = source_gpus(chunk, placement.live_gpus(), source, trace.path if isinstance(trace, TraceSource) else None)
        layers = range(chunk.trace.num_layers)
        for layer in track(layers, "replaying trace", steps, progress, start=index * len(layers)):
            ids = chunk.trace.topk_ids[:, layer, :]
            gpu = dispatcher.route(layer, ids, src)
            counts = layer_counts(gpu, src, topology.gpus_per_node, topology.num_gpus, dispatch, max_nodes or 0)
            for name, value in counts.items():
                acc = totals.setdefault(name, np.zeros((placement.num_layers, *np.shape(value)), dtype=np.int64))
                acc[layer] += value
    return totals


def bottlenecks(counts: dict[str, np.ndarray], dispatch: str) -> dict[str, np.ndarray]:
    """Per-layer bottleneck copies of a replay: [layers] each.

    nic_copies: the busiest node's NIC copies (max of sent and received; deduplicated per
    node in normal mode, per pair in low-latency mode); nvlink_copies: the busiest GPU's
    NVLink copies (max of sent and received); gpu_pairs: the busiest GPU's (token, expert) pairs.
    """
    tier = "dedup" if dispatch == "normal" else "naive"
    return {
        "nic_copies": np.maximum(counts[f"node_sent_{tier}"], counts[f"node_recv_{tier}"]).max(axis=1),
        "nvlink_copies": np.maximum(counts["nvlink_sent"], counts["nvlink_recv"]).max(axis=1),
        "gpu_pairs": counts["gpu_load"].max(axis=1),
    }


def layer_times(
    nic_copies: np.ndarray | float,
    nvlink_copies: np.ndarray | float,
    gpu_pairs: np.ndarray | float,
    topology: Topology,
    model: Model,
) -> dict[str, np.ndarray | float]:
    """Forward time of one MoE layer from its bottleneck copies (any shape, e.g. [layers]).

    A phase (dispatch or combine) takes max(NIC copies x bytes per token / node NIC
    bandwidth, NVLink copies x bytes per token / NVLink bandwidth) + latency; expert
    compute is the busiest GPU's pairs x FLOPs per pair / GPU throughput. Seconds.
    """

    def phase(bytes_per_token: float) -> np.ndarray | float:
        nic = np.multiply(nic_copies, bytes_per_token) / topology.node_nic_bandwidth
        nvlink = np.multiply(nvlink_copies, bytes_per_token) / topology.nvlink_bandwidth
        return np.maximum(nic, nvlink) + topology.latency_s

    return {
        "dispatch_s": phase(model.dispatch_bytes_per_token),
        "combine_s": phase(model.combine_bytes_per_token),
        "compute_s": np.multiply(gpu_pairs, model.flops_per_pair) / topology.gpu_flops,
    }


def estimate_times(
    counts: dict[str, np.ndarray], topology: Topology, model: Model, dispatch: str
) -> dict[str, np.ndarray]:
    """Per-layer time estimates in seconds: dispatch, combine, expert compute: [layers] each
    (:func:`layer_times` of the replay's :func:`bottlenecks`)."""
    return layer_times(**bottlenecks(counts, dispatch), topology=topology, model=model)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0)


def summarize(
    counts: dict[str, np.ndarray],
    topology: Topology,
    model: Model | None,
    dispatch: str,
    max_nodes: int | None,
    live: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, float | None]]:
    """Derived per-layer figures and totals from the raw counters (live: [L] GPUs in service)."""
    tier = "dedup" if dispatch == "normal" else "naive"
    load = counts["gpu_load"]
    imbalance = _ratio(load.max(axis=1).astype(float), load[:, live].mean(axis=1))
    recv = counts[f"node_recv_{tier}"].sum(axis=0)
    sent = counts[f"node_sent_{tier}"].sum(axis=0)
    histogram = counts["nodes_per_token"].sum(axis=0)
    pairs = int(counts["tokens"].sum())
    per_layer = {**counts, "gpu_load_imbalance": imbalance}
    totals: dict[str, float | None] = {
        "tokens": int(counts["tokens"][0]),
        "layers": int(load.shape[0]),
        "dispatch": dispatch,
        "internode_tokens_dedup": int(counts["internode_tokens_dedup"].sum()),
        "internode_tokens_naive": int(counts["internode_tokens_naive"].sum()),
        "intranode_tokens": int(counts["intranode_tokens"].sum()),
        "forward_tokens": int(counts["forward_tokens"].sum()),
        "nic_peak_tokens": int(counts["node_recv_dedup"].max(axis=1).sum()),
        "nic_recv_tokens_max_over_mean": float(recv.max() / recv.mean()) if recv.mean() else 1.0,
        "nic_sent_tokens_max_over_mean": float(sent.max() / sent.mean()) if sent.mean() else 1.0,
        "gpu_peak_load": int(load.max(axis=1).sum()),
        "gpu_load_imbalance": float(imbalance.mean()),
        "nodes_per_token_mean": float((histogram * np.arange(len(histogram))).sum() / pairs),
        "nodes_per_token_histogram": histogram.tolist(),
        "max_nodes": max_nodes,
        "share_over_max_nodes": float(counts["over_max_nodes"].sum() / pairs) if max_nodes else None,
        "nic_recv_tokens_per_node": recv.tolist(),
        "nic_sent_tokens_per_node": sent.tolist(),
    }
    if model is None:
        return per_layer, totals
    internode = totals[f"internode_tokens_{tier}"]
    nvlink = int(counts["nvlink_sent"].sum())
    bytes_per_token = model.dispatch_bytes_per_token + model.combine_bytes_per_token
    times = estimate_times(counts, topology, model, dispatch)
    per_layer.update(times)
    a2a = float(times["dispatch_s"].sum() + times["combine_s"].sum())
    compute = float(times["compute_s"].sum())
    totals.update(
        {
            "internode_bytes": internode * bytes_per_token,
            "nvlink_bytes": nvlink * bytes_per_token,
            "nic_bytes_sent_per_node": (sent * bytes_per_token).tolist(),
            "nic_bytes_recv_per_node": (recv * bytes_per_token).tolist(),
            "dispatch_s": float(times["dispatch_s"].sum()),
            "combine_s": float(times["combine_s"].sum()),
            "all_to_all_s": a2a,
            "compute_s": compute,
            "a2a_to_compute_ratio": a2a / compute if compute else None,
        }
    )
    return per_layer, totals


def evaluate(
    trace: Trace | TraceSource,
    placement: Placement,
    topology: Topology,
    model: Model | None = None,
    *,
    source: str = "token",
    dispatch: str = "normal",
    max_nodes: int | None = None,
    rule: str = "nearest",
    progress: ProgressFn | None = None,
    token_offset: int = 0,
    lp_batch: int = LP_BATCH_TOKENS,
) -> ReplayReport:
    """Replay ``trace`` against ``placement`` on ``topology``.

    Token counts need no model; bytes and times are reported when ``model`` is given.
    rule: which replica serves a pair when experts are replicated (see :mod:`placer.dispatch`).
    lp_batch: consecutive tokens the ``lp`` rule balances together (per layer, from the first
    token replayed).
    progress: reports (chunk, layer) steps replayed (:mod:`placer.progress`).
    token_offset: position of an in-memory trace's first token in a longer stream (token source
    ``(token_offset + t) mod P``).
    """
    check_choice(source, "source", SOURCES)
    check_choice(dispatch, "dispatch", DISPATCH_MODES)
    check_choice(rule, "rule", RULES)
    check_count(lp_batch, "lp_batch", 1, MAX_LP_BATCH)
    _check_types(trace, placement, topology, model)
    if max_nodes is not None:
        check_count(max_nodes, "max_nodes", 1, MAX_NODES)
    counts = count_traffic(
        trace, placement, topology, source=source, dispatch=dispatch, max_nodes=max_nodes, rule=rule,
        progress=progress, token_offset=token_offset, lp_batch=lp_batch,
    )
    per_layer, totals = summarize(counts, topology, model, dispatch, max_nodes, placement.live_gpus())
    config = {
        "source": source,
        "dispatch": dispatch,
        "replica_rule": rule,
        **({"lp_batch_tokens": lp_batch} if rule in BATCHED_RULES else {}),
        "topology": topology.name,
        "nodes": topology.nodes,
        "gpus_per_node": topology.gpus_per_node,
        "model": None if model is None else model.name,
        "placement": placement.metadata.get("solver", {}).get("name"),
    }
    return ReplayReport(per_layer, totals, config)
