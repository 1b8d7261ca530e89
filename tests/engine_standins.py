"""Stand-in modules shaped like the engines' registries and call sites (no engine installed).

Each builder returns ``{module path: module}`` to put in ``sys.modules``; the
paths, names and call shapes mirror what placer.engine_policies' docstrings
cite (vLLM policy package, config, eplb_state.rearrange and the routed-experts
capturer; SGLang eplb_algorithms, expert_location.init_by_eplb and the
expert-distribution recorder). The stand-in bodies are written for the tests.
"""


import contextlib
import enum
import types
import typing
from typing import Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

from placer.eplb import rebalance_experts as eplb


def _package(path: str) -> dict[str, types.ModuleType]:
    """Empty parent packages of a dotted path."""
    parts = path.split(".")
    return {".".join(parts[: i + 1]): types.ModuleType(".".join(parts[: i + 1])) for i in range(len(parts) - 1)}


def vllm_modules(capturer_api: str = "snapshot_routing_data") -> dict[str, types.ModuleType]:
    """vllm.config.parallel, vllm.distributed.eplb.policy / eplb_state, the routed-experts capturer
    (``capturer_api``: its per-step read, released vLLM's or the older ``save_captured_experts``)."""
    modules = _package("vllm.distributed.eplb.policy")
    modules.update(_package("vllm.config.parallel"))
    modules.update(_package("vllm.model_executor.layers.fused_moe.routed_experts_capturer"))

    parallel = types.ModuleType("vllm.config.parallel")
    option = Literal["default"]

    @dataclass(config=ConfigDict(extra="forbid"))
    class EPLBConfig:
        window_size: int = Field(default=1000, gt=0)
        step_interval: int = Field(default=3000, gt=0)
        num_redundant_experts: int = Field(default=0, ge=0)
        use_async: bool = True
        policy: option = "default"

        @model_validator(mode="after")
        def _validate_eplb_config(self):
            if self.use_async and self.policy != "default":
                raise ValueError("Async EPLB is only supported with the default policy.")
            return self

    @dataclass(config=ConfigDict(extra="forbid"))
    class ParallelConfig:
        enable_eplb: bool = False
        eplb_config: EPLBConfig = Field(default_factory=EPLBConfig)

    parallel.EPLBPolicyOption = option
    parallel.EPLBConfig = EPLBConfig
    parallel.ParallelConfig = ParallelConfig
    modules["vllm.config.parallel"] = parallel

    policy = types.ModuleType("vllm.distributed.eplb.policy")

    class DefaultEplbPolicy:
        @classmethod
        def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                              old_global_expert_indices=None):
            groups = num_groups if num_groups % num_nodes == 0 else 1
            nodes = num_nodes if num_groups % num_nodes == 0 else 1
            return torch.from_numpy(eplb(weight.float().numpy(), num_replicas, groups, nodes, num_ranks)[0])

    policy.DefaultEplbPolicy = DefaultEplbPolicy
    policy.EPLB_POLICIES = {"default": DefaultEplbPolicy}
    assert set(policy.EPLB_POLICIES) == set(typing.get_args(parallel.EPLBPolicyOption))
    modules["vllm.distributed.eplb.policy"] = policy

    state = types.ModuleType("vllm.distributed.eplb.eplb_state")
    registry = policy.EPLB_POLICIES  # eplb_state: from vllm.distributed.eplb.policy import EPLB_POLICIES

    class EplbState:
        """policy lookup in add_model, the call of rearrange (positional, CPU tensors)."""

        def __init__(self, parallel_config, num_logical: int, num_physical: int, layers: int):
            self.policy = registry[parallel_config.eplb_config.policy]
            initial = [i % num_logical for i in range(num_physical)]
            self.physical_to_logical_map = torch.tensor(initial).unsqueeze(0).expand(layers, -1).contiguous()

        def rearrange(self, load_window: torch.Tensor, num_groups: int, num_nodes: int, num_gpus: int):
            num_replicas = self.physical_to_logical_map.shape[1]
            global_expert_load_window = load_window.sum(dim=0)
            new = self.policy.rebalance_experts(global_expert_load_window.cpu(), num_replicas, num_groups,
                                                num_nodes, num_gpus, self.physical_to_logical_map.cpu())
            self.physical_to_logical_map = new
            return new

    state.EplbState = EplbState
    modules["vllm.distributed.eplb.eplb_state"] = state

    capturer = types.ModuleType("vllm.model_executor.layers.fused_moe.routed_experts_capturer")

    class ReleasedCapturer:
        """Released vLLM (0.34.0): ``device_buffer``, read once a step by ``snapshot_routing_data``."""

        def __init__(self, max_num_batched_tokens: int, num_layers: int, top_k: int, num_experts: int = 256):
            self.device_buffer = torch.zeros((max_num_batched_tokens, num_layers, top_k), dtype=torch.int32)
            self.output_dtype = torch.uint8 if num_experts <= 256 else torch.int16
            self.saved: list[np.ndarray] = []

        def capture(self, layer_id: int, topk_ids: torch.Tensor) -> None:
            self.device_buffer[: topk_ids.shape[0], layer_id, :] = topk_ids

        def snapshot_routing_data(self, num_tokens: int) -> torch.Tensor:
            snapshot = self.device_buffer[:num_tokens].to(self.output_dtype)
            self.saved.append(snapshot.numpy())
            return snapshot

    class OlderCapturer:
        """vLLM at 00bd1493: ``_device_buffer``, saved once a step by ``save_captured_experts``."""

        def __init__(self, max_num_batched_tokens: int, num_layers: int, top_k: int):
            self._device_buffer = torch.zeros((max_num_batched_tokens, num_layers, top_k), dtype=torch.int32)
            self.saved: list[np.ndarray] = []

        def capture(self, layer_id: int, topk_ids: torch.Tensor) -> None:
            self._device_buffer[: topk_ids.shape[0], layer_id, :] = topk_ids

        def save_captured_experts(self, indices: np.ndarray) -> None:
            self.saved.append(self._device_buffer[: len(indices)].cpu().numpy())

    capturer.RoutedExpertsCapturer = {"snapshot_routing_data": ReleasedCapturer,
                                      "save_captured_experts": OlderCapturer}[capturer_api]
    modules["vllm.model_executor.layers.fused_moe.routed_experts_capturer"] = capturer
    return modules


