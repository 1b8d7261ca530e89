"""Placement solvers: per-layer problems, spectral init, exact local search, CP-SAT.

Entry point: :func:`place` (see :mod:`placer.solvers.api`).
"""

from placer.solvers.api import SOLVERS, LayerResult, SolveReport, place, solve_layer

__all__ = ["SOLVERS", "LayerResult", "SolveReport", "place", "solve_layer"]
