"""Placement solvers: per-layer problems, spectral start, exact local search, CP-SAT.

Modules, from the entry point down: :mod:`api` (``solve``: summarise, solve every
layer, add replicas), :mod:`pipeline` (one layer: :mod:`node_stage` then
:mod:`gpu_stage`), :mod:`options` (settings, results, effort budgets),
:mod:`problem` (a layer's problem), :mod:`spectral`, :mod:`refine` (local search),
:mod:`cpsat`, :mod:`groups` (kept expert groups), :mod:`replicas` and
:mod:`eplb_policy` (DeepSeek's EPLB as a placement).
"""

from placer.solvers.api import SolveReport, solve
from placer.solvers.options import LayerResult
from placer.solvers.pipeline import solve_layer

__all__ = ["LayerResult", "SolveReport", "solve", "solve_layer"]
