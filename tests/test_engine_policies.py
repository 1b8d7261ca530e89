"""The engine drop-ins called exactly as vLLM and SGLang call them, and their installers.

No engine is installed: the installers are run against stand-in modules
shaped like the engines' registries (tests/engine_standins.py).
"""

from __future__ import annotations

import sys
import typing

import numpy as np
import pytest
import torch
from engine_standins import sglang_modules, vllm_modules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from placer.engine_policies import (
    EngineInputError,
    PlacerEplbPolicy,
    attach,
    detach,
    gpu_peaks,
    install_sglang,
    install_vllm,
    rebalance_experts,
)
from placer.engine_policies.plugins import sglang_plugin, vllm_plugin
from placer.eplb import rebalance_experts as eplb
from placer.errors import InputError

LAYERS, EXPERTS, RANKS, NODES = 3, 16, 4, 2


@pytest.fixture(autouse=True)
def _load_only():
    detach()
    yield
    detach()


@pytest.fixture
def vllm(monkeypatch):
    modules = vllm_modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules


@pytest.fixture
def sglang(monkeypatch):
    modules = sglang_modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules


def skewed_load(seed: int, layers: int = LAYERS, experts: int = EXPERTS, window: int | None = None) -> torch.Tensor:
    """Zipf-like int32 counts [layers, experts] (or [window, layers, experts])."""
    rng = np.random.default_rng(seed)
    shape = (layers, experts) if window is None else (window, layers, experts)
    return torch.from_numpy((rng.pareto(1.2, size=shape) * 100).astype(np.int32))


def assert_served(phy2log: np.ndarray, layers: int, experts: int, replicas: int) -> None:
    """How the engines use the result: [layers, replicas] int64 ids, every logical expert held."""
    assert phy2log.shape == (layers, replicas) and phy2log.dtype == np.int64
    assert phy2log.min() >= 0 and phy2log.max() < experts
    for row in phy2log:
        assert np.unique(row).size == experts


def assert_slots_kept(old: np.ndarray, new: np.ndarray, ranks: int) -> None:
    """An expert copy still on its GPU sits in its old slot."""
    slots = old.shape[1] // ranks
    for layer in range(old.shape[0]):
        for gpu in range(ranks):
            span = slice(gpu * slots, (gpu + 1) * slots)
            wanted = list(new[layer, span])
            for slot, expert in enumerate(old[layer, span]):
                if expert in wanted:
                    wanted.remove(expert)
                    assert new[layer, gpu * slots + slot] == expert


def eplb_peaks(weight: np.ndarray, replicas: int, groups: int, nodes: int, ranks: int) -> np.ndarray:
    """DeepSeek EPLB's GPU peak per layer, with the engines' group rule."""
    if groups == 0 or groups % nodes:
        groups, nodes = 1, 1
    return gpu_peaks(eplb(weight, replicas, groups, nodes, ranks)[0], weight.astype(np.float64), ranks)


# ---------------------------------------------------------------- vLLM


@pytest.mark.parametrize("redundant", [0, 4, 8])
@pytest.mark.parametrize("num_groups", [0, 4, 3])
def test_vllm_called_as_eplb_state_rearrange(vllm, redundant, num_groups):
    install_vllm()
    parallel = vllm["vllm.config.parallel"]
    config = parallel.ParallelConfig(enable_eplb=True, eplb_config={"policy": "placer", "use_async": False})
    state = vllm["vllm.distributed.eplb.eplb_state"].EplbState(config, EXPERTS, EXPERTS + redundant, LAYERS)
    assert state.policy is PlacerEplbPolicy
    window = skewed_load(1, window=5)
    old = state.physical_to_logical_map.numpy().copy()
    new = state.rearrange(window, num_groups, NODES, RANKS)
    assert isinstance(new, torch.Tensor) and new.device.type == "cpu"
    new = new.numpy()
    assert_served(new, LAYERS, EXPERTS, EXPERTS + redundant)
    weight = window.sum(dim=0).numpy()
    peaks = gpu_peaks(new, weight.astype(np.float64), RANKS)
    assert (peaks <= eplb_peaks(weight, EXPERTS + redundant, num_groups, NODES, RANKS) + 1e-9).all()
    assert_slots_kept(old, new, RANKS)


