"""placer.online: the routing window (bound, decay) and the rebalancer (budget, slots kept,
min gain, completeness, load-only mode, determinism, bad input)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from placer.eplb import rebalance_experts
from placer.errors import InputError
from placer.online import (
    RebalanceConfig,
    Rebalancer,
    RoutingWindow,
    contiguous_slots,
    memory_bound,
    slots_per_gpu_for,
)
from placer.online.warm import predicted_peak
from placer.trace import Trace

LAYERS, EXPERTS, K, NODES, GPN, SLOTS = 3, 16, 4, 2, 4, 3  # 8 GPUs x 3 slots = 24 slots, 8 replicas


def clustered(tokens: int, seed: int, shift: int = 0) -> np.ndarray:
    """topk_ids [tokens, LAYERS, K]: each token picks K experts of one of 4 clusters of 4
    (cluster c = experts (4c + shift .. 4c + shift + 3) mod 16), clusters of skewed popularity."""
    rng = np.random.default_rng(seed)
    cluster = rng.choice(4, size=(tokens, LAYERS), p=[0.4, 0.3, 0.2, 0.1])
    base = (4 * cluster[..., None] + shift + np.arange(K)) % EXPERTS
    noise = rng.random((tokens, LAYERS, K)) < 0.15
    other = (base + 4 * rng.integers(1, 4, size=base.shape)) % EXPERTS
    ids = np.where(noise, other, base)
    ids.sort(axis=2)
    dup = np.zeros(ids.shape, dtype=bool)
    dup[..., 1:] = ids[..., 1:] == ids[..., :-1]
    return np.where(dup, -1, ids).astype(np.int16)


def rebalancer(config: RebalanceConfig | None = None, **kwargs) -> Rebalancer:
    return Rebalancer(LAYERS, EXPERTS, NODES, GPN, SLOTS, config, **kwargs)


def complete(phy2log: np.ndarray) -> bool:
    return all(set(range(EXPERTS)) <= set(row.tolist()) for row in phy2log)


# ---------------------------------------------------------------- window


def test_window_memory_stays_within_its_bound_whatever_the_tokens():
    window = RoutingWindow(LAYERS, EXPERTS, K, half_life_tokens=500, max_nets=32, chunk_tokens=256)
    sizes = []
    for seed in range(12):
        window.observe(clustered(700, seed))
        sizes.append(window.nbytes())
    assert window.tokens_seen == 12 * 700
    assert max(sizes) <= memory_bound(LAYERS, EXPERTS, K, 32)
    assert window.peak_nbytes <= memory_bound(LAYERS, EXPERTS, K, 32, 256)
    assert all(len(part.sets) <= 32 for part in window.layers)
    assert sizes[-1] <= sizes[2] * 1.05  # no growth once the cap is reached


def test_window_decays_exponentially_in_tokens():
    window = RoutingWindow(1, 8, 2, half_life_tokens=100)
    window.observe(np.tile([[[0, 1]]], (50, 1, 1)))
    window.observe(np.tile([[[2, 3]]], (100, 1, 1)))
    loads = window.loads()[0]
    assert loads[0] == pytest.approx(50 * 0.5) and loads[2] == pytest.approx(100)
    assert window.weight == pytest.approx(50 * 0.5 + 100)
    summary = window.summary()  # integer units of 1/16 token
    assert summary.loads[0, 0] == 25 * 16


def test_window_folds_batches_of_any_size_alike_without_decay():
    ids = clustered(900, 1)
    one = RoutingWindow(LAYERS, EXPERTS, K, half_life_tokens=1e15)
    one.observe(ids)
    many = RoutingWindow(LAYERS, EXPERTS, K, half_life_tokens=1e15, chunk_tokens=5)
    for lo in range(0, 900, 7):
        many.observe(ids[lo:lo + 7])
    np.testing.assert_allclose(one.loads(), many.loads())
    exact = np.stack([np.bincount(ids[:, layer][ids[:, layer] >= 0], minlength=EXPERTS) for layer in range(LAYERS)])
    np.testing.assert_allclose(one.loads(), exact)


# ---------------------------------------------------------------- rebalancer


@pytest.fixture(scope="module")
def observed():
    """(rebalancer with routing observed, first result) at the default config; the clusters
    straddle contiguous's nodes, so there is a real gain to take."""
    r = rebalancer()
    r.observe(clustered(3000, 0, shift=2))
    return r, r.rebalance()


def test_rebalance_is_deterministic_and_keeps_every_expert(observed):
    r, first = observed
    again = rebalancer()
    again.observe(clustered(3000, 0, shift=2))
    assert np.array_equal(again.rebalance().placement.phy2log, first.placement.phy2log)
    assert first.mode == "routing" and complete(first.placement.phy2log)
    assert r.placement is first.placement


def test_rebalance_lowers_the_window_cut_from_contiguous(observed):
    r, first = observed
    assert first.changed_layers and first.gain[list(first.changed_layers)].min() >= r.config.min_gain


@pytest.mark.parametrize("budget", [0.0, 0.05, 0.2])
def test_move_budget_is_respected(budget):
    r = rebalancer(RebalanceConfig(move_budget=budget))
    r.observe(clustered(3000, 0))
    result = r.rebalance()
    assert result.budget == int(budget * LAYERS * NODES * GPN * SLOTS)
    assert result.experts_moved <= result.budget
    if budget == 0.0:
        assert not result.changed_layers and result.experts_moved == 0


