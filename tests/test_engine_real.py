"""placer's engine paths against installed engines (their own modules, not the stand-ins).

Skipped when an engine is not importable (CI installs none). Checked by hand against the
released vLLM 0.34.0 (files of 2026-11-16) and 0.17.0, and SGLang 0.5.23 (2026-10-30) wheels, each
installed with ``pip install --no-deps --target DIR`` and its pure-Python imports beside
it on ``PYTHONPATH``, with CPU torch, and against Megatron-LM's
``megatron/core/transformer/moe/router_trace.py`` at d98e8a64 (that one file on
``PYTHONPATH``; it imports torch only).
"""

from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest
from conftest import random_trace

from placer import PlacementProblem, SolverSettings, load_topology, to_sglang
from placer.dispatch import sglang_static_map
from placer.engine_policies import (
    PlacerEplbPolicy,
    RoutingRecorder,
    install_vllm,
    install_vllm_routing_hook,
    moe_layers,
)
from placer.graph import summarize
from placer.solvers import solve
from placer.trace import load_trace

torch = pytest.importorskip("torch")


def engine(module: str) -> bool:
    """Whether ``module`` of an engine imports here."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_vllm = pytest.mark.skipif(not engine("vllm.distributed.eplb.policy"),
                                reason="vLLM is not installed: the real-engine checks need it")
needs_sglang = pytest.mark.skipif(not engine("sglang.srt.eplb.expert_location"),
                                  reason="SGLang is not installed: the real-engine checks need it")
needs_megatron = pytest.mark.skipif(not engine("megatron.core.transformer.moe.router_trace"),
                                    reason="Megatron-LM's router_trace is not importable: the real-engine checks "
                                    "need it")



@needs_vllm
def test_policy_registers_validates_and_rebalances_as_vllm_calls_it():
    install_vllm("placer")
    from vllm.config.parallel import EPLBConfig, ParallelConfig
    from vllm.distributed.eplb.policy import EPLB_POLICIES

    assert issubclass(EPLB_POLICIES[EPLBConfig(policy="placer", use_async=False).policy], PlacerEplbPolicy)
    assert ParallelConfig(eplb_config={"policy": "placer", "use_async": False}).eplb_config.policy == "placer"
    with pytest.raises(ValueError):  # vLLM's own validator: async EPLB only with its default policy
        EPLBConfig(policy="placer", use_async=True)
    layers, experts, replicas = 3, 16, 20  # 3 layers: a tensor in place of three maps would unpack silently
    weight = torch.randint(1, 100, (layers, experts), dtype=torch.int64)
    old = torch.tensor([[i % experts for i in range(replicas)]] * layers)
    theirs = EPLB_POLICIES["default"].rebalance_experts(weight, replicas, 1, 2, 4, old)  # positional, as rearrange
    ours = EPLB_POLICIES["placer"].rebalance_experts(weight, replicas, 1, 2, 4, old)
    assert type(ours) is type(theirs)  # what vLLM's caller unpacks: phy2log, or (phy2log, log2phy, logcnt)
    new = ours[0] if isinstance(ours, tuple) else ours
    assert tuple(new.shape) == (layers, replicas) and new.dtype == torch.int64
    assert all(set(row.tolist()) == set(range(experts)) for row in new)
    if isinstance(ours, tuple):
        assert [m.shape[:2] for m in ours[1:]] == [m.shape[:2] for m in theirs[1:]]
        assert [m.dtype for m in ours] == [m.dtype for m in theirs]


@needs_vllm
def test_routing_hook_records_the_step_and_keeps_vllms_read(monkeypatch):
    from vllm.model_executor.layers.fused_moe import routed_experts_capturer as capturer
    chunks = []
    recorder = RoutingRecorder(lambda rows: chunks.append(np.asarray(rows)), num_layers=5, top_k=2,
                               layers=moe_layers(5, 1))
    install_vllm_routing_hook(recorder)
    step_read = next(name for name in ("snapshot_routing_data", "save_captured_experts")
                     if hasattr(capturer.RoutedExpertsCapturer, name))
    instance = object.__new__(capturer.RoutedExpertsCapturer)  # no GPU: set the buffer its __init__ would
    if step_read == "save_captured_experts":  # vLLM 0.16-0.20: TP rank 0 with no shared memory to write
        monkeypatch.setattr(capturer, "get_tensor_model_parallel_rank", lambda: 0)
        instance._shm, instance._lock_file, instance._host_buffer_view = None, "unused", None
    buffer = torch.randint(0, 16, (8, 5, 2), dtype=torch.int32)
    setattr(instance, "device_buffer" if step_read == "snapshot_routing_data" else "_device_buffer", buffer)
    instance.output_dtype = torch.uint8
    getattr(instance, step_read)(6 if step_read == "snapshot_routing_data" else np.arange(6))
    recorder.flush()
    assert np.array_equal(np.concatenate(chunks), buffer[:6, 1:].numpy())


@needs_sglang
@pytest.mark.parametrize("excluded", [(), (5,)])
def test_sglang_static_map_is_sglangs_own(monkeypatch, excluded):
    """placer's replay of ``--ep-dispatch-algorithm static`` against SGLang's own functions, rank
    by rank, as SGLang runs them with ``--moe-a2a-backend deepep --nnodes 2`` (the flags place
    prints)."""
    from sglang.srt.eplb import expert_location

    topology = load_topology("h100-dgx").resized(2, 4)
    trace = random_trace(400, 3, 16, 4, seed=2)
    placement, _ = solve(summarize(trace), PlacementProblem(topology, slots_per_gpu=3, exclude_gpus=list(excluded)),
                         SolverSettings("spectral", 1.0))
    p2l = torch.tensor(to_sglang(placement)["physical_to_logical_map"])
    live = placement.live_gpus()
    ep, local = len(live), placement.slots_per_gpu
    settings = types.SimpleNamespace(moe=types.SimpleNamespace(ep_join_mode=None, moe_a2a_backend="deepep"),
                                     ep_size=ep, nnodes=topology.nodes)
    monkeypatch.setattr(expert_location, "get_exec", lambda: settings)
    monkeypatch.setattr(expert_location, "get_parallel", lambda: settings)
    ours = sglang_static_map(placement)
    to_slot = np.array([live[p // local] * local + p % local for p in range(p2l.shape[1])])
    for rank, gpu in enumerate(live):
        candidates = expert_location._compute_logical_to_all_physical_map(p2l, 16, ep, rank)
        theirs = expert_location.compute_logical_to_rank_dispatch_physical_map(candidates, ep, p2l.shape[1], rank)
        assert (ours[:, gpu] == to_slot[theirs.numpy()]).all(), f"EP rank {rank} (GPU {gpu})"


@needs_sglang
def test_sglang_algorithm_plugin_as_init_by_eplb_calls_it():
    """``--eplb-algorithm placer``: SGLang's own module calls, as ``init_by_eplb`` makes them."""
    from sglang.srt.eplb import eplb_algorithms

    from placer.engine_policies import install_sglang

    install_sglang("placer")
    layers, logical, physical, ranks = 3, 16, 24, 8
    counts = torch.randint(0, 50, (4, layers, logical))  # [buffer steps, layers, logical experts]
    for raw in ("placer", "deepseek"):  # placer, and SGLang's own algorithm still reachable
        algorithm = eplb_algorithms.compute_algorithm(raw_algorithm=raw, num_groups=None, num_nodes=2)
        phy2log, log2all, count = eplb_algorithms.rebalance_experts(
            tokens_per_expert=counts, num_physical_experts=physical, num_local_physical_experts=physical // ranks,
            num_groups=None, num_nodes=2, algorithm=algorithm)
        assert tuple(phy2log.shape) == (layers, physical), raw
        assert all(set(row.tolist()) == set(range(logical)) for row in phy2log), raw
        assert log2all.shape[:2] == (layers, logical) and log2all.shape[2] <= physical, raw
        assert (count == (log2all >= 0).sum(dim=-1)).all(), raw