def test_vllm_rebalance_without_old_indices_and_numpy_in_numpy_out():
    weight = skewed_load(2).numpy()
    result = PlacerEplbPolicy.rebalance_experts(weight, 24, 4, NODES, RANKS)
    assert isinstance(result, np.ndarray)
    assert_served(result, LAYERS, EXPERTS, 24)
    tensor = PlacerEplbPolicy.rebalance_experts(torch.from_numpy(weight), 24, 4, NODES, RANKS, None)
    assert tensor.dtype == torch.int64 and np.array_equal(tensor.numpy(), result)


def test_vllm_same_load_again_moves_nothing():
    weight = skewed_load(3)
    first = PlacerEplbPolicy.rebalance_experts(weight, 24, 4, NODES, RANKS)
    scrambled = first.numpy()[:, ::-1].copy()  # every GPU's contents reversed and GPUs swapped
    again = PlacerEplbPolicy.rebalance_experts(weight, 24, 4, NODES, RANKS, torch.from_numpy(scrambled))
    assert np.array_equal(again.numpy(), scrambled)


def test_vllm_drifted_load_keeps_unmoved_experts_in_their_slots():
    old = PlacerEplbPolicy.rebalance_experts(skewed_load(4), 24, 4, NODES, RANKS).numpy()
    new = PlacerEplbPolicy.rebalance_experts(skewed_load(5), 24, 4, NODES, RANKS, torch.from_numpy(old)).numpy()
    assert_served(new, LAYERS, EXPERTS, 24)
    assert_slots_kept(old, new, RANKS)
    assert (new == old).any()


def test_vllm_elastic_scale_down_old_map_of_other_width_is_not_an_error():
    old = torch.arange(32).remainder(EXPERTS).repeat(LAYERS, 1)  # 8 ranks x 4 slots before
    new = PlacerEplbPolicy.rebalance_experts(skewed_load(6), 16, 4, NODES, RANKS, old)  # 4 ranks after
    assert_served(new.numpy(), LAYERS, EXPERTS, 16)


BAD_VLLM_CALLS = [
    ("weight", lambda w: (w[0], 24, 4, 2, 4, None)),
    ("weight", lambda w: (w[None], 24, 4, 2, 4, None)),
    ("weight", lambda w: (-w, 24, 4, 2, 4, None)),
    ("weight", lambda w: (torch.where(w > 50, torch.nan, w.float()), 24, 4, 2, 4, None)),
    ("num_replicas", lambda w: (w, 22, 4, 2, 4, None)),
    ("num_replicas", lambda w: (w, 12, 4, 2, 4, None)),
    ("num_groups", lambda w: (w, 24, 6, 2, 4, None)),
    ("num_groups", lambda w: (w, 24, -1, 2, 4, None)),
    ("num_nodes", lambda w: (w, 24, 4, 3, 4, None)),
    ("num_ranks", lambda w: (w, 24, 4, 2, 0, None)),
    ("old_global_expert_indices", lambda w: (w, 24, 4, 2, 4, torch.zeros((2, 24), dtype=torch.int64))),
    ("old_global_expert_indices", lambda w: (w, 24, 4, 2, 4, torch.full((3, 24), 16))),
    ("old_global_expert_indices", lambda w: (w, 24, 4, 2, 4, torch.zeros((3, 24)))),
]


@pytest.mark.parametrize(("field", "arguments"), BAD_VLLM_CALLS)
def test_vllm_bad_input_raises_naming_the_argument(field, arguments):
    with pytest.raises(EngineInputError) as caught:
        PlacerEplbPolicy.rebalance_experts(*arguments(skewed_load(7)))
    assert caught.value.field == field and isinstance(caught.value, InputError)
    assert field in str(caught.value)


# ---------------------------------------------------------------- vLLM installer


def test_install_vllm_registers_policy_and_extends_option_check(vllm):
    parallel, policy = vllm["vllm.config.parallel"], vllm["vllm.distributed.eplb.policy"]
    with pytest.raises(ValidationError):
        parallel.EPLBConfig(policy="placer", use_async=False)
    install_vllm()
    install_vllm()  # idempotent
    assert policy.EPLB_POLICIES["placer"] is PlacerEplbPolicy
    assert set(policy.EPLB_POLICIES) == set(typing.get_args(parallel.EPLBPolicyOption)) == {"default", "placer"}
    assert parallel.EPLBConfig(policy="placer", use_async=False).policy == "placer"
    nested = parallel.ParallelConfig(eplb_config={"policy": "placer", "use_async": False})
    assert nested.eplb_config.policy == "placer"
    with pytest.raises(ValidationError, match="Async EPLB"):
        parallel.EPLBConfig(policy="placer")
    with pytest.raises(ValidationError):
        parallel.EPLBConfig(policy="nonexistent", use_async=False)


