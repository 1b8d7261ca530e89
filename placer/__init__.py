"""placer: topology-aware expert placement for Mixture-of-Experts models.

Data flows one way, and each layer imports only from the layers before it
(``tests/test_layers.py`` enforces this order):

1. foundation: ``errors``, ``checks`` (argument checks), ``inputs`` (opening untrusted
   files), ``progress``, ``atomic``, ``bundled``, ``parallel``, ``eplb`` (DeepSeek's algorithm);
2. data: ``topology``, ``instances``, ``trace``, ``placement``, ``constraints``, ``request``;
3. trace -> graph: ``graph``, ``stats``, ``cluster`` (Dask backend), ``formats`` (importers
   and exports), ``migration``, ``dispatch`` (the engines' replica dispatch rules), ``lp_dispatch`` (its LP rule);
4. graph -> placement: ``solvers``, ``online`` (the rebalancer that lives across calls);
5. placement -> judgement: ``evaluation`` (replay, timeline replay, calculator);
6. the workflow shared by every front end: ``workflow``; the engines' policy drop-ins,
   installers and routing hooks: ``engine_policies``;
7. studies and presentation: ``studies`` (synthetic traces, EP sweeps),
   ``presentation`` (tables, figures, reports);
8. the command line: ``cli``.
"""

from placer.constraints import Constraints
from placer.errors import InfeasibleError, InputError
from placer.evaluation.replay import ReplayReport, evaluate
from placer.formats.engines import expert_permutation, to_eplb, to_sglang, to_trtllm
from placer.formats.importers import ExpertCounts, load_routing
from placer.formats.placement_io import read_placement, write_placement
from placer.instances import load_model, load_topology
from placer.migration import minimize_moves, moved_weights
from placer.placement import Placement, baseline, from_expert_gpu
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import SolveReport
from placer.studies.sweep import SweepResult, run_sweep
from placer.topology import Model, Topology
from placer.trace import Trace, TraceSource, load_trace, save_trace
from placer.workflow import PlaceResult, place

__all__ = [
    "Constraints",
    "ExpertCounts",
    "InfeasibleError",
    "InputError",
    "Model",
    "PlaceResult",
    "Placement",
    "PlacementProblem",
    "ReplayReport",
    "SolveReport",
    "SolverSettings",
    "SweepResult",
    "Topology",
    "Trace",
    "TraceSource",
    "baseline",
    "evaluate",
    "expert_permutation",
    "from_expert_gpu",
    "load_model",
    "load_routing",
    "load_topology",
    "load_trace",
    "minimize_moves",
    "moved_weights",
    "place",
    "read_placement",
    "run_sweep",
    "save_trace",
    "to_eplb",
    "to_sglang",
    "to_trtllm",
    "write_placement",
]
__version__ = "0.1.0"
