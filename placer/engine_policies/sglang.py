"""placer as an SGLang EPLB algorithm, and the installer that registers it.

Read in sgl-project/sglang (the engine is not imported here; every name below
is SGLang's):

- ``python/sglang/srt/eplb/eplb_algorithms/__init__.py`` (046f88cb; 7d81985a
  and later variants differ only in which members exist): a closed ``class
  EplbAlgorithm(Enum)`` (deepseek, deepseek_hierarchical, deepseek_vec,
  deepseek_vec_hierarchical, elasticity_aware; newer trees add compute_aware
  and extra keyword arguments), ``rebalance_experts(tokens_per_expert,
  num_physical_experts, num_local_physical_experts, num_groups, num_nodes,
  algorithm)`` dispatching on the member (``raise NotImplementedError``
  otherwise) and ``compute_algorithm(raw_algorithm, num_groups, num_nodes)``
  returning ``EplbAlgorithm[raw_algorithm]`` unless "auto", so an unknown
  ``--eplb-algorithm`` (a free ``type=str`` flag) raises KeyError.
- ``python/sglang/srt/eplb/expert_location.py`` (01fec5c2):
  ``ExpertLocationMetadata.init_by_eplb`` calls
  ``eplb_algorithms.rebalance_experts(tokens_per_expert=logical_count, ...,
  num_groups=model_config.num_groups (may be None), num_nodes=server_args.nnodes,
  algorithm=eplb_algorithms.compute_algorithm(...))`` through the module
  attribute, with ``logical_count [buffer steps, layers, logical experts]`` on
  the server's device (a 2-D count is unsqueezed first), and unpacks
  ``(physical_to_logical_map [layers, physical], logical_to_all_physical_map
  [layers, logical, X] (-1 padded; it pads X to num_physical), expert_count)``.
"""

from __future__ import annotations

import enum
import functools
import importlib

import numpy as np

from placer.engine_policies.attachment import serve
from placer.engine_policies.core import logical_maps
from placer.engine_policies.inputs import (
    EngineInputError,
    as_numpy,
    check_call,
    check_count,
    check_weight,
)

__all__ = ["ALGORITHMS_MODULE", "PlacerAlgorithm", "install_sglang", "rebalance_experts"]

ALGORITHMS_MODULE = "sglang.srt.eplb.eplb_algorithms"

_NAMES = {
    "weight": "tokens_per_expert",
    "num_replicas": "num_physical_experts",
    "num_ranks": "num_physical_experts // num_local_physical_experts",
    "old_phy2log": "old_physical_to_logical_map",
}


class PlacerAlgorithm(enum.Enum):
    """The value ``compute_algorithm`` returns for placer once installed (SGLang's enum is closed)."""

    placer = "placer"


def _weight(tokens_per_expert: object) -> np.ndarray:
    """Sum over the buffer-step axis: [steps, layers, experts] or [layers, experts] -> [layers, experts].

    Every count is checked (finite, >= 0) before the sum, so no negative count hides in it.
    """
    counts = as_numpy(tokens_per_expert, "tokens_per_expert")
    if counts.ndim not in (2, 3) or 0 in counts.shape:
        raise EngineInputError("tokens_per_expert", "expected [steps, layers, experts] or [layers, experts], "
                               f"got shape {list(counts.shape)}")
    checked = check_weight(counts.reshape(-1, counts.shape[-1]), "tokens_per_expert")
    return checked.reshape(counts.shape).sum(axis=0) if counts.ndim == 3 else checked


def rebalance_experts(
    tokens_per_expert,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int | None,
    num_nodes: int,
    algorithm: object = PlacerAlgorithm.placer,
    old_physical_to_logical_map=None,
    **_ignored: object,
):
    """SGLang-compatible: (physical_to_logical_map, logical_to_all_physical_map, expert_count).

    tokens_per_expert: [steps, layers, experts] (or [layers, experts]), summed
    over steps; num_groups None or 0 means no groups. Returns int64 tensors on
    the CPU when given a torch tensor (numpy arrays otherwise): phy2log
    [layers, num_physical_experts], log2phy [layers, experts, max copies] (-1
    padded) and copies per expert [layers, experts]. SGLang passes no
    placement in service; ``old_physical_to_logical_map`` [layers,
    num_physical_experts] may be given to keep unmoved experts in their slots.
    Extra keywords of newer SGLang trees (compute costs) are ignored.
    """
    physical = check_count(num_physical_experts, "num_physical_experts", 1)
    local = check_count(num_local_physical_experts, "num_local_physical_experts", 1)
    if physical % local:
        raise EngineInputError("num_physical_experts", f"{physical} is not a multiple of "
                               f"num_local_physical_experts={local}")
    call = check_call(_weight(tokens_per_expert), physical, num_groups, num_nodes, physical // local,
                      old_physical_to_logical_map, names=_NAMES)
    phy2log = serve(call)
    log2phy, logcnt = logical_maps(phy2log, call.num_experts)
    if type(tokens_per_expert).__module__.startswith("torch"):
        import torch

        return torch.from_numpy(phy2log), torch.from_numpy(log2phy), torch.from_numpy(logcnt)
    return phy2log, log2phy, logcnt


def install_sglang(name: str = "placer") -> None:
    """Make ``--eplb-algorithm <name>`` select placer in this process's SGLang.

    Wraps the module's ``compute_algorithm`` (``name`` -> :attr:`PlacerAlgorithm.placer`,
    anything else -> SGLang's own) and ``rebalance_experts`` (that value -> placer,
    anything else -> SGLang's own dispatch). SGLang's enum is left untouched.
    Idempotent. Must run in every scheduler process: the ``sglang.srt.plugins``
    entry point (:func:`placer.engine_policies.plugins.sglang_plugin`) does that.
    """
    if not isinstance(name, str) or not name:
        raise EngineInputError("name", f"expected a non-empty algorithm name, got {name!r}")
    module = importlib.import_module(ALGORITHMS_MODULE)
    compute, dispatch = getattr(module, "compute_algorithm", None), getattr(module, "rebalance_experts", None)
    if not (callable(compute) and callable(dispatch)):
        raise EngineInputError(ALGORITHMS_MODULE, "has no compute_algorithm / rebalance_experts (SGLang "
                               "version not supported)")
    installed = getattr(module, "_placer_names", None)
    if installed is not None:
        installed.add(name)
        return
    names = {name}

    @functools.wraps(compute)
    def compute_algorithm(raw_algorithm, *args, **kwargs):
        if raw_algorithm in names:
            return PlacerAlgorithm.placer
        return compute(raw_algorithm, *args, **kwargs)

    @functools.wraps(dispatch)
    def rebalance(*args, **kwargs):
        algorithm = kwargs.get("algorithm", args[5] if len(args) > 5 else None)
        if algorithm is PlacerAlgorithm.placer:
            return rebalance_experts(*args, **kwargs)
        return dispatch(*args, **kwargs)

    module.compute_algorithm = compute_algorithm
    module.rebalance_experts = rebalance
    module._placer_names = names
