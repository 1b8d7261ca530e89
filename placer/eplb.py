"""DeepSeek's Expert Parallelism Load Balancer (EPLB), re-implemented in numpy.

The algorithm follows the public description of deepseek-ai/EPLB: the
hierarchical policy packs expert groups onto nodes by load, replicates the
heaviest expert (per copy) inside each node, then packs the replicas onto the
node's GPUs; when groups do not divide by nodes the global policy treats the
whole cluster as one node with one group. Every sort is stable and every tie
goes to the lower index, so results do not depend on a torch version.
"""

from __future__ import annotations

import numpy as np


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack n items into packs of n / num_packs items each, heaviest first into the lightest open pack.

    weight: [layers, n]. Returns pack_index: [layers, n] and rank_in_pack: [layers, n].
    """
    layers, items = weight.shape
    per_pack = items // num_packs
    if per_pack == 1:
        return np.tile(np.arange(items), (layers, 1)), np.zeros((layers, items), dtype=np.int64)
    pack_index = np.empty((layers, items), dtype=np.int64)
    rank_in_pack = np.empty((layers, items), dtype=np.int64)
    for layer in range(layers):
        pack_weight = np.zeros(num_packs)
        pack_count = np.zeros(num_packs, dtype=np.int64)
        for item in np.argsort(-weight[layer], kind="stable"):
            open_weight = np.where(pack_count < per_pack, pack_weight, np.inf)
            pack = int(np.argmin(open_weight))
            pack_index[layer, item] = pack
            rank_in_pack[layer, item] = pack_count[pack]
            pack_weight[pack] += weight[layer, item]
            pack_count[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_physical: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give each extra physical slot to the expert with the highest load per copy.

    weight: [layers, logical]. Returns phy2log: [layers, num_physical],
    replica_rank: [layers, num_physical] (copy number of that expert) and
    logcnt: [layers, logical] copies per expert.
    """
    layers, logical = weight.shape
    rows = np.arange(layers)
    phy2log = np.zeros((layers, num_physical), dtype=np.int64)
    replica_rank = np.zeros((layers, num_physical), dtype=np.int64)
    phy2log[:, :logical] = np.arange(logical)
    logcnt = np.ones((layers, logical), dtype=np.int64)
    for slot in range(logical, num_physical):
        hottest = np.argmax(weight / logcnt, axis=1)
        phy2log[:, slot] = hottest
        replica_rank[:, slot] = logcnt[rows, hottest]
        logcnt[rows, hottest] += 1
    return phy2log, replica_rank, logcnt


def _inverse(permutation: np.ndarray) -> np.ndarray:
    """Row-wise inverse permutation: [layers, n] -> [layers, n]."""
    inverse = np.empty_like(permutation)
    np.put_along_axis(inverse, permutation, np.arange(permutation.shape[1])[None, :], axis=1)
    return inverse


def rebalance_hierarchical(
    weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hierarchical EPLB: groups -> nodes, replicas within nodes, replicas -> GPUs.

    weight: [layers, logical]. Returns phy2log: [layers, num_physical],
    replica_rank: [layers, num_physical], logcnt: [layers, logical].
    """
    layers, logical = weight.shape
    group_size = logical // num_groups
    groups_per_node = num_groups // num_nodes
    per_node = logical // num_nodes
    slots_per_gpu = num_physical // num_gpus

    group_load = weight.reshape(layers, num_groups, group_size).sum(axis=2)
    group_node, group_rank = balanced_packing(group_load, num_nodes)
    group_start = (group_node * groups_per_node + group_rank) * group_size
    log2mlog = (group_start[:, :, None] + np.arange(group_size)).reshape(layers, logical)
    mlog2log = _inverse(log2mlog)

    node_weight = np.take_along_axis(weight, mlog2log, axis=1).reshape(layers * num_nodes, per_node)
    phy2mlog, replica_rank, mlogcnt = replicate_experts(node_weight, num_physical // num_nodes)

    per_copy = np.take_along_axis(node_weight / mlogcnt, phy2mlog, axis=1)
    gpu_index, gpu_rank = balanced_packing(per_copy, num_gpus // num_nodes)
    pphy2phy = _inverse(gpu_index * slots_per_gpu + gpu_rank)

    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1).reshape(layers, num_nodes, -1)
    pphy2mlog = (pphy2mlog + (np.arange(num_nodes) * per_node)[None, :, None]).reshape(layers, -1)
    phy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    rank = np.take_along_axis(replica_rank, pphy2phy, axis=1).reshape(layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(layers, -1), log2mlog, axis=1)
    return phy2log, rank, logcnt


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB entry point: hierarchical when groups divide by nodes, else global.

    weight: [layers, logical] expert loads. Returns phy2log: [layers, num_replicas],
    log2phy: [layers, logical, max copies] (-1 padded) and logcnt: [layers, logical].
    """
    weight = np.asarray(weight, dtype=np.float64)
    if num_groups % num_nodes == 0:
        phy2log, rank, logcnt = rebalance_hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        phy2log, rank, logcnt = rebalance_hierarchical(weight, num_replicas, 1, 1, num_gpus)
    layers, logical = weight.shape
    max_copies = int(logcnt.max())
    log2phy = np.full((layers, logical * max_copies), -1, dtype=np.int64)
    np.put_along_axis(log2phy, phy2log * max_copies + rank, np.tile(np.arange(num_replicas), (layers, 1)), axis=1)
    return phy2log, log2phy.reshape(layers, logical, max_copies), logcnt
