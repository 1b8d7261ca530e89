"""What to place and how: the problem object and the solver settings of :func:`placer.place`.

:class:`PlacementProblem` is the problem (cluster, model, constraints, slots, GPUs out of
service); :class:`SolverSettings` says how to solve it (method, budget, seed) and how to
run (workers, mapper, progress, Ctrl-C policy, streaming cap). Both validate their fields
on construction and raise :class:`~placer.errors.InputError` naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from placer.checks import check_choice, check_count, check_real
from placer.constraints import Constraints
from placer.errors import InputError
from placer.placement import BASELINES
from placer.progress import ProgressFn
from placer.topology import MAX_EXPERTS, Model, Topology

__all__ = ["BATCHED_RULES", "LP_BATCH_TOKENS", "METHODS", "NIC_WEIGHED", "RULES", "SOLVERS", "PlacementProblem",
           "SolverSettings"]

#: placement algorithms: spectral (seconds), ilp (a longer search; CP-SAT on small layers), auto (candidates chosen on a
#: validation split, :mod:`placer.solvers.validation`), eplb (loads only)
SOLVERS = ("auto", "spectral", "ilp", "eplb")
#: the solvers that weigh the busiest node's traffic (``SolverSettings.alpha``)
NIC_WEIGHED = ("auto", "spectral", "ilp")
#: every way to produce a placement: the solvers and the named baselines
METHODS = (*SOLVERS, *BASELINES)
ON_INTERRUPT = ("raise", "best")
#: replica dispatch rules an engine may run (which copy serves a pair; :mod:`placer.dispatch`)
RULES = ("nearest", "sglang-static", "sglang-dynamic", "lp")
#: the rules whose choice depends on the engine batch a token is in (``lp_batch``)
BATCHED_RULES = ("sglang-dynamic", "lp")
#: default engine batch (one forward pass), in tokens: the ``lp`` rule balances each, the
#: ``sglang-dynamic`` rule counts rows within it
LP_BATCH_TOKENS = 4096
#: largest batch accepted, in tokens
MAX_LP_BATCH = 1 << 30


MAX_SEED = (1 << 32) - 1
MAX_WORKERS = 4096
MAX_TIME_LIMIT = 1e7
"""Largest time budget accepted, in seconds (about 116 days)."""


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
    rule: the replica dispatch rule the engine will serve with (:data:`RULES`); spare-slot
    replicas are packed onto GPUs by the load each copy serves under it. lp_batch:
    consecutive tokens the ``lp`` rule balances together.
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
    rule: str = "nearest"
    lp_batch: int = LP_BATCH_TOKENS

    def __post_init__(self) -> None:
        if not isinstance(self.topology, Topology):
            raise InputError(None, "topology", f"expected a Topology, got {type(self.topology).__name__}")
        if self.model is not None and not isinstance(self.model, Model):
            raise InputError(None, "model", f"expected a Model or None, got {type(self.model).__name__}")
        self.constraints()  # validates balance, max_nodes and max_nodes_coverage
        if self.slots_per_gpu not in (None, "memory"):
            check_count(self.slots_per_gpu, "slots_per_gpu", 1, MAX_EXPERTS)
        check_real(self.memory_reserve, "memory_reserve", 0.0, 1.0)
        object.__setattr__(self, "exclude_gpus", tuple(self.exclude_gpus))
        check_choice(self.rule, "rule", RULES)
        check_count(self.lp_batch, "lp_batch", 1, MAX_LP_BATCH)
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
    alpha: weight of the busiest node's traffic (NIC balance) against the cut, for
    :data:`NIC_WEIGHED` solvers (None: per node count; ``auto``: 1, and its choice among
    candidates weighs the busiest NIC by alpha / 2, so 0 chooses the fewest inter-node
    copies). workers: processes solving layers. mapper: runs the per-layer solves,
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
        check_real(self.time_limit, "time_limit", 0.0, MAX_TIME_LIMIT, low_open=True)
        check_count(self.seed, "seed", 0, MAX_SEED)
        if self.alpha is not None:
            if self.solver not in NIC_WEIGHED:
                raise InputError(None, "alpha", f"{self.solver!r} does not weigh the busiest node's traffic; "
                                 f"alpha applies to {', '.join(NIC_WEIGHED)}")
            check_real(self.alpha, "alpha", 0.0, 1e6)
            object.__setattr__(self, "alpha", float(self.alpha))
        check_count(self.workers, "workers", 1, MAX_WORKERS)
        if self.on_interrupt not in ON_INTERRUPT:
            raise InputError(None, "on_interrupt", f"expected 'raise' or 'best', got {self.on_interrupt!r}")
        if self.max_nets not in (None, "auto"):
            check_count(self.max_nets, "max_nets", 0)
        object.__setattr__(self, "time_limit", float(self.time_limit))
