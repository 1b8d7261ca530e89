"""Routing hooks: the engines' own top-k capture feeding a :class:`RoutingRecorder`.

vLLM (``vllm/model_executor/layers/fused_moe/routed_experts_capturer.py``):
``RoutedExpertsCapturer`` keeps a device buffer
``[max_num_batched_tokens, num_hidden_layers, top_k]`` int32 that each MoE
layer's ``capture(layer_id, topk_ids)`` fills (dense layers stay zero); it
exists with ``--enable-return-routed-experts``. Once per step vLLM reads the
step's rows, by one of two methods the hook wraps (its rows are appended on
the device before vLLM's own read):

- released vLLM 0.31.0-0.34.0 (read in their wheels, 0.34.0 of 2026-11-16):
  ``snapshot_routing_data(num_tokens)`` on ``device_buffer``, called by the
  auxiliary-output connector on the first tensor-parallel rank of each
  data-parallel group only (other TP ranks hold the same rows);
- vLLM 0.16.0-0.20.0 and 00bd1493: ``save_captured_experts(indices)`` on
  ``_device_buffer``, one index per token.

vLLM 0.21.0-0.30.0 have neither (0.21.0 copies through
``sync_fwd_experts_buffer_DtoH``; from 0.22.0 the model runner slices
``get_device_buffer()`` by a token count the capturer never sees), so the
hook refuses those releases and says which are supported.

What a request gets back (``routed_experts``, uint8 / uint16 / int32
``[tokens, num_hidden_layers, top_k]``) is converted by
:func:`routed_experts_rows`.

SGLang (``python/sglang/srt/eplb/expert_distribution.py``, 02295fe5 and 0.5.23): the
global ``ExpertDistributionRecorder`` gets ``with_current_layer(layer_idx)``,
``on_select_experts(topk_ids)`` (ids are *physical*: ``select_experts`` maps
logical to physical first and masks padding to -1) and ``with_forward_pass``
around every forward, CUDA-graph replays included; its per-token gatherer
keeps ``topk_ids_of_layer [num_layers, tokens, top_k]``. The hook wraps the
recorder SGLang creates (``ExpertDistributionRecorder.init_new``): each
layer's ids are copied into a static device staging buffer (a device copy,
so it is captured into CUDA graphs and replayed with them) and at the end of
the forward the step's rows are mapped to logical ids through the live
``physical_to_logical_map`` and appended, all on the device.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
from collections.abc import Iterator

import numpy as np

from placer.engine_policies.inputs import EngineInputError, as_numpy, check_count
from placer.engine_policies.recorder import RoutingRecorder

__all__ = [
    "CAPTURER_MODULE",
    "DISTRIBUTION_MODULE",
    "VLLM_STEP_READS",
    "SglangRoutingTap",
    "install_sglang_routing_hook",
    "install_vllm_routing_hook",
    "moe_layers",
    "routed_experts_rows",
]

CAPTURER_MODULE = "vllm.model_executor.layers.fused_moe.routed_experts_capturer"
DISTRIBUTION_MODULE = "sglang.srt.eplb.expert_distribution"


def moe_layers(num_hidden_layers: int, first_dense_layers: int) -> list[int]:
    """Indices of the MoE layers among the model's hidden layers (dense ones first, as DeepSeek-V3)."""
    total = check_count(num_hidden_layers, "num_hidden_layers", 1)
    dense = check_count(first_dense_layers, "first_dense_layers", 0)
    if dense >= total:
        raise EngineInputError("first_dense_layers", f"{dense} dense layers leave no MoE layer of {total}")
    return list(range(dense, total))


def routed_experts_rows(routed_experts: object, first_dense_layers: int) -> np.ndarray:
    """vLLM's per-request ``routed_experts`` [tokens, num_hidden_layers, top_k] -> [tokens, MoE layers, top_k] int64.

    Accepts uint8, uint16 or int32 (any integer dtype); the first
    ``first_dense_layers`` layers (all zero) are dropped.
    """
    ids = as_numpy(routed_experts, "routed_experts")
    if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
        raise EngineInputError("routed_experts", f"expected integer [tokens, num_hidden_layers, top_k], "
                               f"got {ids.dtype} {list(ids.shape)}")
    keep = moe_layers(ids.shape[1], first_dense_layers)
    return ids[:, keep].astype(np.int64)


#: vLLM's per-step read of the capture buffer: method -> (buffer attribute, the step's token
#: count from the method's argument), newest first (see the module docstring)
VLLM_STEP_READS = {
    "snapshot_routing_data": ("device_buffer", int),
    "save_captured_experts": ("_device_buffer", len),
}