def test_install_vllm_as_default_keeps_async(vllm):
    install_vllm("default")
    policy = vllm["vllm.distributed.eplb.policy"]
    assert policy.EPLB_POLICIES["default"] is PlacerEplbPolicy
    assert vllm["vllm.config.parallel"].EPLBConfig().use_async


def test_install_vllm_on_the_first_policy_package_returns_three_maps(vllm):
    """Before old_global_expert_indices, rebalance_experts returned (phy2log, log2phy, logcnt)."""
    from placer.engine_policies import PlacerEplbMapsPolicy

    class FirstDefaultEplbPolicy:
        @classmethod
        def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks):
            raise AssertionError("not called")

    vllm["vllm.distributed.eplb.policy"].EPLB_POLICIES["default"] = FirstDefaultEplbPolicy
    install_vllm()
    policy = vllm["vllm.distributed.eplb.policy"].EPLB_POLICIES["placer"]
    assert policy is PlacerEplbMapsPolicy
    phy2log, log2phy, logcnt = policy.rebalance_experts(skewed_load(15), 24, 4, NODES, RANKS)  # as EplbState.build
    assert_served(phy2log.numpy(), LAYERS, EXPERTS, 24)
    assert log2phy.dtype == logcnt.dtype == torch.int64 and (logcnt.sum(dim=1) == 24).all()
    for layer in range(LAYERS):
        for expert in range(EXPERTS):
            held = log2phy[layer, expert][log2phy[layer, expert] >= 0].tolist()
            assert sorted(held) == np.flatnonzero(phy2log[layer].numpy() == expert).tolist()


