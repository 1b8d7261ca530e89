"""What to place and how: the problem object and the solver settings of :func:`placer.place`.

:class:`PlacementProblem` is the problem (cluster, model, constraints, slots, GPUs out of
service); :class:`SolverSettings` says how to solve it (method, budget, seed) and how to
run (workers, mapper, progress, Ctrl-C policy, streaming cap). Both validate their fields
on construction and raise :class:`~placer.errors.InputError` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from placer.constraints import Constraints
from placer.errors import InputError
from placer.placement import BASELINES
from placer.progress import ProgressFn
from placer.topology import Model, Topology

__all__ = ["METHODS", "SOLVERS", "PlacementProblem", "SolverSettings"]

#: placement algorithms: spectral (seconds), ilp / auto (spectral, then CP-SAT), eplb (loads only)
SOLVERS = ("auto", "spectral", "ilp", "eplb")
#: every way to produce a placement: the solvers and the named baselines
METHODS = (*SOLVERS, *BASELINES)
ON_INTERRUPT = ("raise", "best")


def _count(field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(None, field, f"expected an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class PlacementProblem:
    """The placement problem: where experts may go and what every placement must meet.

    topology: the cluster (nodes x GPUs per node, memory, bandwidths).
    model: the MoE model (expert bytes for memory checks and reports, groups), or None.
    balance: EPS, max GPU load <= (1+EPS) x mean on the trace; max_nodes: M nodes per
    token, hard over the distinct top-k sets or, with ``max_nodes_coverage`` Q, for >= Q
    of tokens; keep_groups: each of ``model.num_groups`` contiguous expert groups on its
    own nodes (see :mod:`placer.constraints`).
    slots_per_gpu: expert slots per GPU and layer, "memory" (as many as fit the GPU with
    ``memory_reserve`` of its memory kept back) or None (ceil(E / live GPUs)); spare slots
    hold replicas.
    exclude_gpus: GPU ids out of service: they get no slots.
    """

    topology: Topology
    model: Model | None = None
    balance: float | None = None
    max_nodes: int | None = None
    max_nodes_coverage: float | None = None
    keep_groups: bool = False
    slots_per_gpu: int | Literal["memory"] | None = None
    memory_reserve: float = 0.0
    exclude_gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.topology, Topology):
            raise InputError(None, "topology", f"expected a Topology, got {type(self.topology).__name__}")
        if self.model is not None and not isinstance(self.model, Model):
            raise InputError(None, "model", f"expected a Model or None, got {type(self.model).__name__}")
        self.constraints()  # validates balance, max_nodes and max_nodes_coverage
        if self.slots_per_gpu not in (None, "memory"):
            _count("slots_per_gpu", self.slots_per_gpu, 1)
        object.__setattr__(self, "exclude_gpus", tuple(self.exclude_gpus))
        for name in ("balance", "max_nodes_coverage"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else float(value))

    def constraints(self, groups: Any = None) -> Constraints:
        """The side constraints (``groups``: [experts] group ids when groups are kept)."""
        return Constraints(self.balance, self.max_nodes, self.max_nodes_coverage, groups)


@dataclass(frozen=True)
class SolverSettings:
    """How to solve: the method and its budget, and how to run it.

    solver: one of :data:`METHODS` (a solver or a named baseline).
    time_limit: total budget in seconds, converted to deterministic per-layer effort (the
    result never depends on machine speed or ``workers``). seed: random seed.
    alpha: weight of the busiest node's traffic (NIC balance) against the cut (None: per
    node count). workers: processes solving layers. mapper: runs the per-layer solves,
    ``mapper(fn, problems) -> [fn(p) for p in problems]`` (e.g. a Dask cluster's map).
    progress: callback(stage, done, total). on_interrupt: "raise" lets Ctrl-C propagate;
    "best" returns the layers solved so far and quick stand-ins for the rest.
    max_nets: distinct top-k sets kept per layer while summarising a trace: "auto" (what
    the search uses), None (every set) or a count.
    """

    solver: str = "auto"
    time_limit: float = 60.0
    seed: int = 0
    alpha: float | None = None
    workers: int = 1
    mapper: Callable | None = None
    progress: ProgressFn | None = None
    on_interrupt: str = "raise"
    max_nets: int | None | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if self.solver not in METHODS:
            raise InputError(None, "solver", f"unknown solver {self.solver!r}; expected one of {', '.join(METHODS)}")
        if not (isinstance(self.time_limit, (int, float)) and math.isfinite(self.time_limit) and self.time_limit > 0):
            raise InputError(None, "time_limit", f"expected a finite number of seconds > 0, got {self.time_limit!r}")
        _count("seed", self.seed, 0)
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise InputError(None, "alpha", f"expected a finite number >= 0, got {self.alpha!r}")
        _count("workers", self.workers, 1)
        if self.on_interrupt not in ON_INTERRUPT:
            raise InputError(None, "on_interrupt", f"expected 'raise' or 'best', got {self.on_interrupt!r}")
        if self.max_nets not in (None, "auto"):
            _count("max_nets", self.max_nets, 0)
        object.__setattr__(self, "time_limit", float(self.time_limit))