def _installed(distribution: str) -> str:
    """The installed version of ``distribution``, or "(version unknown)"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def install_vllm_routing_hook(recorder: RoutingRecorder) -> None:
    """Feed ``recorder`` every step from vLLM's ``RoutedExpertsCapturer`` (see the module docstring).

    Build the recorder with ``num_layers=num_hidden_layers``,
    ``layers=moe_layers(num_hidden_layers, first_dense_layers)`` and the
    worker's device. Installing again replaces the recorder.
    """
    capturer = getattr(importlib.import_module(CAPTURER_MODULE), "RoutedExpertsCapturer", None)
    name = next((m for m in VLLM_STEP_READS if callable(getattr(capturer, m, None))), None)
    if name is None:
        raise EngineInputError(CAPTURER_MODULE, f"vLLM {_installed('vllm')}: RoutedExpertsCapturer has no "
                               f"{' or '.join(VLLM_STEP_READS)}. Supported: vLLM 0.16.0-0.20.0 and "
                               "0.31.0-0.34.0; 0.21.0-0.30.0 read each step in ways the hook does not follow")
    attribute, step_tokens = VLLM_STEP_READS[name]
    original = getattr(capturer, name)
    original = getattr(original, "__wrapped__", original)

    def read_step(self, tokens):
        buffer = getattr(self, attribute, None)
        count = step_tokens(tokens)
        if buffer is not None and count:
            recorder.record(buffer[:count])
        return original(self, tokens)

    read_step.__wrapped__ = original
    setattr(capturer, name, read_step)


class SglangRoutingTap:
    """Wraps SGLang's expert-distribution recorder; feeds ``recorder`` logical ids on the device.

    inner: the recorder SGLang built; physical_to_logical_map: the live
    ``[num_layers, num_physical_experts]`` device tensor of the expert-location
    metadata (updated in place by SGLang's rebalances); max_tokens: rows of the
    staging buffer (tokens beyond it in one forward are not recorded).
    Everything else is delegated to ``inner``.
    """

    def __init__(self, inner: object, recorder: RoutingRecorder, physical_to_logical_map: object,
                 max_tokens: int) -> None:
        import torch

        self._inner = inner
        self._recorder = recorder
        self._p2l = physical_to_logical_map
        self._max_tokens = check_count(max_tokens, "max_tokens", 1)
        shape = (recorder.num_layers, self._max_tokens, recorder.top_k)
        self._staging = torch.full(shape, -1, dtype=torch.int32, device=physical_to_logical_map.device)
        self._layer: int | None = None
        self._tokens = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    @contextlib.contextmanager
    def with_current_layer(self, layer_idx: int) -> Iterator[None]:
        previous, self._layer = self._layer, layer_idx
        try:
            with self._inner.with_current_layer(layer_idx):
                yield
        finally:
            self._layer = previous

    @contextlib.contextmanager
    def with_forward_pass(self, forward_pass_id: int, forward_batch: object) -> Iterator[None]:
        with self._inner.with_forward_pass(forward_pass_id, forward_batch):
            yield
        ids = getattr(forward_batch, "input_ids", None)
        if ids is not None and ids.shape[0]:
            self._record(min(int(ids.shape[0]), self._max_tokens))

    def on_select_experts(self, topk_ids: object) -> None:
        self._inner.on_select_experts(topk_ids=topk_ids)
        if self._layer is not None and 0 <= self._layer < self._recorder.num_layers:
            rows = min(int(topk_ids.shape[0]), self._max_tokens)
            self._staging[self._layer, :rows, : topk_ids.shape[1]].copy_(topk_ids[:rows])

    def _record(self, tokens: int) -> None:
        """Map the step's physical ids to logical on the device and append [tokens, layers, k]."""
        import torch

        physical = self._staging[:, :tokens].long()
        layers = physical.shape[0]
        logical = torch.gather(self._p2l.long(), 1, physical.clamp(min=0).reshape(layers, -1))
        logical = torch.where(physical >= 0, logical.reshape(physical.shape), torch.full_like(physical, -1))
        self._recorder.record(logical.permute(1, 0, 2))


def install_sglang_routing_hook(recorder: RoutingRecorder, max_tokens: int | None = None) -> None:
    """Wrap every recorder SGLang creates (``ExpertDistributionRecorder.init_new``) in a :class:`SglangRoutingTap`.

    Build ``recorder`` with ``num_layers`` = the model's layers (SGLang indexes
    them by model layer id) and ``layers`` = the MoE ones. max_tokens defaults
    to SGLang's ``chunked_prefill_size`` (the tokens of one forward). Both
    ``init_new`` signatures are wrapped: ``(server_args, expert_location_metadata,
    rank)`` (02295fe5) and ``(expert_location_metadata, rank)`` (0.5.23, whose
    settings live in SGLang's global config). Without expert-location metadata
    (EPLB off) SGLang's recorder is left alone.
    """
    module = importlib.import_module(DISTRIBUTION_MODULE)
    cls = getattr(module, "ExpertDistributionRecorder", None)
    original = getattr(cls, "init_new", None)
    if not callable(original):
        raise EngineInputError(DISTRIBUTION_MODULE, "has no ExpertDistributionRecorder.init_new "
                               "(SGLang version not supported)")
    original = getattr(original, "__wrapped__", original)
    signature = inspect.signature(original)

    def init_new(*args, **kwargs):
        inner = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs).arguments
        metadata = bound.get("expert_location_metadata")
        if metadata is None:
            return inner
        rows = max_tokens or _forward_tokens(module, bound.get("server_args"))
        return SglangRoutingTap(inner, recorder, metadata.physical_to_logical_map, rows)

    init_new.__wrapped__ = original
    cls.init_new = staticmethod(init_new)


def _forward_tokens(module: object, server_args: object) -> int:
    """SGLang's ``chunked_prefill_size``: from ``server_args`` where ``init_new`` takes them,
    else from the global schedule config the recorder module reads (``get_schedule()``)."""
    if server_args is not None:
        return getattr(server_args, "chunked_prefill_size", 0)
    schedule = getattr(module, "get_schedule", None)
    return getattr(schedule(), "chunked_prefill_size", 0) if callable(schedule) else 0