@needs_sglang
def test_sglang_dynamic_rule_is_sglangs_own_without_an_a2a_backend():
    """``sglang-dynamic`` against ``_topk_ids_logical_to_physical_dynamic`` (rank-invariant)."""
    from sglang.srt.eplb import expert_location, expert_location_dispatch

    from placer.dispatch import Dispatcher

    topology = load_topology("h100-dgx").resized(2, 4)
    trace = random_trace(300, 2, 16, 4, seed=3)
    placement, _ = solve(summarize(trace), PlacementProblem(topology, slots_per_gpu=3),
                         SolverSettings("spectral", 1.0))
    p2l = torch.tensor(to_sglang(placement)["physical_to_logical_map"])
    settings = types.SimpleNamespace(moe=types.SimpleNamespace(ep_join_mode=None, moe_a2a_backend="none"))
    ids = torch.from_numpy(trace.topk_ids.astype(np.int64))
    dispatcher = Dispatcher(placement, "sglang-dynamic", batch_tokens=len(ids))
    for layer in range(placement.num_layers):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(expert_location, "get_exec", lambda: settings)
            candidates = expert_location._compute_logical_to_all_physical_map(p2l[layer:layer + 1], 16, 8, 0)
        info = types.SimpleNamespace(rank_invariant=True, partial_logical_to_all_physical_map=candidates[0],
                                     partial_logical_to_all_physical_map_num_valid=(candidates[0] >= 0).sum(-1))
        theirs = expert_location_dispatch._topk_ids_logical_to_physical_dynamic(ids[:, layer], info)
        ours = dispatcher.route(layer, trace.topk_ids[:, layer], np.zeros(len(ids), dtype=np.int64))
        assert (ours == theirs.numpy() // placement.slots_per_gpu).all(), f"layer {layer}"


class _Router(torch.nn.Module):
    """Stands in for a TopKRouter: forward returns (probs, top-k ids) as the hook reads them."""

    def __init__(self, ids: torch.Tensor) -> None:
        super().__init__()
        self.ids = ids

    def forward(self, hidden):
        return torch.ones(self.ids.shape), self.ids


@needs_megatron
def test_megatron_tracer_files_import_by_both_numberings(tmp_path, cli, monkeypatch):
    """Files written by Megatron's own RouterTracer: its hooks (module index) and the inference
    routing replay (``record_indices`` with ``layer_number``, MTP router last), imported with ``--model``."""
    from megatron.core.transformer.moe import router_trace

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # CPU torch has no CUDA graphs

    layers, dense, top_k = 27, 1, 6  # DeepSeek-V2-Lite
    ids = torch.from_numpy(random_trace(40, layers - dense, 64, top_k, seed=4).topk_ids.astype(np.int64))
    hooked = router_trace.RouterTracer(str(tmp_path / "hooks"), max_steps=5, rank=0)
    for layer in range(dense, layers):
        router = _Router(ids[:, layer - dense])
        router.register_forward_hook(hooked.make_hook(f"decoder.layers.{layer}.mlp.router"))
        router(torch.zeros(40, 8))
    hooked.flush()
    replayed = router_trace.RouterTracer(str(tmp_path / "replay"), max_steps=5, rank=0)
    # every RouterReplay instance in build order: decoder layers by layer_number, then the MTP layer's (1)
    mtp = torch.from_numpy(random_trace(40, 1, 64, top_k, seed=5).topk_ids.astype(np.int64))
    replayed.record_indices(torch.cat([ids, mtp], dim=1), layer_ids=[layer + 1 for layer in range(dense, layers)] + [1])
    replayed.flush()
    for directory, extra in (("hooks", ()), ("replay", ("--layer-numbers",))):
        out = tmp_path / f"{directory}.npz"
        done = cli("import", "megatron", tmp_path / directory, "--out", out, "--model", "deepseek-v2-lite", *extra)
        assert done.code == 0, done.err
        loaded = load_trace(out)
        assert loaded.layer_ids.tolist() == list(range(dense, layers)) and (loaded.topk_ids == ids.numpy()).all()
    refused = cli("import", "megatron", tmp_path / "replay", "--out", tmp_path / "x.npz", "--model", "deepseek-v2-lite")
    assert refused.code == 2 and "--layer-numbers" in refused.err


@needs_sglang
def test_sglang_routing_hook_wraps_sglangs_own_recorder(monkeypatch):
    """``install_sglang_routing_hook`` on SGLang's ``ExpertDistributionRecorder``, created as its
    model runner creates it (``init_new(metadata, rank=...)`` in 0.5.23)."""
    expert_distribution = pytest.importorskip(
        "sglang.srt.eplb.expert_distribution",
        reason="SGLang's expert_distribution does not import here (it pulls in torchvision and the model configs)")

    from placer.engine_policies import install_sglang_routing_hook

    settings = types.SimpleNamespace(moe=types.SimpleNamespace(expert_distribution_recorder_mode=None),
                                     chunked_prefill_size=64)
    monkeypatch.setattr(expert_distribution, "get_exec", lambda: settings)
    monkeypatch.setattr(expert_distribution, "get_schedule", lambda: settings)
    chunks = []
    recorder = RoutingRecorder(lambda rows: chunks.append(np.asarray(rows)), num_layers=4, top_k=2,
                               layers=moe_layers(4, 1))
    install_sglang_routing_hook(recorder)
    p2l = torch.tensor([[(p * 5) % 8 for p in range(8)]] * 4)
    tap = expert_distribution.ExpertDistributionRecorder.init_new(
        types.SimpleNamespace(physical_to_logical_map=p2l), rank=0)
    ids = torch.randint(0, 8, (5, 4, 2), dtype=torch.int32)
    with tap.with_forward_pass(0, types.SimpleNamespace(input_ids=torch.zeros(5))):
        for layer in range(1, 4):
            with tap.with_current_layer(layer):
                tap.on_select_experts(topk_ids=ids[:, layer])
    recorder.flush()
    assert np.array_equal(np.concatenate(chunks), p2l[0].numpy()[ids[:, 1:].numpy()])
