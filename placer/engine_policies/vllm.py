"""placer as a vLLM EPLB policy, and the installer that registers it.

Read in vllm-project/vllm (the engine is not imported here; every name below
is vLLM's):

- ``vllm/distributed/eplb/policy/abstract.py`` and ``default.py`` at 02c1119c:
  ``AbstractEplbPolicy.rebalance_experts(cls, weight, num_replicas,
  num_groups, num_nodes, num_ranks, old_global_expert_indices=None) ->
  torch.Tensor``, a classmethod returning ``phy2log [layers, num_replicas]``
  (int64, CPU) only; ``DefaultEplbPolicy.preserve_intragpu_slots`` keeps
  experts that stay on a GPU in their old slots. The first policy package
  (before ``old_global_expert_indices``) returned the tuple (phy2log,
  log2phy, logcnt) of ``rebalance_algo.py``: :class:`PlacerEplbMapsPolicy`.
- ``vllm/distributed/eplb/policy/__init__.py`` (f3ef7dbb): ``EPLB_POLICIES =
  {"default": DefaultEplbPolicy}`` and ``assert set(EPLB_POLICIES) ==
  set(get_args(EPLBPolicyOption))``.
- ``vllm/config/parallel.py`` (00193b82): ``EPLBPolicyOption =
  Literal["default"]``; ``EPLBConfig`` (a pydantic dataclass through
  ``vllm.config.utils.config``, extra fields forbidden) has ``policy:
  EPLBPolicyOption = "default"`` and ``use_async: bool = True``, and its
  validator rejects ``use_async`` with any policy but ``"default"``.
- ``vllm/distributed/eplb/eplb_state.py``: ``self.policy =
  EPLB_POLICIES[policy_type]``, then in ``rearrange`` on every EP rank
  ``self.policy.rebalance_experts(global_expert_load_window.cpu(),
  num_replicas, num_groups, num_nodes, num_gpus,
  eplb_model_state.physical_to_logical_map.cpu())``, positionally; the load
  is the all-reduced int32 window sum [num_moe_layers, num_logical_experts],
  ``num_groups = model.num_expert_groups``, ``num_nodes`` is 1 when the ranks
  do not divide by nodes, and under elastic EP scale-down ``num_replicas``
  shrinks while the old map keeps its width.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from dataclasses import fields, is_dataclass

import numpy as np

from placer.engine_policies.attachment import serve
from placer.engine_policies.core import logical_maps
from placer.engine_policies.inputs import EngineInputError, as_numpy, check_call

__all__ = ["CONFIG_MODULE", "POLICY_MODULE", "PlacerEplbMapsPolicy", "PlacerEplbPolicy", "install_vllm"]

POLICY_MODULE = "vllm.distributed.eplb.policy"
CONFIG_MODULE = "vllm.config.parallel"

_NAMES = {"num_ranks": "num_ranks", "old_phy2log": "old_global_expert_indices"}


def _is_torch(value: object) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


class PlacerEplbPolicy:
    """Drop-in for ``vllm.distributed.eplb.policy.AbstractEplbPolicy``.

    Load only (nothing attached): DeepSeek's EPLB on ``weight``, relabelled so
    that experts staying on a GPU keep their slot; with a proposer attached
    (:func:`placer.engine_policies.attach`), its co-activation-aware layers
    within the GPU-peak tolerance.
    """

    @classmethod
    def rebalance_experts(
        cls,
        weight,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        old_global_expert_indices=None,
    ):
        """phy2log [layers, num_replicas] int64 from weight [layers, num_logical_experts].

        Torch in (vLLM passes CPU tensors), a CPU int64 torch tensor out;
        numpy in, numpy out. num_groups 0 means no groups;
        old_global_expert_indices [layers, num_replicas] or None. Raises
        EngineInputError naming the argument on bad input.
        """
        call = check_call(weight, num_replicas, num_groups, num_nodes, num_ranks, old_global_expert_indices,
                          names=_NAMES)
        phy2log = serve(call)
        if _is_torch(weight):
            import torch

            return torch.from_numpy(phy2log)
        return phy2log


class PlacerEplbMapsPolicy(PlacerEplbPolicy):
    """The same policy for the first policy package (before ``old_global_expert_indices``).

    There ``rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes,
    num_ranks)`` returns ``(physical_to_logical_map [layers, num_replicas],
    logical_to_physical_map [layers, experts, X] -1 padded, logical_replica_count
    [layers, experts])`` and the caller pads X itself.
    """

    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices=None):
        phy2log = super().rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks,
                                            old_global_expert_indices)
        log2phy, logcnt = logical_maps(np.asarray(phy2log), as_numpy(weight, "weight").shape[1])
        if _is_torch(phy2log):
            import torch

            return phy2log, torch.from_numpy(log2phy), torch.from_numpy(logcnt)
        return phy2log, log2phy, logcnt


def _policy_for(registry: dict) -> type:
    """The drop-in matching the registry's default policy: the three maps where its callers unpack
    them (the first policy package, without ``old_global_expert_indices``, and vLLM 0.14.0-0.18.0,
    whose ``rebalance_experts`` takes them but is declared to return a tuple), else phy2log alone."""
    method = getattr(registry.get("default"), "rebalance_experts", None)
    if method is None:
        return PlacerEplbPolicy
    signature = inspect.signature(method)
    returned = signature.return_annotation
    if isinstance(returned, str):  # postponed annotations: "tuple[...]", "Tuple[...]", "typing.Tuple[...]"
        declares_tuple = returned.split("[")[0].split(".")[-1].lower() == "tuple"
    else:
        declares_tuple = (typing.get_origin(returned) or returned) is tuple
    if "old_global_expert_indices" not in signature.parameters or declares_tuple:
        return PlacerEplbMapsPolicy
    return PlacerEplbPolicy


def _extend_literal(options: object, name: str) -> object:
    """``Literal[..., name]`` from a Literal of option strings."""
    values = typing.get_args(options)
    if not values or not all(isinstance(v, str) for v in values):
        raise EngineInputError("EPLBPolicyOption", f"expected a Literal of policy names, got {options!r}")
    return typing.Literal[(*values, name)] if name not in values else options


def _retype(config_cls: type, field_name: str, annotation: object) -> None:
    """Give a pydantic dataclass field a new annotation and rebuild its validator."""
    from pydantic.dataclasses import rebuild_dataclass

    if not is_dataclass(config_cls) or field_name not in {f.name for f in fields(config_cls)}:
        raise EngineInputError(config_cls.__name__, f"expected a dataclass with field {field_name!r}")
    config_cls.__dataclass_fields__[field_name].type = annotation
    config_cls.__annotations__[field_name] = annotation
    pydantic_fields = getattr(config_cls, "__pydantic_fields__", None)
    if pydantic_fields and field_name in pydantic_fields:
        pydantic_fields[field_name].annotation = annotation
    rebuild_dataclass(config_cls, force=True)


def _rebuild_parents(config_module: object, child: type) -> None:
    """Rebuild the module's pydantic dataclasses holding a ``child`` field (they copy its schema)."""
    from pydantic.dataclasses import rebuild_dataclass

    for value in vars(config_module).values():
        if isinstance(value, type) and value is not child and is_dataclass(value) and any(
            f.type is child or f.type == child.__name__ for f in fields(value)  # also postponed annotations
        ):
            rebuild_dataclass(value, force=True)


