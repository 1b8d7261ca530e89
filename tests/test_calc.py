"""The analytic all-to-all calculator: seed-003 figures and the formulas against enumeration."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import pytest

from placer.errors import InputError
from placer.evaluation.calc import AllToAllVolume, all_to_all_volume, expected_remote_nodes
from placer.instances import load_model, load_topology
from placer.topology import Model, Topology


@pytest.fixture
def v3_bf16() -> Model:
    """DeepSeek-V3 with BF16 both ways, as seed 003 assumes."""
    return replace(
        load_model("deepseek-v3"), dispatch_bytes_per_element=2.0, combine_bytes_per_element=2.0
    )


def tiny(num_experts: int, top_k: int) -> Model:
    """A small model: hidden 16, BF16 both ways."""
    return Model(
        "tiny", num_experts, top_k, hidden_size=16, moe_intermediate_size=8, num_moe_layers=2
    )


# ---- seed 003: DeepSeek-V3 at EP 256, 4,096 tokens per GPU -------------------------------


def test_seed003_vectors_and_bytes(v3_bf16: Model) -> None:
    v = all_to_all_volume(v3_bf16, ep_size=256, tokens_per_gpu=4096, gpus_per_node=8)
    assert v.nodes == 32
    assert v.remote_vectors == 32_640  # 4096 x 8 x 255/256
    assert v.dispatch_bytes_per_vector == v.combine_bytes_per_vector == 14_336
    assert v.dispatch_bytes == v.combine_bytes == 467_927_040  # ~468 MB each way
    assert round(v.forward_bytes / 1e9, 2) == 54.28  # x 2 ways x 58 MoE layers


def test_seed003_node_limited(v3_bf16: Model) -> None:
    v = all_to_all_volume(v3_bf16, 256, 4096, 8, max_nodes=4)
    assert v.node_limited_vectors == 15_872  # 4 x 31/32 x 4096
    assert v.nic_vectors == 15_872
    assert v.nic_dispatch_bytes == v.nic_combine_bytes == 227_540_992
    assert round(v.nic_dispatch_bytes / 1e6, 1) == 227.5


def test_deepep_element_sizes_split_dispatch_and_combine() -> None:
    v = all_to_all_volume(load_model("deepseek-v3"), 256, 4096, 8)
    assert v.dispatch_bytes_per_vector == 7168 and v.combine_bytes_per_vector == 14_336
    assert v.dispatch_bytes == 32_640 * 7168
    assert v.combine_bytes == 467_927_040
    assert v.forward_bytes == 32_640 * (7168 + 14_336) * 58


def test_without_node_limit_the_nic_carries_deduplicated_copies(v3_bf16: Model) -> None:
    v = all_to_all_volume(v3_bf16, 256, 4096, 8)
    assert v.node_limited_vectors is None
    assert v.nic_vectors == v.node_dedup_vectors
    # A token's 8 experts reach ~7.04 of the 31 other nodes: fewer copies than pairs.
    assert v.node_dedup_vectors == pytest.approx(4096 * expected_remote_nodes(256, 8, 32))
    assert 15_872 < v.node_dedup_vectors < v.inter_node_vectors == 4096 * 8 * 31 / 32


# ---- formulas against exact enumeration ----------------------------------------------------


def enumerate_one_token(experts: int, k: int, ep_size: int, group: int) -> dict[str, float]:
    """Average over every k-subset of experts, seen from GPU 0: exact per-token counts."""
    per_gpu = experts // ep_size
    totals = {"remote": 0, "intra": 0, "inter": 0, "dedup": 0}
    subsets = list(combinations(range(experts), k))
    for chosen in subsets:
        gpus = [e // per_gpu for e in chosen]
        totals["remote"] += sum(g != 0 for g in gpus)
        totals["intra"] += sum(g != 0 and g // group == 0 for g in gpus)
        totals["inter"] += sum(g // group != 0 for g in gpus)
        totals["dedup"] += len({g // group for g in gpus} - {0})
    return {name: count / len(subsets) for name, count in totals.items()}


@pytest.mark.parametrize(
    ("experts", "k", "ep_size", "group"),
    [(8, 2, 4, 2), (12, 3, 6, 2), (16, 4, 8, 2), (16, 3, 16, 4), (12, 2, 3, 8), (10, 10, 5, 1)],
)
def test_counts_match_enumeration(experts: int, k: int, ep_size: int, group: int) -> None:
    exact = enumerate_one_token(experts, k, ep_size, min(group, ep_size))
    v = all_to_all_volume(tiny(experts, k), ep_size, tokens_per_gpu=5, gpus_per_node=group)
    assert v.remote_vectors == pytest.approx(5 * exact["remote"])
    assert v.intra_node_vectors == pytest.approx(5 * exact["intra"])
    assert v.inter_node_vectors == pytest.approx(5 * exact["inter"])
    assert v.node_dedup_vectors == pytest.approx(5 * exact["dedup"])


def test_single_node_has_no_inter_node_traffic() -> None:
    v = all_to_all_volume(tiny(16, 4), ep_size=4, tokens_per_gpu=10, gpus_per_node=8)
    assert (v.gpus_per_node, v.nodes) == (4, 1)
    assert v.inter_node_vectors == v.node_dedup_vectors == v.nic_vectors == 0
    assert v.intra_node_vectors == v.remote_vectors == 10 * 4 * 3 / 4


def test_node_limit_is_capped_by_nodes_and_k() -> None:
    model = tiny(64, 2)
    assert all_to_all_volume(model, 8, 10, 2, max_nodes=3).node_limited_vectors == 10 * 2 * 3 / 4
    assert all_to_all_volume(tiny(64, 8), 8, 10, 2, max_nodes=9).node_limited_vectors == 10 * 3


# ---- times ----------------------------------------------------------------------------------


def test_times_follow_the_stated_formulas(v3_bf16: Model) -> None:
    hw = load_topology("h800-deepep")
    v = all_to_all_volume(v3_bf16, 256, 4096, 8, max_nodes=4, topology=hw)
    one_way = 227_540_992 / 50e9 + 5e-6  # NIC-bound: NVLink carries only 896 vectors
    assert v.topology == "h800-deepep"
    assert v.all_to_all_time_s == pytest.approx(2 * one_way)
    compute = 4096 * 8 * 6 * 7168 * 2048 / 989e12
    assert v.expert_compute_time_s == pytest.approx(compute)
    assert v.comm_compute_ratio == pytest.approx(2 * one_way / compute)


def test_nvlink_bounds_a_single_node() -> None:
    hw = Topology("t", 1, 8, 80e9, 1e15, nvlink_bandwidth=100.0, nic_bandwidth=1.0, latency_s=0.0)
    v = all_to_all_volume(tiny(16, 4), 8, 10, 8, topology=hw)
    assert v.all_to_all_time_s == pytest.approx(2 * 10 * 4 * 7 / 8 * 16 * 2 / 100.0)


def test_no_topology_no_times(v3_bf16: Model) -> None:
    v = all_to_all_volume(v3_bf16, 64, 128, 8)
    assert v.topology is v.all_to_all_time_s is v.expert_compute_time_s is None
    assert v.comm_compute_ratio is None
    assert AllToAllVolume(**v.to_dict()) == v


# ---- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"ep_size": 0}, "ep_size", "expected a positive integer, got 0"),
        ({"tokens_per_gpu": -1}, "tokens_per_gpu", "expected a positive integer"),
        ({"gpus_per_node": 0}, "gpus_per_node", "expected a positive integer"),
        ({"max_nodes": 0}, "max_nodes", "expected a positive integer"),
        ({"ep_size": 12}, "ep_size", "expected at most or a multiple of gpus_per_node (8)"),
        ({"ep_size": 5, "gpus_per_node": 5}, "ep_size", "expected a divisor of"),
    ],
)
def test_bad_arguments(v3_bf16: Model, kwargs: dict, field: str, fragment: str) -> None:
    arguments = {"ep_size": 16, "tokens_per_gpu": 64, "gpus_per_node": 8, **kwargs}
    with pytest.raises(InputError) as info:
        all_to_all_volume(v3_bf16, **arguments)
    assert info.value.field == field
    assert fragment in str(info.value)
