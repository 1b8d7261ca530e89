"""Per-layer solve settings and results, and the deterministic effort budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from placer.solvers.problem import (
    LayerProblem,
    NetSample,
    net_spans,
    sample_nets,
)

#: layers with more distinct top-k sets than this are searched on a weighted sample of them
#: (:func:`placer.solvers.problem.sample_nets`; ``auto``/``ilp`` scale it with the layer budget)
SAMPLE_NETS = 1 << 15


@dataclass(frozen=True)
class Options:
    """Per-layer solve options (picklable)."""

    solver: str = "auto"
    seed: int = 0
    alpha: float | None = None
    kicks: int = 40
    layer_budget: float = 3.0  # deterministic effort units per layer (~seconds on one core)
    spread_search: bool = True  # GPU stage: co-locate co-activated experts within each node's load cap


@dataclass(frozen=True)
class LayerResult:
    """One layer's outcome.

    expert_gpu: [experts] GPU of each expert. objective: train cut sum_j w_j*lambda_j
    (tokens x nodes spanned); bound: proven lower bound on it; status: "optimal" when
    proven, else "feasible". peak_touch: tokens touching the busiest node.
    """

    layer: int
    expert_gpu: np.ndarray
    objective: float
    bound: float
    status: str
    peak_touch: float
    gpu_peak_load: float
    gpu_load_bound: float
    intra_spread: float
    messages: tuple[str, ...] = ()
    sample: NetSample | None = None

    @classmethod
    def measure(cls, problem: LayerProblem, expert_gpu: np.ndarray, bound: float, status: str,
                messages: tuple[str, ...] = (), sample: NetSample | None = None) -> LayerResult:
        """The result of ``expert_gpu`` [experts] with every metric measured on all of
        ``problem``'s sets (cut, busiest node's touch, GPU peak load, spread over GPUs)."""
        lam, touch = net_spans(problem.nets, problem.weights, expert_gpu // problem.gpus_per_node,
                               problem.num_nodes)
        gpus, _ = net_spans(problem.nets, problem.weights, expert_gpu, problem.num_gpus)
        gpu_load = np.bincount(expert_gpu, weights=problem.loads, minlength=problem.num_gpus)
        return cls(problem.layer, expert_gpu, float((problem.weights * lam).sum()), bound, status,
                   float(touch.max()), float(gpu_load.max()), problem.gpu_load_lower_bound(),
                   float((problem.weights * gpus).sum()), tuple(messages), sample)

    @property
    def gap(self) -> float:
        return 0.0 if self.objective <= 0 else max(0.0, (self.objective - self.bound) / self.objective)


class Placed(NamedTuple):
    """A layer's placement before it is measured: expert_gpu [experts], the proven lower
    bound on the cut, status, messages and the net sample searched (None: every net)."""

    expert_gpu: np.ndarray
    bound: float
    status: str
    messages: tuple[str, ...]
    sample: NetSample | None


def search_problem(problem: LayerProblem, opts: Options) -> tuple[LayerProblem, NetSample | None]:
    """The problem the searches run on: the layer itself, or for a layer with more distinct
    sets than the effort allows, a weighted sample of them (:func:`sample_nets`).

    ``spectral`` keeps up to :data:`SAMPLE_NETS` nets; ``auto``/``ilp`` up to SAMPLE_NETS x
    layer budget (clamped to 1..8): at scale a larger sample helps held-out traffic more
    than more kicks. Layers with a hard ``max_nodes`` limit are never sampled (the limit
    must hold on every set). Deterministic (depends on the seed only).
    """
    if problem.constraints.max_nodes is not None:
        return problem, None
    return sample_nets(problem, search_limit(opts.solver, opts.layer_budget), seed=opts.seed)


def search_limit(solver: str, budget: float) -> int:
    """Most nets a layer's search uses (:func:`search_problem`)."""
    return SAMPLE_NETS if solver == "spectral" else int(SAMPLE_NETS * max(1.0, min(8.0, budget)))


#: effort units (about a core-second each) per second of ``time_limit``: two cores at 80%
UNITS_PER_SECOND = 1.6

#: the least effort a layer gets, however short the time limit
MIN_LAYER_BUDGET = 0.2


def layer_budget(time_limit: float, layers: int) -> float:
    """Deterministic effort units per layer for a total ``time_limit``."""
    return max(MIN_LAYER_BUDGET, UNITS_PER_SECOND * time_limit / max(1, layers))
