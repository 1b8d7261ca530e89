"""The ``lp`` replica dispatch rule: per batch, split each expert's tokens over its copies to
minimise the busiest GPU (SGLang ``--ep-dispatch-algorithm=lp``, from DeepSeek's LPLB).

Behaviour learned from SGLang (``python/sglang/srt/eplb/expert_location_dispatch.py``,
``_topk_ids_logical_to_physical_probability``, and ``init_lplb_solvers`` in the model runner;
read 2026-12 from the stored sgl-project/sglang snapshot): per forward batch the engine counts
the tokens routed to each logical expert, solves a linear program for the share of each
expert's tokens every physical copy takes, and each (token, expert) pair then picks a copy
with those shares as probabilities, regardless of where the token comes from.

Here, per batch of ``batch_tokens`` consecutive tokens (the rule's one option,
:data:`placer.request.LP_BATCH_TOKENS` by default) and per layer:

    minimise z  s.t.  sum_r x[e, r] = c[e]                   (every pair served)
                      base[g] + sum_{copies r of e on g} x[e, r] <= z   (every GPU)
                      x >= 0

with c[e] the batch's pairs of expert e and base[g] the pairs of single-copy experts on GPU
g (fixed). The min-max alone leaves every GPU below the busiest free to take load up to it,
so the objective adds, with a weight too small to raise z (1 / (2 x GPUs x levels)), the
load of each GPU above each of :data:`LEVELS` x the batch's mean (a convex piecewise-linear
spread penalty): the GPUs below the max are balanced too. Only replicated experts are
variables, so the LP is small (HiGHS via ``scipy.optimize.linprog``). The fractional split is
rounded per expert (largest remainder) and the expert's pairs, in a seeded random order (the
engine samples), are dealt to the copies in those exact quotas: the replayed per-GPU loads
are the LP's up to rounding, and the same inputs give the same routing.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

__all__ = ["lp_quotas", "lp_route"]

#: load levels (x the batch's mean GPU load) whose excess is lightly penalised, so the GPUs
#: below the busiest are balanced too (a min-max LP alone may pile load on any of them up to
#: the max, and batch after batch on the same ones)
LEVELS = np.array([1.0, 1.02, 1.05, 1.1, 1.2, 1.5])


def lp_quotas(counts: np.ndarray, log2phy: np.ndarray, copies: np.ndarray, slot_gpu: np.ndarray,
              num_gpus: int) -> np.ndarray:
    """Pairs each copy serves: [experts, max copies] int64 (0 past an expert's copies).

    counts: [experts] pairs of each expert in the batch; log2phy: [experts, max copies]
    slots of every copy (-1 padded); copies: [experts]; slot_gpu: [slots] GPU of each slot.
    Row sums equal ``counts``; the busiest GPU is the LP optimum rounded per expert.
    """
    quotas = np.zeros(log2phy.shape, dtype=np.int64)
    quotas[:, 0] = np.where(copies == 1, counts, 0)
    base = np.bincount(slot_gpu[log2phy[copies == 1, 0]], weights=counts[copies == 1], minlength=num_gpus)
    multi = np.flatnonzero((copies > 1) & (counts > 0))
    if not len(multi):
        return quotas
    rows, cols = np.nonzero(np.arange(log2phy.shape[1])[None, :] < copies[multi, None])
    n = len(rows)
    on_gpu = sp.csr_matrix((np.ones(n), (slot_gpu[log2phy[multi[rows], cols]], np.arange(n))), shape=(num_gpus, n))
    used = np.unique(slot_gpu[log2phy[log2phy >= 0]])
    levels = counts.sum() / len(used) * LEVELS
    eye = sp.identity(num_gpus, format="csr")
    a_ub = sp.vstack([
        sp.hstack([on_gpu, -np.ones((num_gpus, 1)), sp.csr_matrix((num_gpus, num_gpus * len(LEVELS)))]),
        *[sp.hstack([on_gpu, sp.csr_matrix((num_gpus, 1))]
                    + [-eye if m == level else sp.csr_matrix((num_gpus, num_gpus)) for m in range(len(LEVELS))])
          for level in range(len(LEVELS))],
    ]).tocsr()
    b_ub = np.concatenate([-base, *[value - base for value in levels]])
    a_eq = sp.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(len(multi), a_ub.shape[1]))
    cost = np.zeros(a_ub.shape[1])
    cost[n] = 1.0
    cost[n + 1:] = 1.0 / (2 * num_gpus * len(LEVELS))
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=counts[multi].astype(np.float64),
                     bounds=(0, None), method="highs")
    if result.status != 0:  # pragma: no cover - the LP is always feasible and bounded
        raise RuntimeError(f"lp dispatch: HiGHS failed ({result.message})")
    share = np.zeros((len(multi), log2phy.shape[1]))
    share[rows, cols] = np.maximum(result.x[:n], 0.0)
    quotas[multi] = _round_rows(share, counts[multi])
    return quotas


def _round_rows(share: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Integer rows summing to ``totals`` (floor, then largest remainders; ties to the lower copy)."""
    floor = np.floor(share + 1e-9).astype(np.int64)
    missing = totals - floor.sum(axis=1)
    order = np.argsort(-(share - floor), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(share.shape[1])[None, :].repeat(len(share), axis=0), axis=1)
    return floor + (rank < missing[:, None])


def lp_route(ids: np.ndarray, log2phy: np.ndarray, copies: np.ndarray, slot_gpu: np.ndarray,
             num_gpus: int, seed: int) -> np.ndarray:
    """Slot serving each pair of one batch: ids [tokens, k] (-1 padding) -> [tokens, k] (-1 padding).

    Each expert's pairs, in an order drawn from ``seed``, fill its copies' :func:`lp_quotas`.
    """
    valid = ids >= 0
    experts = ids[valid].astype(np.int64)
    counts = np.bincount(experts, minlength=len(copies))
    quotas = lp_quotas(counts, log2phy, copies, slot_gpu, num_gpus)
    key = np.random.default_rng(seed).random(len(experts))
    order = np.lexsort((key, experts))
    rank = np.empty(len(experts), dtype=np.int64)
    rank[order] = np.arange(len(experts)) - np.repeat(np.cumsum(counts) - counts, counts)
    bounds = np.cumsum(quotas, axis=1)
    copy = (rank[:, None] >= bounds[experts]).sum(axis=1)
    out = np.full(ids.shape, -1, dtype=np.int64)
    out[valid] = log2phy[experts, copy]
    return out
