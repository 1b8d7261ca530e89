"""Routing hooks: the device-side recorder and the engines' capture points (stand-in modules)."""

import sys
import types

import numpy as np
import pytest
import torch
from engine_standins import sglang_modules, vllm_modules

from placer.engine_policies import (
    EngineInputError,
    RoutingRecorder,
    install_sglang_routing_hook,
    install_vllm_routing_hook,
    moe_layers,
    routed_experts_rows,
)

HIDDEN, DENSE, TOP_K, EXPERTS = 6, 2, 4, 16


def steps(seed: int, count: int, tokens: int = 5, layers: int = HIDDEN) -> list[torch.Tensor]:
    """Top-k ids [tokens, layers, k] per step (distinct experts per token)."""
    rng = np.random.default_rng(seed)
    return [
        torch.from_numpy(np.argsort(rng.random((tokens, layers, EXPERTS)), axis=2)[:, :, :TOP_K].astype(np.int32))
        for _ in range(count)
    ]


def collector():
    chunks: list[np.ndarray] = []
    return chunks, lambda rows: chunks.append(rows.astype(np.int64).copy())


def test_recorder_delivers_every_token_in_order_across_buffer_switches():
    chunks, sink = collector()
    recorder = RoutingRecorder(sink, num_layers=HIDDEN, top_k=TOP_K, capacity=12, layers=moe_layers(HIDDEN, DENSE))
    recorded = steps(0, 9)  # 45 tokens through a 12-token buffer
    for ids in recorded:
        recorder.record(ids)
    assert 0 < recorder.tokens_delivered < 45  # delivered in batches, not per step
    recorder.flush()
    expected = torch.cat(recorded)[:, DENSE:].numpy()
    assert np.array_equal(np.concatenate(chunks), expected) and recorder.tokens_delivered == 45


def test_recorder_stride_and_padding_rows():
    chunks, sink = collector()
    recorder = RoutingRecorder(sink, num_layers=HIDDEN, top_k=TOP_K, capacity=64, stride=2)
    ids = steps(1, 1, tokens=10)[0]
    ids[4] = -1  # a padded token (SGLang masks padding to -1)
    recorder.record(ids)
    recorder.flush()
    expected = ids[::2].numpy()
    assert np.array_equal(chunks[0], expected[(expected >= 0).all(axis=(1, 2))]) and len(chunks[0]) == 4


def test_recorder_rejects_wrong_shapes():
    recorder = RoutingRecorder(lambda rows: None, num_layers=HIDDEN, top_k=TOP_K)
    with pytest.raises(EngineInputError, match="topk_ids"):
        recorder.record(torch.zeros((3, HIDDEN - 1, TOP_K), dtype=torch.int32))
    with pytest.raises(EngineInputError, match="layers"):
        RoutingRecorder(lambda rows: None, num_layers=HIDDEN, top_k=TOP_K, layers=[HIDDEN])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_routed_experts_rows_drop_dense_layers(dtype):
    ids = steps(2, 1)[0].numpy().astype(dtype)
    ids[:, :DENSE] = 0
    rows = routed_experts_rows(ids, DENSE)
    assert rows.dtype == np.int64 and np.array_equal(rows, ids[:, DENSE:].astype(np.int64))
    with pytest.raises(EngineInputError, match="first_dense_layers"):
        routed_experts_rows(ids, HIDDEN)


@pytest.mark.parametrize("api", ["snapshot_routing_data", "save_captured_experts"])
def test_vllm_hook_feeds_moe_layers_and_keeps_vllm_saving(monkeypatch, api):
    for name, module in vllm_modules(api).items():
        monkeypatch.setitem(sys.modules, name, module)
    chunks, sink = collector()
    recorder = RoutingRecorder(sink, num_layers=HIDDEN, top_k=TOP_K, capacity=64, layers=moe_layers(HIDDEN, DENSE))
    install_vllm_routing_hook(recorder)
    install_vllm_routing_hook(recorder)  # again: one wrapper, not two
    capturer_cls = sys.modules["vllm.model_executor.layers.fused_moe.routed_experts_capturer"].RoutedExpertsCapturer
    capturer = capturer_cls(max_num_batched_tokens=32, num_layers=HIDDEN, top_k=TOP_K)
    recorded = steps(3, 3, tokens=7)
    for ids in recorded:
        for layer in range(DENSE, HIDDEN):  # MoE layers capture; dense layers stay zero
            capturer.capture(layer, ids[:, layer])
        getattr(capturer, api)(7 if api == "snapshot_routing_data" else np.arange(7))
    recorder.flush()
    assert len(capturer.saved) == 3  # vLLM's own read still ran, once a step
    assert np.array_equal(np.concatenate(chunks), torch.cat(recorded)[:, DENSE:].numpy())


