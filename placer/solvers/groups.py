"""Kept expert groups split a layer into independent blocks.

With ``keep_groups`` every expert may only use the nodes of its group's node
set, and the sets of different groups are disjoint. A token of net ``j`` then
spans ``lambda_j = sum_b lambda_j^b`` nodes, ``lambda_j^b`` being the nodes of
block ``b`` holding the net's experts of that block, and a node's touch only
counts the block's own experts. So the cut and the node touches decompose: each
block (a node set and the experts allowed there) is a smaller problem on the
nets projected onto its experts, where identical projections merge (a group of
32 experts sees about 10k distinct projections of 400k distinct top-8 sets).
Solving the blocks on their own is exact for the cut and far cheaper than the
whole layer, so the search needs no net sampling.

Not used with ``max_nodes`` (a token's node count adds over blocks) or when a
block cannot meet the balance cap on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from placer.constraints import Constraints
from placer.solvers.cpsat import merge_projected_array
from placer.solvers.problem import LayerProblem

#: blocks of at most this many experts project nets as 64-bit masks (else a lexicographic merge)
MASK_BITS = 64


@dataclass(frozen=True)
class Block:
    """One node set of a kept-groups layer.

    experts: [m] global ids of the experts allowed there (ascending); nodes: [b] node ids;
    problem: the block's own layer problem (local expert ids 0..m-1, nodes 0..b-1, nets
    projected onto its experts, merged; the fewest slots per GPU holding its experts once,
    as the layer's one-copy stage: replicas fill the rest later).
    """

    experts: np.ndarray
    nodes: np.ndarray
    problem: LayerProblem


def _mask_projections(nets: np.ndarray, weights: np.ndarray, block_of: np.ndarray, local: np.ndarray,
                      count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Merged projections of every net onto each of ``count`` blocks of <= 64 experts.

    nets: [n, k] (-1 padding); block_of / local: [experts] block and local id of each
    expert. Returns per block (sets [s, kb] ascending local ids, -1 padding; weights [s]).
    """
    n, k = nets.shape
    keys = np.zeros((n, count), dtype=np.uint64)
    rows = np.arange(n)
    for i in range(k):
        ids = nets[:, i]
        ok = ids >= 0
        keys[rows[ok], block_of[ids[ok]]] += np.uint64(1) << local[ids[ok]].astype(np.uint64)
    out = []
    bits = np.arange(MASK_BITS, dtype=np.uint64)
    for b in range(count):
        column = keys[:, b]
        hit = column > 0
        masks, inverse = np.unique(column[hit], return_inverse=True)
        w = np.bincount(inverse, weights=weights[hit], minlength=len(masks)).astype(np.int64)
        member = ((masks[:, None] >> bits[None, :]) & np.uint64(1)).astype(bool)
        size = member.sum(axis=1)
        width = max(1, int(size.max(initial=0)))
        order = np.argsort(~member, axis=1, kind="stable")[:, :width]
        out.append((np.where(np.arange(width)[None, :] < size[:, None], order, -1), w))
    return out


def _block_constraints(problem: LayerProblem, experts: np.ndarray, gpus: int) -> Constraints | None:
    """The block's constraints: the layer's balance cap as a share of the block's own mean
    GPU load (None when the block cannot meet the cap even at perfect balance)."""
    cap = problem.gpu_load_cap()
    if cap is None:
        return Constraints()
    mean = float(problem.loads[experts].sum()) / gpus
    if mean <= 0:
        return Constraints()
    eps = cap / mean - 1.0
    return Constraints(balance=eps) if eps >= 0 else None


def split_blocks(problem: LayerProblem) -> list[Block] | None:
    """The independent blocks of a kept-groups layer (None when it does not decompose: no
    groups, a ``max_nodes`` limit, or a block that cannot meet the balance cap on its own)."""
    if problem.allowed is None or problem.constraints.max_nodes is not None:
        return None
    node_sets, block_of = np.unique(problem.allowed, axis=0, return_inverse=True)
    block_of = block_of.ravel()
    if (node_sets.sum(axis=0) > 1).any():
        return None  # node sets overlap
    members = [np.flatnonzero(block_of == b) for b in range(len(node_sets))]
    local = np.empty(problem.num_experts, dtype=np.int64)
    for experts in members:
        local[experts] = np.arange(len(experts))
    if max(len(m) for m in members) <= MASK_BITS:
        projected = _mask_projections(problem.nets, problem.weights, block_of, local, len(members))
    else:
        projected = [merge_projected_array(problem.nets, problem.weights, experts) for experts in members]
    live = None if problem.live is None else problem.live.reshape(problem.num_nodes, problem.gpus_per_node)
    blocks = []
    for experts, nodes_mask, (sets, w) in zip(members, node_sets, projected):
        nodes = np.flatnonzero(nodes_mask)
        sub_live = None if live is None else live[nodes].ravel()
        gpus = len(nodes) * problem.gpus_per_node if sub_live is None else int(sub_live.sum())
        constraints = _block_constraints(problem, experts, gpus)
        if constraints is None:
            return None
        sub = LayerProblem(
            len(experts), len(nodes), problem.gpus_per_node, -(-len(experts) // gpus),
            sets.astype(np.int32), w, problem.loads[experts], problem.num_tokens, constraints,
            None, problem.layer, sub_live,
        )
        blocks.append(Block(experts, nodes, sub))
    return blocks


#: a node stage: (problem, share of the layer budget) -> (node of each expert, bound, status, messages)
NodeStage = Callable[[LayerProblem, float], tuple[np.ndarray, float, str, list[str]]]


def solve_blocks(problem: LayerProblem, blocks: list[Block], stage: NodeStage
                 ) -> tuple[np.ndarray, float, str, list[str]]:
    """Node of every expert [experts] from each block solved on its own, the summed bound
    (the cut adds over blocks), "optimal" when every block is, and the messages.

    The layer budget is shared by the blocks of more than one node (a single node is fixed)."""
    searched = sum(len(b.nodes) > 1 for b in blocks)
    node = np.empty(problem.num_experts, dtype=np.int64)
    bound, optimal, messages = 0.0, True, []
    for block in blocks:
        part, sub_bound, status, sub_messages = stage(block.problem, 1.0 / max(1, searched))
        node[block.experts] = block.nodes[part]
        bound += sub_bound
        optimal = optimal and status == "optimal"
        messages.extend(sub_messages)
    return node, bound, "optimal" if optimal else "feasible", messages
