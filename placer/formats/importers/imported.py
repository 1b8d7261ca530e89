"""What an importer returns: the routing it read plus what the user should be told."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from placer.formats.importers.counts import ExpertCounts
from placer.trace import Trace

__all__ = ["Imported"]


@dataclass(frozen=True)
class Imported:
    """One import.

    routing: the trace or the counts read. in_service: [num_hidden_layers, physical]
    the placement the engine ran under when it dumped (SGLang's
    ``last_physical_to_logical_map``), or None. notes: what was dropped, merged or
    left unread, one sentence each.
    """

    routing: Trace | ExpertCounts
    in_service: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
