"""Checks of the arguments the engines pass to a rebalancing policy.

Every check runs before any work and raises :class:`EngineInputError` (an
:class:`~placer.errors.InputError`) naming the argument, so a bad call never
returns a placement that drops an expert. Arrays may be torch tensors (any
device, any numeric dtype) or numpy arrays; they come back as numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from placer.errors import InputError

__all__ = ["EngineCall", "EngineInputError", "as_numpy", "check_call", "check_count", "check_weight"]


class EngineInputError(InputError):
    """A policy argument from an engine (or a user) is malformed; ``field`` names the argument."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(None, field, message)

    def __reduce__(self) -> tuple:
        """Pickle by this class's own constructor arguments."""
        return type(self), (self.field, self.message)


@dataclass(frozen=True)
class EngineCall:
    """One checked rebalancing request, engine-neutral.

    weight: [layers, experts] float64 load (non-negative, finite);
    old_phy2log: [layers, num_replicas] int64 placement in service (-1 = empty slot),
    or None when the engine gave none or gave one of another width (elastic EP
    changing the rank count: nothing can stay in its slot then).
    """

    weight: np.ndarray
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_ranks: int
    old_phy2log: np.ndarray | None

    @property
    def num_layers(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.weight.shape[1])

    @property
    def slots_per_rank(self) -> int:
        return self.num_replicas // self.num_ranks

    @property
    def ranks_per_node(self) -> int:
        return self.num_ranks // self.num_nodes


def as_numpy(array: object, field: str) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array; raises naming ``field``."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        array = array.detach().cpu()
        if getattr(array, "dtype", None) is not None and "bfloat16" in str(array.dtype):
            array = array.float()
        array = array.numpy()
    try:
        result = np.asarray(array)
    except (TypeError, ValueError) as err:
        raise EngineInputError(field, f"expected an array, got {type(array).__name__} ({err})") from None
    if result.dtype == object or not (np.issubdtype(result.dtype, np.number) or result.dtype == bool):
        raise EngineInputError(field, f"expected a numeric array, got dtype {result.dtype}")
    return result


def check_count(value: object, field: str, minimum: int) -> int:
    """An integer argument >= minimum (numpy and torch scalars accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            return check_count(value.item(), field, minimum)
        raise EngineInputError(field, f"expected an integer, got {value!r}")
    if int(value) < minimum:
        raise EngineInputError(field, f"expected an integer >= {minimum}, got {int(value)}")
    return int(value)


def check_weight(weight: object, field: str = "weight") -> np.ndarray:
    """Loads [layers, experts]: 2-D, at least one layer and expert, finite and >= 0. Returns float64."""
    array = as_numpy(weight, field)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise EngineInputError(field, f"expected shape [layers, experts] with both >= 1, got {list(array.shape)}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise EngineInputError(field, "contains NaN or infinite loads")
    if (array < 0).any():
        raise EngineInputError(field, f"contains negative loads (min {array.min():g})")
    return array


def _check_old(old: object, layers: int, experts: int, num_replicas: int, field: str) -> np.ndarray | None:
    """The placement in service, or None when absent or of another width (see :class:`EngineCall`)."""
    if old is None:
        return None
    array = as_numpy(old, field)
    if array.ndim != 2 or array.shape[0] != layers:
        raise EngineInputError(field, f"expected shape [{layers}, replicas], got {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.integer):
        raise EngineInputError(field, f"expected integer expert ids, got dtype {array.dtype}")
    if array.size and (array.min() < -1 or array.max() >= experts):
        raise EngineInputError(field, f"expert ids must lie in [-1, {experts}), got [{array.min()}, {array.max()}]")
    if array.shape[1] != num_replicas:
        return None
    return array.astype(np.int64)


def check_call(
    weight: object,
    num_replicas: object,
    num_groups: object,
    num_nodes: object,
    num_ranks: object,
    old_phy2log: object = None,
    *,
    names: dict[str, str] | None = None,
) -> EngineCall:
    """Check one rebalancing request; ``names`` maps each argument to the engine's own name.

    num_groups: None or 0 mean no expert groups (one group); when the groups
    divide by nodes (the engines' hierarchical case) they must divide the
    experts, otherwise they are ignored (the engines' global case). num_replicas must be >= experts and a multiple of
    num_ranks; num_ranks a multiple of num_nodes.
    """
    name = {k: k for k in ("weight", "num_replicas", "num_groups", "num_nodes", "num_ranks", "old_phy2log")}
    name.update(names or {})
    loads = check_weight(weight, name["weight"])
    layers, experts = loads.shape
    replicas = check_count(num_replicas, name["num_replicas"], 1)
    ranks = check_count(num_ranks, name["num_ranks"], 1)
    nodes = check_count(num_nodes, name["num_nodes"], 1)
    groups = 1 if num_groups is None else check_count(num_groups, name["num_groups"], 0) or 1
    if replicas < experts:
        raise EngineInputError(name["num_replicas"], f"{replicas} replicas cannot hold {experts} experts")
    if replicas % ranks:
        raise EngineInputError(name["num_replicas"], f"{replicas} replicas are not a multiple of {ranks} ranks")
    if ranks % nodes:
        raise EngineInputError(name["num_nodes"], f"{ranks} ranks are not a multiple of {nodes} nodes")
    if groups % nodes == 0 and experts % groups:  # the hierarchical case; otherwise groups are ignored
        raise EngineInputError(name["num_groups"], f"{groups} groups do not divide {experts} experts")
    old = _check_old(old_phy2log, layers, experts, replicas, name["old_phy2log"])
    return EngineCall(loads, replicas, groups, nodes, ranks, old)
