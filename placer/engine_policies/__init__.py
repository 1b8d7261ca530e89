"""placer inside the serving engines' online EPLB loop.

Drop-ins with the engines' exact signatures (:class:`PlacerEplbPolicy` for
vLLM, :func:`rebalance_experts` for SGLang), installers that register them
in the engines' registries (:func:`install_vllm`, :func:`install_sglang`,
and the entry points in :mod:`placer.engine_policies.plugins`), and routing
hooks that feed a window from the engines' top-k capture without a host sync
per step (:class:`RoutingRecorder`, :func:`install_vllm_routing_hook`,
:func:`install_sglang_routing_hook`). The engines pass load only; a
co-activation source is attached with :func:`attach`, usually a
:class:`RebalancerProposer` around a :class:`placer.online.Rebalancer`. Versions read are
pinned in each module's docstring and in ``docs/engines-online.md``.
"""

from placer.engine_policies.attachment import attach, attached, broadcast_from_rank0, detach
from placer.engine_policies.core import balance, gpu_peaks
from placer.engine_policies.hooks import (
    install_sglang_routing_hook,
    install_vllm_routing_hook,
    moe_layers,
    routed_experts_rows,
)
from placer.engine_policies.inputs import EngineInputError
from placer.engine_policies.online import RebalancerProposer
from placer.engine_policies.recorder import RoutingRecorder
from placer.engine_policies.sglang import install_sglang, rebalance_experts
from placer.engine_policies.vllm import PlacerEplbMapsPolicy, PlacerEplbPolicy, install_vllm

__all__ = [
    "EngineInputError",
    "PlacerEplbMapsPolicy",
    "PlacerEplbPolicy",
    "RebalancerProposer",
    "RoutingRecorder",
    "attach",
    "attached",
    "balance",
    "broadcast_from_rank0",
    "detach",
    "gpu_peaks",
    "install_sglang",
    "install_sglang_routing_hook",
    "install_vllm",
    "install_vllm_routing_hook",
    "moe_layers",
    "rebalance_experts",
    "routed_experts_rows",
]