def sglang_modules(recorder_api: str = "metadata first") -> dict[str, types.ModuleType]:
    """sglang.srt.eplb.eplb_algorithms, expert_location (init_by_eplb), expert_distribution
    (``recorder_api``: the recorder's ``init_new`` signature, 0.5.23's or the older one)."""
    modules = _package("sglang.srt.eplb.eplb_algorithms")
    algorithms = types.ModuleType("sglang.srt.eplb.eplb_algorithms")

    class EplbAlgorithm(enum.Enum):
        deepseek = enum.auto()
        deepseek_hierarchical = enum.auto()

    def rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
                          num_nodes, algorithm):
        if algorithm in [EplbAlgorithm.deepseek, EplbAlgorithm.deepseek_hierarchical]:
            hierarchical = algorithm == EplbAlgorithm.deepseek_hierarchical
            result = eplb(tokens_per_expert.sum(dim=0).double().cpu().numpy(), num_physical_experts,
                          num_groups if hierarchical else 1, num_nodes if hierarchical else 1,
                          num_physical_experts // num_local_physical_experts)
            return tuple(torch.from_numpy(x) for x in result)
        raise NotImplementedError

    def compute_algorithm(raw_algorithm, num_groups, num_nodes):
        if raw_algorithm != "auto":
            return EplbAlgorithm[raw_algorithm]
        if (num_groups is not None) and (num_groups % num_nodes == 0):
            return EplbAlgorithm.deepseek_hierarchical
        return EplbAlgorithm.deepseek

    algorithms.EplbAlgorithm = EplbAlgorithm
    algorithms.rebalance_experts = rebalance_experts
    algorithms.compute_algorithm = compute_algorithm
    modules["sglang.srt.eplb.eplb_algorithms"] = algorithms
    modules["sglang.srt.eplb"].eplb_algorithms = algorithms

    location = types.ModuleType("sglang.srt.eplb.expert_location")

    def init_by_eplb(server_args, num_groups, logical_count):
        """ExpertLocationMetadata.init_by_eplb's call and unpacking (returns the padded maps)."""
        if len(logical_count.shape) == 2:
            logical_count = logical_count.unsqueeze(0)
        num_physical = logical_count.shape[-1] + server_args.ep_num_redundant_experts
        phy2log, log2phy, _ = algorithms_module().rebalance_experts(
            tokens_per_expert=logical_count,
            num_physical_experts=num_physical,
            num_local_physical_experts=num_physical // server_args.ep_size,
            num_groups=num_groups,
            num_nodes=server_args.nnodes,
            algorithm=algorithms_module().compute_algorithm(
                raw_algorithm=server_args.eplb_algorithm, num_groups=num_groups, num_nodes=server_args.nnodes
            ),
        )
        padded = torch.nn.functional.pad(log2phy, (0, num_physical - log2phy.shape[-1]), value=-1)
        return phy2log, padded

    def algorithms_module():
        return modules["sglang.srt.eplb"].eplb_algorithms  # `from sglang.srt.eplb import eplb_algorithms`

    location.init_by_eplb = init_by_eplb
    modules["sglang.srt.eplb.expert_location"] = location

    distribution = types.ModuleType("sglang.srt.eplb.expert_distribution")

    class _Recorder:
        """The recorder protocol the models and select_experts use."""

        def __init__(self):
            self.layer = None
            self.seen: list[tuple[int, torch.Tensor]] = []
            self.passes = 0

        @contextlib.contextmanager
        def with_current_layer(self, layer_idx):
            self.layer = layer_idx
            yield
            self.layer = None

        @contextlib.contextmanager
        def with_forward_pass(self, forward_pass_id, forward_batch):
            yield
            self.passes += 1

        def on_select_experts(self, topk_ids):
            self.seen.append((self.layer, topk_ids.clone()))

        def dump_record(self, output_mode="file"):
            return {"passes": self.passes}

    class ExpertDistributionRecorder:
        """SGLang 0.5.23: ``init_new(expert_location_metadata, rank)``, settings in its global config."""

        @staticmethod
        def init_new(expert_location_metadata, rank):
            return _Recorder()

    class OlderDistributionRecorder:
        """SGLang at 02295fe5: ``init_new(server_args, expert_location_metadata, rank)``."""

        @staticmethod
        def init_new(server_args, expert_location_metadata, rank):
            return _Recorder()

    distribution.get_schedule = lambda: types.SimpleNamespace(chunked_prefill_size=8192)
    distribution.ExpertDistributionRecorder = {"metadata first": ExpertDistributionRecorder,
                                               "server_args first": OlderDistributionRecorder}[recorder_api]
    modules["sglang.srt.eplb.expert_distribution"] = distribution
    return modules