def test_vllm_hook_names_both_apis_when_neither_exists(monkeypatch):
    modules = vllm_modules()
    capturer = modules["vllm.model_executor.layers.fused_moe.routed_experts_capturer"]
    capturer.RoutedExpertsCapturer = type("RoutedExpertsCapturer", (), {})
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    recorder = RoutingRecorder(lambda rows: None, num_layers=HIDDEN, top_k=TOP_K)
    with pytest.raises(EngineInputError, match="or save_captured_experts. Supported: vLLM 0.16.0-0.20.0 and 0.31"):
        install_vllm_routing_hook(recorder)


def sglang_init_new(api: str):
    """``ExpertDistributionRecorder.init_new`` called as that SGLang calls it: (metadata, rank) -> recorder."""
    cls = sys.modules["sglang.srt.eplb.expert_distribution"].ExpertDistributionRecorder
    if api == "metadata first":  # 0.5.23: model_runner passes the metadata and rank=
        return lambda metadata, rank: cls.init_new(metadata, rank=rank)
    return lambda metadata, rank: cls.init_new(types.SimpleNamespace(chunked_prefill_size=512), metadata, rank)


@pytest.mark.parametrize("api", ["metadata first", "server_args first"])
def test_sglang_tap_maps_physical_to_logical_and_delegates(monkeypatch, api):
    for name, module in sglang_modules(api).items():
        monkeypatch.setitem(sys.modules, name, module)
    chunks, sink = collector()
    recorder = RoutingRecorder(sink, num_layers=HIDDEN, top_k=TOP_K, capacity=64, layers=moe_layers(HIDDEN, DENSE))
    install_sglang_routing_hook(recorder, max_tokens=16)
    physical = EXPERTS + 4
    p2l = torch.from_numpy(np.stack([np.random.default_rng(s).permutation(physical) % EXPERTS
                                     for s in range(HIDDEN)]))
    metadata = types.SimpleNamespace(physical_to_logical_map=p2l)
    tap = sglang_init_new(api)(metadata, 0)
    rng = np.random.default_rng(4)
    ids = torch.from_numpy(rng.integers(0, physical, (9, HIDDEN, TOP_K)).astype(np.int32))
    ids[8] = -1  # padded token
    with tap.with_forward_pass(0, types.SimpleNamespace(input_ids=torch.zeros(9))):
        for layer in range(DENSE, HIDDEN):
            with tap.with_current_layer(layer):
                tap.on_select_experts(topk_ids=ids[:, layer])
    recorder.flush()
    expected = np.stack([p2l[layer].numpy()[ids[:8, layer].numpy()] for layer in range(DENSE, HIDDEN)], axis=1)
    assert np.array_equal(chunks[0], expected)
    assert len(tap.seen) == HIDDEN - DENSE and tap.dump_record() == {"passes": 1}  # SGLang's recorder still ran
    assert sglang_init_new(api)(None, 0).__class__.__name__ == "_Recorder"  # EPLB off: SGLang's own


@pytest.mark.parametrize(("api", "rows"), [("metadata first", 8192), ("server_args first", 512)])
def test_sglang_tap_sizes_its_buffer_from_sglangs_chunked_prefill_size(monkeypatch, api, rows):
    for name, module in sglang_modules(api).items():
        monkeypatch.setitem(sys.modules, name, module)
    install_sglang_routing_hook(RoutingRecorder(lambda rows: None, num_layers=HIDDEN, top_k=TOP_K))
    p2l = torch.zeros((HIDDEN, EXPERTS), dtype=torch.int64)
    tap = sglang_init_new(api)(types.SimpleNamespace(physical_to_logical_map=p2l), 0)
    assert tap._staging.shape == (HIDDEN, rows, TOP_K)