def test_unmoved_experts_keep_their_slots():
    r = rebalancer(RebalanceConfig(move_budget=1.0, min_gain=0.0))
    r.observe(clustered(2000, 0))
    before = r.rebalance().placement.phy2log
    r.observe(clustered(2000, 1, shift=2))  # drift: the clusters move
    after = r.rebalance().placement.phy2log
    assert not np.array_equal(before, after)
    for old, new in zip(before, after):
        for gpu in range(NODES * GPN):
            span = slice(gpu * SLOTS, (gpu + 1) * SLOTS)
            for slot, expert in enumerate(old[span]):
                if expert >= 0 and expert in new[span]:
                    assert new[span][slot] == expert


def test_min_gain_above_any_gain_moves_nothing():
    r = rebalancer(RebalanceConfig(min_gain=10.0))
    r.observe(clustered(2000, 0))
    start = r.placement.phy2log.copy()
    result = r.rebalance()
    assert result.experts_moved == 0 and np.array_equal(result.placement.phy2log, start)


def test_no_expert_is_ever_dropped_over_many_rebalances():
    r = rebalancer(RebalanceConfig(move_budget=1.0, min_gain=0.0))
    rng = np.random.default_rng(3)
    for step in range(4):
        r.observe(clustered(500, step, shift=int(rng.integers(0, 4))))
        loads = rng.random((LAYERS, EXPERTS)) * (rng.random((LAYERS, EXPERTS)) < 0.5)  # many zero loads
        assert complete(r.rebalance(loads=loads).placement.phy2log)


def test_load_only_rebalance_is_no_worse_than_eplb_on_gpu_peak():
    rng = np.random.default_rng(0)
    loads = rng.pareto(1.5, size=(LAYERS, EXPERTS)) * 100
    r = rebalancer(RebalanceConfig(move_budget=1.0, min_gain=0.0))
    result = r.rebalance(loads=loads)
    assert result.mode == "loads" and complete(result.placement.phy2log)
    eplb, _, _ = rebalance_experts(loads, NODES * GPN * SLOTS, 1, NODES, NODES * GPN)
    for layer in range(LAYERS):
        ours = predicted_peak(result.placement.phy2log[layer], loads[layer], SLOTS)
        assert ours <= predicted_peak(eplb[layer], loads[layer], SLOTS) + 1e-9


def test_seeding_from_a_trace_fills_the_window():
    r = rebalancer()
    r.seed(Trace(topk_ids=clustered(800, 4), num_experts=EXPERTS))
    assert not r.window.empty and r.rebalance().mode == "routing"


def test_current_placement_may_be_given_as_phy2log(observed):
    _, first = observed
    r = rebalancer()
    r.observe(clustered(1000, 2))
    result = r.rebalance(current=first.placement.phy2log)
    assert complete(result.placement.phy2log)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, field", [
    (lambda r: r.observe(np.zeros((5, LAYERS + 1, K), np.int16)), "topk_ids"),
    (lambda r: r.observe(np.full((5, LAYERS, K), EXPERTS, np.int16)), "topk_ids"),
    (lambda r: r.observe(np.zeros((5, LAYERS, K), np.float32)), "topk_ids"),
    (lambda r: r.observe(np.zeros((5, LAYERS, K), np.int16)), "topk_ids"),  # expert 0 four times a token
    (lambda r: r.rebalance(), "loads"),
    (lambda r: r.rebalance(loads=np.full((LAYERS, EXPERTS), np.nan)), "loads"),
    (lambda r: r.rebalance(loads=-np.ones((LAYERS, EXPERTS))), "loads"),
    (lambda r: r.rebalance(loads=np.ones((LAYERS, EXPERTS + 1))), "loads"),
    (lambda r: r.rebalance(loads=np.ones((LAYERS, EXPERTS)), current=np.zeros((LAYERS, 24), np.int64)), "current"),
    (lambda r: r.rebalance(loads=np.ones((LAYERS, EXPERTS)), current=np.zeros((LAYERS, 5), np.int64)), "current"),
])
def test_bad_input_raises_input_error_naming_the_argument(call, field):
    with pytest.raises(InputError) as err:
        call(rebalancer())
    assert err.value.field == field


@pytest.mark.parametrize("kwargs, field", [
    ({"slots_per_gpu": 1}, "slots_per_gpu"),
    ({"num_nodes": 0}, "num_nodes"),
    ({"workers": 0}, "workers"),
])
def test_bad_cluster_raises_input_error(kwargs, field):
    args = {"num_layers": LAYERS, "num_experts": EXPERTS, "num_nodes": NODES, "gpus_per_node": GPN,
            "slots_per_gpu": SLOTS, **kwargs}
    with pytest.raises(InputError) as err:
        Rebalancer(**args)
    assert err.value.field == field


@pytest.mark.parametrize("field, value", [("move_budget", 1.5), ("min_gain", -1.0), ("half_life_tokens", 0.0),
                                          ("kicks", -1), ("max_nets", 0), ("move_penalty", float("nan"))])
def test_bad_config_names_the_setting(field, value):
    with pytest.raises(InputError) as err:
        replace(RebalanceConfig(), **{field: value})
    assert err.value.field == field


def test_contiguous_slots_is_the_engines_linear_layout():
    placement = contiguous_slots(2, 6, 4, 2, 2)
    assert placement.phy2log[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]


def test_replicas_must_be_a_multiple_of_ranks():
    assert slots_per_gpu_for(512, 256) == 2
    with pytest.raises(InputError) as err:
        slots_per_gpu_for(300, 256)
    assert err.value.field == "num_replicas"
