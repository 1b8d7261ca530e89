"""``auto``: choose, per layer, the candidate placement that does best on tokens it was not
solved on (a validation split of the training window).

Short training windows (an online window holds a few thousand tokens) make a long search
fit noise: a placement tuned to the window's rare top-k sets loses on the next window.
``auto`` therefore

1. splits the layer's tokens deterministically: each distinct top-k set's count is thinned
   binomially (a hash of its position, the layer and the seed), :data:`VALIDATION_SHARE` of
   the tokens to a validation problem, the rest to a fit problem (exactly a random token
   split, since tokens with the same set are interchangeable);
2. solves the fit problem with every candidate in :data:`CANDIDATES`: the deep search of
   ``ilp`` (half the layer budget) and ``spectral`` (both at ``alpha`` :data:`AUTO_ALPHA`
   unless given), the contiguous placement, the node stage's search at each NIC weight
   of :data:`LADDER` from the spectral start and, when Mt-KaHyPar is installed, from its
   km1 partition (deterministic preset, :data:`placer.solvers.mtk.START_PRESET`, on a
   sample of at most :data:`MTK_START_PINS` pins, fewer on a short budget), and the capped
   searches: from the lowest-cut of those searches at NIC weight 0, the peak node
   touch held under each of :data:`CAPS` x its own (a soft cap, :data:`CAP_ALPHA`);
3. ranks them on the validation problem (:func:`ranking`): held-out cut (inter-node copies)
   relative to the lowest, plus :data:`NIC_WEIGHT` x the peak node touch (the busiest NIC)
   relative to the lowest-cut candidate's, credited down to :data:`NIC_TARGET` of it: NIC
   balance is bought with cut only down to 20% below a cut-only partition's busiest NIC,
   not to the last token, and with at most :data:`CUT_SLACK` more cut than the lowest
   (candidates beyond it rank last); ties by GPU peak, cut, then the candidate order. A
   given ``alpha`` scales the NIC weight (:func:`nic_weight`; 0: the lowest cut wins, among
   the candidates whose searches weigh no NIC);
4. solves the whole window with the chosen candidate's method (starting, where it starts from
   Mt-KaHyPar's partition, from the fit split's when that was cut from at most
   :data:`START_REUSE_SHARE` of the pins) and returns it when it ranks
   no worse on the validation split than the chosen candidate, else the chosen candidate
   itself: so ``auto`` never ranks worse on its validation split than any candidate it
   could have returned.

Layers with hard limits (balance, max_nodes, kept groups, excluded GPUs) or one node are
solved as ``ilp`` solves them: those limits are defined on every token of the window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from placer.solvers import mtk
from placer.solvers.gpu_stage import gpu_stage
from placer.solvers.node_stage import search_from, trivial_bound
from placer.solvers.options import LayerResult, Options, Placed, search_problem
from placer.solvers.problem import LayerProblem, net_spans, sample_nets
from placer.solvers.spectral import spectral_parts

__all__ = ["AUTO_ALPHA", "CANDIDATES", "CAPS", "CAP_ALPHA", "CUT_SLACK", "LADDER", "MTK_MIN_LEVELS", "MTK_PIN_COST",
           "MTK_START_PINS", "NIC_TARGET", "NIC_WEIGHT", "START_REUSE_SHARE", "VALIDATION_SHARE", "Candidate",
           "auto_layer", "auto_options", "candidate_placements", "candidates", "measured", "mtk_pin_cost",
           "mtk_start_pins", "nic_weight", "ranking", "reference_of", "split_problem", "validated", "validation_score"]

#: share of each layer's tokens held out to choose among the candidates
VALIDATION_SHARE = 0.25

#: NIC-balance weight of ``auto``'s deep search when ``alpha`` is not given
AUTO_ALPHA = 1.0

#: NIC-balance weights of the refined starts (a ladder from pure cut to auto's weight)
LADDER = (0.0, 0.1, 0.3, AUTO_ALPHA)

#: the busiest NIC below which ``auto`` gives no further credit, relative to the lowest-cut
#: candidate's on the validation split (a cut-only partition's)
NIC_TARGET = 0.8

#: weight of the peak node touch relative to the cut in the validation rank, down to
#: :data:`NIC_TARGET` (1% more inter-node copies = 2% less on the busiest NIC)
NIC_WEIGHT = 0.5

#: NIC balance is bought with at most this share more inter-node copies than the lowest-cut
#: candidate's on the validation split (candidates above it rank after every one within it)
CUT_SLACK = 0.03

#: Mt-KaHyPar's start is partitioned on a sample of the search's nets holding at most about
#: this many pins (its time grows with the pins: about 16 s a layer unsampled at DeepSeek-V3
#: shape), fewer when the budget is short (:func:`mtk_start_pins`)
MTK_START_PINS = 40_000

#: estimated seconds per pin of Mt-KaHyPar's start per doubling of the parts
#: (DETERMINISTIC_QUALITY, one thread: measured 8-10 us x log2(parts) on samples of about
#: 20,000 pins at 64-256 experts and 2-64 parts; :func:`mtk_pin_cost`)
MTK_PIN_COST = 1e-5

#: the fewest doublings :func:`mtk_pin_cost` charges (a call's fixed work weighs more on
#: few parts and small samples: 20-25 us a pin at 4 parts)
MTK_MIN_LEVELS = 2.5

#: the whole-window re-solve starts from the fit split's Mt-KaHyPar partition when that start
#: was partitioned on at most this share of its search problem's pins: a start from so small
#: a sample is no better from the whole window, and partitioning again costs as much again
START_REUSE_SHARE = 0.1

#: NIC caps of the capped candidates: the peak node touch of the lowest-cut search x each
CAPS = (0.97, 0.93, 0.9, 0.85)

#: weight of the peak node touch above the cap in the capped searches
CAP_ALPHA = 2.0


class Candidate(NamedTuple):
    """How ``auto`` solves one candidate.

    kind: "ilp" / "spectral" run the pipeline; "contiguous"; "refine-spectral" /
    "refine-mtkahypar": the node stage's search from the spectral start / Mt-KaHyPar's km1
    partition (only when installed); "capped": the node stage's search from the lowest-cut
    refined start (alpha 0) with the peak node touch capped at ``cap`` x that start's (a soft
    cap of weight :data:`CAP_ALPHA`); each then the GPU stage. alpha: NIC-balance weight
    (None: auto's); share: of the layer budget.
    """

    kind: str
    alpha: float | None
    share: float
    cap: float = 0.0


CANDIDATES = {
    "search": Candidate("ilp", None, 0.5), "spectral": Candidate("spectral", None, 1.0),
    "contiguous": Candidate("contiguous", None, 0.0),
    **{f"spectral@{a:g}": Candidate("refine-spectral", a, 0.125) for a in LADDER},
    **{f"mtkahypar@{a:g}": Candidate("refine-mtkahypar", a, 0.125) for a in LADDER},
    **{f"capped@{c:g}": Candidate("capped", CAP_ALPHA, 0.125, c) for c in CAPS},
}

PlaceFn = Callable[[LayerProblem, Options], Placed]


def split_problem(problem: LayerProblem, share: float, seed: int) -> tuple[LayerProblem, LayerProblem]:
    """(fit, validation) problems: each net's weight w is split into Binomial(w, share)
    validation tokens and the rest (drawn from ``seed`` and the layer); nets left with no
    token are dropped; loads follow the nets (the part of the loads outside the nets, when
    the summary dropped sets, is split in the same proportion)."""
    rng = np.random.default_rng([int(seed), int(problem.layer), 0x5EED])
    held = rng.binomial(problem.weights.astype(np.int64), share)
    outside = problem.loads - _net_loads(problem.nets, problem.weights, problem.num_experts)
    return _with_weights(problem, problem.weights - held, outside), _with_weights(problem, held, outside)


def _with_weights(problem: LayerProblem, weights: np.ndarray, outside: np.ndarray) -> LayerProblem:
    """``problem`` with net weights ``weights`` [nets]; ``outside`` [experts]: the loads of the
    sets the summary dropped, scaled by the share of tokens kept."""
    keep = weights > 0
    nets, w = problem.nets[keep], weights[keep].astype(np.int64)
    total = problem.weights.sum()
    share = float(w.sum() / total) if total else 0.0
    loads = _net_loads(nets, w, problem.num_experts) + np.rint(outside * share).astype(np.int64)
    return replace(problem, nets=nets, weights=w, loads=loads,
                   num_tokens=round(problem.num_tokens * share))


def _net_loads(nets: np.ndarray, weights: np.ndarray, experts: int) -> np.ndarray:
    """Pairs per expert of weighted nets [n, k] (-1 padding): [experts] int64 (one bincount
    per set position)."""
    w = weights.astype(np.float64)
    loads = np.zeros(experts + 1)
    for column in nets.T:
        loads += np.bincount(column + 1, weights=w, minlength=experts + 1)
    return loads[1:].astype(np.int64)


def validation_score(problem: LayerProblem, expert_gpu: np.ndarray) -> tuple[float, float, float]:
    """(cut, peak node touch, GPU peak load) of ``expert_gpu`` [experts] on ``problem``."""
    cut, peak, _ = _node_score(problem, expert_gpu // problem.gpus_per_node)
    gpu_load = np.bincount(expert_gpu, weights=problem.loads, minlength=problem.num_gpus)
    return cut, peak, float(gpu_load.max())


def _from_nodes(problem: LayerProblem, opts: Options, candidate: Candidate, starts: dict
                ) -> tuple[np.ndarray, tuple[str, ...]]:
    """GPU of every expert [experts] and messages: the contiguous placement, or a node-stage
    search (see :class:`Candidate`; on the sampled problem for large layers), then the GPU
    stage. ``starts`` caches, per problem, the (sampled) search problems by budget, the
    starting partitions and the searches from them."""
    if candidate.kind == "contiguous":
        node = np.repeat(np.arange(problem.num_nodes), problem.node_counts())
        expert_gpu, messages = gpu_stage(problem, node, replace(opts, solver="spectral"))
        return expert_gpu, tuple(messages)
    if ("search", opts.layer_budget) not in starts:
        starts["search", opts.layer_budget] = search_problem(problem, opts)[0]
    search = starts["search", opts.layer_budget]
    if candidate.kind == "capped":
        peak, start = _lowest_cut_start(search, opts, starts)
        node = search_from(search, opts, start, candidate.cap * peak)
    else:
        node = _searched(search, opts, candidate.kind, opts.alpha, starts)
    expert_gpu, messages = gpu_stage(problem, node, opts, search)
    return expert_gpu, tuple(messages)


def _lowest_cut_start(search: LayerProblem, opts: Options, starts: dict) -> tuple[float, np.ndarray]:
    """(peak node touch, node of every expert [experts]) of the lowest-cut search at NIC
    weight 0 among the starts (cached in ``starts``)."""
    if "capped" not in starts:
        _, peak, node = min((_node_score(search, _searched(search, opts, kind, 0.0, starts))
                             for kind in _start_kinds()), key=lambda scored: scored[0])
        starts["capped"] = peak, node
    return starts["capped"]


def _node_score(problem: LayerProblem, node: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(cut, peak node touch, node) of a node per expert [experts] on ``problem``."""
    lam, touch = net_spans(problem.nets, problem.weights, node, problem.num_nodes)
    return float(problem.weights @ lam), float(touch.max()), node


def _start_kinds() -> tuple[str, ...]:
    return ("refine-spectral", "refine-mtkahypar") if mtk.installed() else ("refine-spectral",)


def _searched(search: LayerProblem, opts: Options, kind: str, alpha: float, starts: dict) -> np.ndarray:
    """Node of every expert [experts]: the node stage's search at ``alpha`` from the start of
    ``kind`` (cached in ``starts`` by start and alpha)."""
    if kind not in starts and kind == "refine-mtkahypar":
        pins = mtk_start_pins(opts.layer_budget, search.num_nodes)
        sample, _ = sample_nets(search, max(1, pins // search.nets.shape[1]), opts.seed)
        starts[kind] = mtk.km1_parts(sample.nets, sample.weights, search.num_experts, search.num_nodes,
                                     mtk.START_PRESET, opts.seed)
        starts[kind, "pin share"] = float((sample.nets >= 0).sum() / max(1, (search.nets >= 0).sum()))
    elif kind not in starts:
        starts[kind] = spectral_parts(search.nets, search.weights, search.num_experts, search.node_counts(),
                                      search.allowed, seed=opts.seed)
    if (kind, alpha) not in starts:
        starts[kind, alpha] = search_from(search, replace(opts, alpha=alpha), starts[kind])
    return starts[kind, alpha]


def mtk_start_pins(budget: float, parts: int) -> int:
    """Pins of Mt-KaHyPar's start into ``parts`` for a candidate of ``budget`` effort units:
    at most :data:`MTK_START_PINS`, and no more than fit twice that budget (the start serves
    the eight candidates that begin from it, a quarter of the layer budget)."""
    return int(min(MTK_START_PINS, 2 * budget / mtk_pin_cost(parts)))


def mtk_pin_cost(parts: int) -> float:
    """Estimated seconds per pin of Mt-KaHyPar's start into ``parts`` parts:
    :data:`MTK_PIN_COST` x log2(parts), at least :data:`MTK_MIN_LEVELS` doublings."""
    return MTK_PIN_COST * max(MTK_MIN_LEVELS, float(np.log2(max(parts, 1))))


def measured(problem: LayerProblem, expert_gpu: np.ndarray, messages: tuple[str, ...] = ()) -> LayerResult:
    """A LayerResult of ``expert_gpu`` [experts] measured on ``problem`` (trivial bound, status
    feasible)."""
    return LayerResult.measure(problem, expert_gpu, trivial_bound(problem), "feasible", messages)


def _candidate(name: str, problem: LayerProblem, opts: Options, place: PlaceFn, starts: dict | None = None
               ) -> LayerResult:
    """Candidate ``name`` solved on ``problem`` and measured; ``starts`` caches the refined
    candidates' starting partitions and searches across calls on the same problem."""
    candidate, sub = _plan(name, opts)
    if candidate.kind in ("ilp", "spectral"):
        return LayerResult.measure(problem, *place(problem, sub))
    return measured(problem, *_from_nodes(problem, sub, candidate, {} if starts is None else starts))


def _candidate_gpu(name: str, problem: LayerProblem, opts: Options, place: PlaceFn, starts: dict) -> np.ndarray:
    """GPU of every expert [experts] of candidate ``name`` solved on ``problem`` (as
    :func:`_candidate`, without measuring it)."""
    candidate, sub = _plan(name, opts)
    if candidate.kind in ("ilp", "spectral"):
        return place(problem, sub).expert_gpu
    return _from_nodes(problem, sub, candidate, starts)[0]


def _plan(name: str, opts: Options) -> tuple[Candidate, Options]:
    """Candidate ``name`` and ``opts`` as it is solved with: its solver, NIC weight and share of
    the budget."""
    candidate = CANDIDATES[name]
    return candidate, replace(opts, solver=candidate.kind if candidate.kind in ("ilp", "spectral") else "ilp",
                              alpha=opts.alpha if candidate.alpha is None else candidate.alpha,
                              layer_budget=opts.layer_budget * candidate.share)


def auto_options(opts: Options) -> Options:
    """``opts`` as ``auto`` solves its candidates: NIC weight :data:`AUTO_ALPHA` unless given,
    GPUs packed by load alone (no spread search)."""
    return replace(opts, alpha=AUTO_ALPHA if opts.alpha is None else opts.alpha, spread_search=False)


def candidate_placements(problem: LayerProblem, opts: Options, place: PlaceFn, starts: dict | None = None
                         ) -> dict[str, np.ndarray]:
    """Every candidate of :func:`candidates` solved on ``problem`` with ``opts`` (as
    :func:`auto_options` gives them): name -> GPU of every expert [experts]. ``starts``: the
    cache of their starting partitions and searches (filled in)."""
    starts = {} if starts is None else starts
    return {name: _candidate_gpu(name, problem, opts, place, starts) for name in candidates(opts.alpha)}


def _reused_starts(fit_starts: dict) -> dict:
    """The starting partitions the whole-window re-solve takes from the fit split's cache
    ``fit_starts``: Mt-KaHyPar's, when it saw at most :data:`START_REUSE_SHARE` of the pins."""
    kind = "refine-mtkahypar"
    if fit_starts.get((kind, "pin share"), 1.0) <= START_REUSE_SHARE:
        return {kind: fit_starts[kind]}
    return {}


def candidates(alpha: float | None = None) -> list[str]:
    """The candidates ``auto`` compares at NIC-balance weight ``alpha``: the Mt-KaHyPar starts
    only when it is installed; with ``alpha`` 0 only the searches that weigh no NIC (a
    candidate that trades cut for NIC balance could only win the cut-only rank by chance)."""
    return [name for name, c in CANDIDATES.items()
            if (c.kind != "refine-mtkahypar" or mtk.installed()) and (alpha != 0 or not c.alpha)]


def nic_weight(alpha: float) -> float:
    """Weight of the busiest NIC in the validation rank for NIC-balance weight ``alpha``:
    :data:`NIC_WEIGHT` at :data:`AUTO_ALPHA`, in proportion to it (0: cut only)."""
    return NIC_WEIGHT * alpha / AUTO_ALPHA


def ranking(scores: dict[str, tuple[float, float, float]], reference: tuple[float, float] | None = None,
            weight: float = NIC_WEIGHT) -> dict[str, tuple[bool, float, float, float]]:
    """Validation rank keys (lower is better) of (cut, peak node touch, GPU peak) scores: first
    whether the cut exceeds (1 + :data:`CUT_SLACK`) x the lowest, then
    ``cut / lowest cut + weight x max(peak / reference peak, NIC_TARGET)``, then GPU peak,
    then cut. reference: the (lowest cut, reference peak) to divide by (default:
    :func:`reference_of` ``scores``); weight: of the busiest NIC (:func:`nic_weight`)."""
    cut0, peak0 = reference or reference_of(scores)
    return {name: (cut > (1 + CUT_SLACK) * cut0,
                   cut / max(cut0, 1e-9) + weight * max(peak / max(peak0, 1e-9), NIC_TARGET), gpu, cut)
            for name, (cut, peak, gpu) in scores.items()}


def reference_of(scores: dict[str, tuple[float, float, float]]) -> tuple[float, float]:
    """(lowest cut, peak node touch of the lowest-cut score) of validation scores."""
    cut, peak, _ = min(scores.values(), key=lambda score: (score[0], score[1]))
    return cut, peak


def validated(problem: LayerProblem) -> bool:
    """Whether ``auto`` chooses by validation on this layer (no hard limit, no excluded GPU,
    more than one node)."""
    c = problem.constraints
    return (problem.num_nodes > 1 and problem.live is None and c.balance is None and c.max_nodes is None
            and c.groups is None and problem.allowed is None)


def auto_layer(problem: LayerProblem, opts: Options, place: PlaceFn) -> LayerResult:
    """``auto`` on one layer (see the module docstring); ``place`` places a layer with one
    solver (:func:`placer.solvers.pipeline.place_layer`), run with each candidate's options."""
    if not validated(problem):
        return LayerResult.measure(problem, *place(problem, replace(opts, solver="ilp")))
    opts = auto_options(opts)
    fit, valid = split_problem(problem, VALIDATION_SHARE, opts.seed)
    fit_starts: dict = {}
    placed = candidate_placements(fit, opts, place, fit_starts)
    scores = {name: validation_score(valid, expert_gpu) for name, expert_gpu in placed.items()}
    weight = nic_weight(opts.alpha)
    keys = ranking(scores, weight=weight)
    chosen = min(keys, key=keys.__getitem__)
    final = _candidate(chosen, problem, opts, place, _reused_starts(fit_starts))
    note = (f"layer {problem.layer}: auto chose {chosen} on a {VALIDATION_SHARE:.0%} validation split "
            f"(held-out cut {scores[chosen][0]:.0f}, peak node touch {scores[chosen][1]:.0f})")
    if ranking({"": validation_score(valid, final.expert_gpu)}, reference_of(scores), weight)[""] <= keys[chosen]:
        return replace(final, messages=(*final.messages, note))
    return measured(problem, placed[chosen], (note + "; kept as solved on the fit split",))