def test_install_vllm_returns_three_maps_where_the_default_is_declared_to(vllm):
    """vLLM 0.14.0-0.18.0: old_global_expert_indices already, and EplbState unpacks three maps."""
    from placer.engine_policies import PlacerEplbMapsPolicy

    class DeclaredDefaultEplbPolicy:
        @classmethod
        def rebalance_experts(cls, weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                              num_ranks: int, old_global_expert_indices: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            raise AssertionError("not called")

    vllm["vllm.distributed.eplb.policy"].EPLB_POLICIES["default"] = DeclaredDefaultEplbPolicy
    install_vllm()
    policy = vllm["vllm.distributed.eplb.policy"].EPLB_POLICIES["placer"]
    assert policy is PlacerEplbMapsPolicy
    old = torch.arange(24).remainder(EXPERTS).expand(LAYERS, -1).contiguous()
    phy2log, log2phy, logcnt = policy.rebalance_experts(skewed_load(15), 24, 4, NODES, RANKS, old)  # as rearrange
    assert_served(phy2log.numpy(), LAYERS, EXPERTS, 24)
    assert (logcnt.sum(dim=1) == 24).all() and log2phy.shape[:2] == (LAYERS, EXPERTS)


def test_install_vllm_rejects_a_registry_it_does_not_know(vllm):
    del vllm["vllm.distributed.eplb.policy"].EPLB_POLICIES
    with pytest.raises(EngineInputError, match="EPLB_POLICIES"):
        install_vllm()


def test_vllm_plugin_reads_the_environment(vllm, monkeypatch):
    seen = []
    module = type(sys)("placer_test_setup")
    module.configure = seen.append
    monkeypatch.setitem(sys.modules, "placer_test_setup", module)
    monkeypatch.setenv("PLACER_VLLM_POLICY", "placer_ca")
    monkeypatch.setenv("PLACER_ENGINE_SETUP", "placer_test_setup:configure")
    vllm_plugin()
    assert "placer_ca" in vllm["vllm.distributed.eplb.policy"].EPLB_POLICIES and seen == ["vllm"]


# ---------------------------------------------------------------- SGLang


class ServerArgs:
    def __init__(self, algorithm: str, redundant: int = 4, ep_size: int = RANKS, nnodes: int = NODES):
        self.eplb_algorithm, self.ep_num_redundant_experts = algorithm, redundant
        self.ep_size, self.nnodes = ep_size, nnodes


@pytest.mark.parametrize("num_groups", [None, 0, 4])
@pytest.mark.parametrize("redundant", [0, 4])
def test_sglang_called_as_init_by_eplb(sglang, num_groups, redundant):
    install_sglang()
    location = sglang["sglang.srt.eplb.expert_location"]
    logical_count = skewed_load(8, window=6)  # [buffer steps, layers, experts]
    phy2log, log2phy = location.init_by_eplb(ServerArgs("placer", redundant), num_groups, logical_count)
    replicas = EXPERTS + redundant
    assert phy2log.dtype == torch.int64 and log2phy.shape == (LAYERS, EXPERTS, replicas)
    phy2log, log2phy = phy2log.numpy(), log2phy.numpy()
    assert_served(phy2log, LAYERS, EXPERTS, replicas)
    for layer in range(LAYERS):
        for expert in range(EXPERTS):
            held = log2phy[layer, expert][log2phy[layer, expert] >= 0]
            assert sorted(held) == sorted(np.flatnonzero(phy2log[layer] == expert))
    weight = logical_count.sum(dim=0).numpy()
    expected = eplb_peaks(weight, replicas, num_groups or 0, NODES, RANKS)
    assert (gpu_peaks(phy2log, weight.astype(np.float64), RANKS) <= expected + 1e-9).all()


def test_sglang_other_algorithms_still_dispatch_to_sglang(sglang):
    install_sglang()
    install_sglang()  # idempotent
    algorithms = sglang["sglang.srt.eplb.eplb_algorithms"]
    assert algorithms.compute_algorithm("deepseek", 4, 2) is algorithms.EplbAlgorithm.deepseek
    assert algorithms.compute_algorithm("auto", 4, 2) is algorithms.EplbAlgorithm.deepseek_hierarchical
    with pytest.raises(KeyError):
        algorithms.compute_algorithm("nonexistent", 4, 2)
    location = sglang["sglang.srt.eplb.expert_location"]
    ours = location.init_by_eplb(ServerArgs("placer"), 4, skewed_load(9))[0]
    theirs = location.init_by_eplb(ServerArgs("deepseek"), 4, skewed_load(9))[0]
    assert_served(theirs.numpy(), LAYERS, EXPERTS, 20) and assert_served(ours.numpy(), LAYERS, EXPERTS, 20)


def test_sglang_plugin_installs(sglang, monkeypatch):
    monkeypatch.setenv("PLACER_SGLANG_ALGORITHM", "placer_ca")
    sglang_plugin()
    algorithms = sglang["sglang.srt.eplb.eplb_algorithms"]
    assert algorithms.compute_algorithm("placer_ca", None, 1).name == "placer"


def test_sglang_time_axis_is_summed_and_checked_before_summing():
    counts = skewed_load(10, window=4)
    three = rebalance_experts(counts, 20, 5, 4, NODES)
    two = rebalance_experts(counts.sum(dim=0), 20, 5, 4, NODES)
    assert all(torch.equal(a, b) for a, b in zip(three, two, strict=True))
    hidden = counts.clone()
    hidden[0, 0, 0], hidden[1, 0, 0] = -5, 10  # sums to a non-negative count
    with pytest.raises(EngineInputError, match="tokens_per_expert"):
        rebalance_experts(hidden, 20, 5, 4, NODES)


@pytest.mark.parametrize(("field", "arguments"), [
    ("num_local_physical_experts", (20, 0, 4, 2)),
    ("num_physical_experts", (20, 6, 4, 2)),
    ("num_physical_experts", (12, 3, 4, 2)),
    ("num_nodes", (20, 5, 4, 3)),
])
def test_sglang_bad_input_raises_naming_the_argument(field, arguments):
    with pytest.raises(EngineInputError) as caught:
        rebalance_experts(skewed_load(11, window=2), *arguments)
    assert caught.value.field == field


# ---------------------------------------------------------------- proposer (co-activation source)


def test_proposer_layers_used_within_tolerance_and_invalid_ones_never_served():
    weight = skewed_load(12).numpy().astype(np.float64)
    base = eplb(weight, 24, 4, NODES, RANKS)[0]
    worse = np.tile(np.arange(24) % EXPERTS, (LAYERS, 1))  # contiguous: heavier GPU peak
    candidate = base[:, ::-1].copy()
    candidate[1] = worse[1]
    candidate[2, 0] = candidate[2, 1]  # layer 2 now drops an expert
    attach(lambda call: candidate, peak_tolerance=1.0)
    result = PlacerEplbPolicy.rebalance_experts(weight, 24, 4, NODES, RANKS)
    assert_served(result, LAYERS, EXPERTS, 24)
    assert np.array_equal(result[0], candidate[0])
    assert not np.array_equal(result[1], worse[1]) and not np.array_equal(result[2], candidate[2])
    assert (gpu_peaks(result, weight, RANKS) <= gpu_peaks(base, weight, RANKS) + 1e-9).all()


def test_proposer_result_goes_through_rank_agreement():
    seen = []

    def agree(phy2log):
        seen.append(phy2log.shape)
        return phy2log[:, ::-1]

    attach(lambda call: None, agree=agree)
    result = PlacerEplbPolicy.rebalance_experts(skewed_load(13), 24, 4, NODES, RANKS)
    assert seen == [(LAYERS, 24)] and result.shape == (LAYERS, 24)
    with pytest.raises(EngineInputError, match="peak_tolerance"):
        attach(None, peak_tolerance=0.5)


# ---------------------------------------------------------------- properties


@st.composite
def engine_calls(draw):
    nodes = draw(st.sampled_from([1, 2]))
    ranks = nodes * draw(st.sampled_from([1, 2, 4]))
    experts = ranks * draw(st.integers(1, 4))
    replicas = experts + ranks * draw(st.integers(0, 2))
    groups = draw(st.sampled_from([0] + [g for g in (1, 2, 4, experts) if experts % g == 0]))
    layers = draw(st.integers(1, 3))
    weight = np.array(draw(st.lists(st.integers(0, 1000), min_size=layers * experts, max_size=layers * experts)),
                      dtype=np.int32).reshape(layers, experts)
    keep_old = draw(st.booleans())
    return weight, replicas, groups, nodes, ranks, keep_old


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(engine_calls())
def test_property_no_expert_dropped_peak_no_worse_than_eplb_unmoved_kept(args):
    weight, replicas, groups, nodes, ranks, keep_old = args
    layers, experts = weight.shape
    old = None
    if keep_old:
        old = torch.from_numpy(np.tile(np.arange(replicas) % experts, (layers, 1)))
    result = PlacerEplbPolicy.rebalance_experts(torch.from_numpy(weight), replicas, groups, nodes, ranks, old)
    assert result.dtype == torch.int64
    result = result.numpy()
    assert_served(result, layers, experts, replicas)
    peaks = gpu_peaks(result, weight.astype(np.float64), ranks)
    assert (peaks <= eplb_peaks(weight, replicas, groups, nodes, ranks) + 1e-9).all()
    if old is not None:
        assert_slots_kept(old.numpy(), result, ranks)
    phy2log, _, logcnt = rebalance_experts(torch.from_numpy(weight)[None], replicas, replicas // ranks,
                                                 groups or None, nodes)
    assert_served(phy2log.numpy(), layers, experts, replicas)
    assert (logcnt.sum(dim=1) == replicas).all() and (logcnt >= 1).all()


def test_broadcast_from_rank0_over_a_real_gloo_group(tmp_path):
    import torch.distributed as dist

    from placer.engine_policies import broadcast_from_rank0

    phy2log = np.arange(12, dtype=np.int64).reshape(2, 6)
    agree = broadcast_from_rank0(lambda: None)
    assert agree(phy2log) is phy2log  # no process group: a no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert np.array_equal(agree(phy2log), phy2log)
    finally:
        dist.destroy_process_group()


def test_proposer_layers_keep_unmoved_experts_in_their_slots():
    weight = skewed_load(14).numpy().astype(np.float64)
    old = eplb(weight, 24, 4, NODES, RANKS)[0]
    gpus = old.reshape(LAYERS, RANKS, 6)[:, :, ::-1].copy()  # every GPU's slots reversed ...
    gpus[:, [0, 1]] = gpus[:, [1, 0]]  # ... and GPUs 0 and 1 swapped: same peak, other contents
    candidate = gpus.reshape(LAYERS, 24)
    attach(lambda call: candidate, peak_tolerance=1.0)
    result = PlacerEplbPolicy.rebalance_experts(weight, 24, 4, NODES, RANKS, old)
    assert np.array_equal(np.sort(result[:, :12].reshape(LAYERS, 2, 6), axis=2),
                          np.sort(candidate[:, :12].reshape(LAYERS, 2, 6), axis=2))  # the proposer's GPUs
    assert np.array_equal(result[:, 12:], old[:, 12:])  # unmoved experts back in their slots
    assert_slots_kept(old, result, RANKS)
