"""placer: topology-aware expert placement for Mixture-of-Experts models.

Data flows one way: trace -> graph -> solver -> placement -> replay/report.
"""

from placer.errors import InfeasibleError, InputError
from placer.evaluation.replay import ReplayReport, evaluate
from placer.formats.importers import ExpertCounts, load_routing
from placer.formats.placement_io import read_placement, write_placement
from placer.instances import load_model, load_topology
from placer.placement import Placement, baseline, from_expert_gpu
from placer.solvers import SolveReport, place
from placer.studies.sweep import SweepResult, run_sweep
from placer.topology import Model, Topology
from placer.trace import Trace, TraceSource, load_trace, save_trace

__all__ = [
    "ExpertCounts",
    "InfeasibleError",
    "InputError",
    "Model",
    "Placement",
    "ReplayReport",
    "SolveReport",
    "SweepResult",
    "Topology",
    "Trace",
    "TraceSource",
    "baseline",
    "evaluate",
    "from_expert_gpu",
    "load_model",
    "load_routing",
    "load_topology",
    "load_trace",
    "place",
    "read_placement",
    "run_sweep",
    "save_trace",
    "write_placement",
]
__version__ = "0.1.0"
