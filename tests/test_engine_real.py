"""The vLLM paths against an installed vLLM (its own modules, not the stand-ins).

Skipped when vLLM is not importable (CI installs no engine). Checked by hand against the
released vLLM 0.34.0 wheel (files of 2026-11-16) with ``pip install --no-deps --target DIR``
and its pure-Python dependencies on ``PYTHONPATH``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm.config.parallel", reason="vLLM is not installed: the real-engine checks need it")
pytest.importorskip("vllm.distributed.eplb.policy", reason="vLLM's EPLB policy package is not importable")

from placer.engine_policies import (  # noqa: E402
    PlacerEplbPolicy,
    RoutingRecorder,
    install_vllm,
    install_vllm_routing_hook,
    moe_layers,
)


def test_policy_registers_validates_and_rebalances_as_vllm_calls_it():
    install_vllm("placer")
    from vllm.config.parallel import EPLBConfig, ParallelConfig
    from vllm.distributed.eplb.policy import EPLB_POLICIES

    assert EPLB_POLICIES[EPLBConfig(policy="placer", use_async=False).policy] is PlacerEplbPolicy
    assert ParallelConfig(eplb_config={"policy": "placer", "use_async": False}).eplb_config.policy == "placer"
    with pytest.raises(ValueError):  # vLLM's own validator: async EPLB only with its default policy
        EPLBConfig(policy="placer", use_async=True)
    layers, experts, replicas = 3, 16, 20
    weight = torch.randint(1, 100, (layers, experts), dtype=torch.int64)
    old = torch.tensor([[i % experts for i in range(replicas)]] * layers)
    new = EPLB_POLICIES["placer"].rebalance_experts(weight, replicas, 1, 2, 4, old)  # positional, as rearrange
    assert tuple(new.shape) == (layers, replicas) and new.dtype == torch.int64
    assert all(set(row.tolist()) == set(range(experts)) for row in new)


def test_routing_hook_records_the_step_and_keeps_vllms_read():
    capturer = pytest.importorskip("vllm.model_executor.layers.fused_moe.routed_experts_capturer")
    chunks = []
    recorder = RoutingRecorder(lambda rows: chunks.append(np.asarray(rows)), num_layers=5, top_k=2,
                               layers=moe_layers(5, 1))
    install_vllm_routing_hook(recorder)
    step_read = next(name for name in ("snapshot_routing_data", "save_captured_experts")
                     if hasattr(capturer.RoutedExpertsCapturer, name))
    instance = object.__new__(capturer.RoutedExpertsCapturer)  # no GPU: set the buffer its __init__ would
    buffer = torch.randint(0, 16, (8, 5, 2), dtype=torch.int32)
    setattr(instance, "device_buffer" if step_read == "snapshot_routing_data" else "_device_buffer", buffer)
    instance.output_dtype = torch.uint8
    getattr(instance, step_read)(6 if step_read == "snapshot_routing_data" else np.arange(6))
    recorder.flush()
    assert np.array_equal(np.concatenate(chunks), buffer[:6, 1:].numpy())