def install_vllm(name: str = "placer", policy: type | None = None) -> None:
    """Register ``policy`` as ``--eplb-config '{"policy": name}'`` in this process's vLLM.

    Adds it to ``EPLB_POLICIES`` (in place, so ``eplb_state``'s imported dict
    sees it) and, for a new name, to ``EPLBPolicyOption`` and the ``policy``
    field of ``EPLBConfig`` (and of the config classes that embed it), so that
    the config check accepts it. ``name="default"`` replaces vLLM's default
    policy instead, which keeps async EPLB (vLLM allows async only with
    "default"); any other name needs ``"use_async": false``. Idempotent. Must
    run in every vLLM process: the ``vllm.general_plugins`` entry point
    (:func:`placer.engine_policies.plugins.vllm_plugin`) does that. policy:
    None picks :class:`PlacerEplbPolicy`, or :class:`PlacerEplbMapsPolicy` when
    the registered default policy has no ``old_global_expert_indices`` (the
    first policy package, whose callers unpack three maps).
    """
    if not isinstance(name, str) or not name:
        raise EngineInputError("name", f"expected a non-empty policy name, got {name!r}")
    registry = getattr(importlib.import_module(POLICY_MODULE), "EPLB_POLICIES", None)
    if not isinstance(registry, dict):
        raise EngineInputError(POLICY_MODULE, "has no EPLB_POLICIES dict (vLLM version not supported)")
    policy = _policy_for(registry) if policy is None else policy
    if not callable(getattr(policy, "rebalance_experts", None)):
        raise EngineInputError("policy", f"{policy!r} has no rebalance_experts")
    config = importlib.import_module(CONFIG_MODULE)
    options = getattr(config, "EPLBPolicyOption", None)
    extended = _extend_literal(options, name)
    if extended is not options:
        eplb_config = getattr(config, "EPLBConfig", None)
        _retype(eplb_config, "policy", extended)
        _rebuild_parents(config, eplb_config)
        config.EPLBPolicyOption = extended
    registry[name] = policy

