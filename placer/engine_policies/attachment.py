"""What the drop-ins consult besides the engine's loads: a proposer, its tolerance, rank agreement.

The engines call a policy as a stateless function (vLLM: a classmethod;
SGLang: a module function), so the co-activation source lives here, one per
process. Every EP rank calls the policy with the same all-reduced loads, so
the load-only answer is the same everywhere; a proposer reads a window that
each rank fills from its own tokens, so with one attached the ranks must
agree on one answer: ``agree`` (for instance :func:`broadcast_from_rank0`)
replaces each rank's placement with rank 0's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from placer.engine_policies.core import Proposer, balance
from placer.engine_policies.inputs import EngineCall, EngineInputError

__all__ = ["Attachment", "attach", "attached", "broadcast_from_rank0", "detach", "serve"]

Agree = Callable[[np.ndarray], np.ndarray]
"""Given this rank's phy2log [layers, replicas], the one all ranks serve (same shape)."""


@dataclass(frozen=True)
class Attachment:
    """The process's co-activation source for the drop-ins (None: load only)."""

    proposer: Proposer | None = None
    peak_tolerance: float = 1.0
    agree: Agree | None = None


_current = Attachment()


def attach(proposer: Proposer | None, *, peak_tolerance: float = 1.02, agree: Agree | None = None) -> Attachment:
    """Make the drop-ins consult ``proposer``; its layers are served within ``peak_tolerance`` x EPLB's GPU peak.

    agree: cross-rank agreement applied to every result (required in a multi-rank
    engine when the proposer reads per-rank data; see the module docstring).
    """
    global _current
    if not (isinstance(peak_tolerance, (int, float)) and np.isfinite(peak_tolerance) and peak_tolerance >= 1.0):
        raise EngineInputError("peak_tolerance", f"expected a finite number >= 1, got {peak_tolerance!r}")
    _current = Attachment(proposer, float(peak_tolerance), agree)
    return _current


def detach() -> None:
    """Back to load only (EPLB plus slot keeping)."""
    global _current
    _current = Attachment()


def attached() -> Attachment:
    """The attachment the next drop-in call will use."""
    return _current


def serve(call: EngineCall) -> np.ndarray:
    """The placement for one checked call under the current attachment: phy2log [layers, replicas] int64.

    A proposer with a ``served(phy2log)`` method is told what will be served.
    """
    current = _current
    phy2log = balance(call, current.proposer, current.peak_tolerance)
    if current.agree is not None:
        phy2log = current.agree(phy2log)
    phy2log = np.ascontiguousarray(phy2log, dtype=np.int64)
    served = getattr(current.proposer, "served", None)
    if served is not None:
        served(phy2log)
    return phy2log


def broadcast_from_rank0(group: object = None, device: str | None = None) -> Agree:
    """An ``agree`` that broadcasts the group's rank-0 placement with torch.distributed.

    group: a process group, or a function returning one, called at the first
    rebalance (process groups do not exist yet when the engines load plugins);
    vLLM: ``get_ep_group().cpu_group`` (gloo, CPU tensors); SGLang: None, the
    default group, with ``device="cuda"`` for NCCL. A no-op when
    torch.distributed is not initialised (one process).
    """

    def agree(phy2log: np.ndarray) -> np.ndarray:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return phy2log
        tensor = torch.from_numpy(np.ascontiguousarray(phy2log)).to(device or "cpu")
        dist.broadcast(tensor, group=group() if callable(group) else group, group_src=0)
        return tensor.cpu().numpy()

    return agree
