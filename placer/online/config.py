"""The rebalancer's settings: one frozen dataclass with documented defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from placer.errors import InputError

__all__ = ["RebalanceConfig"]


@dataclass(frozen=True)
class RebalanceConfig:
    """How :class:`placer.online.Rebalancer` remembers routing and how much it may move.

    half_life_tokens: tokens after which an observed token's weight in the window has halved
        (exponential decay, :mod:`placer.online.window`). Default 2048: a drift is half
        followed 2k tokens later; the window's effective size is ~3k tokens (half-life / ln 2).
        Shorter half-lives followed the ESFT task changes better (docs/online.md).
    max_nets: distinct top-k sets kept per layer (priority sampling); bounds the window's
        memory and the warm search's work. Default 4096.
    move_budget: share of all physical slots (layers x GPUs x slots per GPU) whose expert
        copy may change in one rebalance (a hard cap on copies moved). Each layer's
        candidates are taken best extra gain per extra copy moved first while they fit.
        Default 0.8: a cap for safety; on ESFT ``min_gain`` and ``move_penalty`` keep the
        copies moved under half of a fresh re-solve's (benchmarks/bench_online.py).
    min_gain: a layer is re-placed only by a candidate whose predicted relative gain (see
        ``peak_weight``) is at least this; below it the layer moves nothing. Default 0.2:
        layers are re-placed when routing has changed (a phase change), not for noise.
    peak_weight: weight of the predicted GPU-peak drop beside the cut drop in a layer's gain
        (gain = relative cut drop + peak_weight x relative peak drop). Default 0.5.
    move_penalty: cost of one move, as a share of the layer's mean tokens per expert in the
        window: of an expert to another node in the warm node search (a move must save that
        many window tokens of cut) and of a copy loaded onto a GPU in the replica search
        (scaled by the rung). Default 0.15.
    kicks: iterated-local-search kicks of the warm node search per layer. Default 0 (one
        descent per rung of the penalty ladder: kicks gained < 0.5% on ESFT and cost 2-3x time).
    replica_passes: passes of the replica-aware swap search
        (:mod:`placer.solvers.replica_search`) run on every non-frozen rung's layout, each
        swap priced with the rung's migration penalty, on the window's
        :data:`placer.online.rebalancer.SEARCH_NETS` heaviest sets; 0 turns it off. Default 4.
    alpha: weight of the peak node touch (NIC balance) in the node objective; None = the
        node stage's default for the node count.
    seed: seeds the search's kicks (same inputs and seed give the same placement).
    """

    half_life_tokens: float = 2048.0
    max_nets: int = 4096
    move_budget: float = 0.8
    min_gain: float = 0.2
    peak_weight: float = 0.5
    move_penalty: float = 0.15
    kicks: int = 0
    replica_passes: int = 4
    alpha: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "alpha" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(None, f.name, f"expected a finite number, got {value!r}")
        checks = (
            ("half_life_tokens", self.half_life_tokens > 0, "> 0"),
            ("max_nets", isinstance(self.max_nets, int) and self.max_nets >= 1, "an integer >= 1"),
            ("move_budget", 0 <= self.move_budget <= 1, "a share in [0, 1]"),
            ("min_gain", self.min_gain >= 0, ">= 0"),
            ("move_penalty", self.move_penalty >= 0, ">= 0"),
            ("peak_weight", self.peak_weight >= 0, ">= 0"),
            ("kicks", isinstance(self.kicks, int) and self.kicks >= 0, "an integer >= 0"),
            ("replica_passes", isinstance(self.replica_passes, int) and self.replica_passes >= 0,
             "an integer >= 0"),
            ("alpha", self.alpha is None or self.alpha >= 0, ">= 0 or None"),
            ("seed", isinstance(self.seed, int) and self.seed >= 0, "an integer >= 0"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise InputError(None, name, f"expected {expected}, got {getattr(self, name)!r}")
