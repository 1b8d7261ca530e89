"""One layer end to end: node stage, then GPU stage (:func:`solve_layer`, a pure function).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from placer.solvers.gpu_stage import gpu_stage
from placer.solvers.groups import solve_blocks, split_blocks
from placer.solvers.node_stage import node_stage, trivial_bound
from placer.solvers.options import LayerResult, Options, Placed, search_problem
from placer.solvers.problem import LayerProblem
from placer.solvers.spectral import one_blas_thread as _one_blas_thread
from placer.solvers.spectral import spectral_parts
from placer.solvers.validation import auto_layer


def solve_layer(problem: LayerProblem, opts: Options) -> LayerResult:
    """Solve one layer (pure: depends only on its arguments).

    Layers with many distinct sets are searched on a weighted sample of them
    (:func:`search_problem`, recorded in ``LayerResult.sample``); the objective, peak
    touch and spread are always measured on every set of the layer. ``auto`` chooses among
    candidates by a validation split of the layer's tokens (:mod:`validation`).
    """
    if opts.solver == "auto":
        return auto_layer(problem, opts, place_layer)
    return LayerResult.measure(problem, *place_layer(problem, opts))


def place_layer(problem: LayerProblem, opts: Options) -> Placed:
    """One layer placed by the node and GPU stages of ``opts.solver`` (not ``auto``), not
    measured."""
    search, sample = search_problem(problem, opts)
    blocks = split_blocks(problem)
    with _one_blas_thread(sample is not None or blocks is not None):
        if blocks is None:
            node, bound, status, messages = node_stage(problem, opts, search)
        else:
            node, bound, status, messages = solve_blocks(problem, blocks, partial(_block_stage, opts))
    expert_gpu, gpu_messages = gpu_stage(problem, node, opts, search)
    return Placed(expert_gpu, bound, status, tuple(messages + gpu_messages), sample)


def _block_stage(opts: Options, block: LayerProblem, share: float) -> tuple[np.ndarray, float, str, list[str]]:
    """The node stage of one kept-groups block (:mod:`groups`) on ``share`` of the layer budget."""
    sub_opts = replace(opts, layer_budget=opts.layer_budget * share)
    return node_stage(block, sub_opts, search_problem(block, sub_opts)[0])


def interrupted_layer(problem: LayerProblem) -> LayerResult:
    """A quick stand-in for a layer that Ctrl-C left unsolved: the spectral start (no search)
    and longest-first GPU packing, status "interrupted", bound the trivial one."""
    opts = Options(solver="spectral", kicks=0)
    search, sample = search_problem(problem, opts)
    node = spectral_parts(search.nets, search.weights, search.num_experts, search.node_counts(), search.allowed)
    expert_gpu, messages = gpu_stage(problem, node, opts, search)
    return LayerResult.measure(problem, expert_gpu, trivial_bound(problem), "interrupted", tuple(messages), sample)
