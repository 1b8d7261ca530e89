"""EPLB re-implementation: the public README example, exactly."""

from __future__ import annotations

import numpy as np

from placer.eplb import balanced_packing, rebalance_experts, replicate_experts

LOADS = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
         [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
EXPECTED = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
            [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def test_readme_example():
    phy2log, log2phy, logcnt = rebalance_experts(np.array(LOADS), 16, 4, 2, 8)
    assert phy2log.tolist() == EXPECTED
    assert logcnt.sum(axis=1).tolist() == [16, 16]
    for layer in range(2):
        for expert in range(12):
            slots = log2phy[layer, expert][log2phy[layer, expert] >= 0]
            assert len(slots) == logcnt[layer, expert]
            assert (phy2log[layer, slots] == expert).all()


def test_global_policy_when_groups_do_not_divide_nodes():
    phy2log, _, logcnt = rebalance_experts(np.array(LOADS), 16, 3, 2, 8)
    assert sorted(set(phy2log[0].tolist())) == list(range(12)) and logcnt[0].sum() == 16


def test_packing_fills_lightest_open_pack_and_ties_go_low():
    pack, rank = balanced_packing(np.array([[5, 5, 5, 5]]), 2)
    assert pack.tolist() == [[0, 1, 0, 1]] and rank.tolist() == [[0, 0, 1, 1]]


def test_replication_goes_to_highest_load_per_copy():
    phy2log, rank, logcnt = replicate_experts(np.array([[10.0, 4.0, 3.0]]), 5)
    assert phy2log.tolist() == [[0, 1, 2, 0, 0]] and logcnt.tolist() == [[3, 1, 1]]
    assert rank.tolist() == [[0, 0, 0, 1, 2]]
