"""docs/engines-online.md: every Python launcher snippet runs against the engines' stand-in modules.

The setup snippets are then driven as the engines would drive them (a few
steps of routing through the hooked capture point, then the engine's own
rebalancing call), at a small model shape set over the snippet's constants.
"""

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_standins import sglang_modules, vllm_modules

from placer.engine_policies import RebalancerProposer, attached, detach

DOC = Path(__file__).resolve().parents[1] / "docs" / "engines-online.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
SMALL = {"HIDDEN_LAYERS": 6, "MODEL_LAYERS": 6, "FIRST_DENSE": 2, "EXPERTS": 16, "TOP_K": 4,
         "NODES": 2, "GPUS_PER_NODE": 2, "SLOTS": 5}
TOKENS_PER_STEP, STEPS = 6000, 3  # more than the recorder's default 16,384-token buffer


@pytest.fixture(autouse=True)
def engines(monkeypatch):
    for name, module in {**vllm_modules(), **sglang_modules()}.items():
        monkeypatch.setitem(sys.modules, name, module)
    detach()
    yield
    detach()


def run(snippet: str) -> dict:
    namespace: dict = {"__name__": "snippet"}
    exec(compile(snippet, str(DOC), "exec"), namespace)
    namespace.update({k: v for k, v in SMALL.items() if k in namespace})
    return namespace


def routing(seed: int, tokens: int) -> torch.Tensor:
    """[tokens, 6 layers, 4] ids over 16 experts, 4 co-activated clusters of 4."""
    rng = np.random.default_rng(seed)
    clusters = rng.permutation(SMALL["EXPERTS"]).reshape(4, 4)
    picks = clusters[rng.integers(0, 4, size=(tokens, SMALL["HIDDEN_LAYERS"]))]
    return torch.from_numpy(np.take_along_axis(picks, rng.random(picks.shape).argsort(axis=2), axis=2).astype(np.int32))


def test_there_are_four_snippets():
    assert len(SNIPPETS) == 4


def test_install_snippets_run():
    for index in (0, 2):
        run(SNIPPETS[index])


def test_vllm_setup_snippet_feeds_the_window_and_serves_placer():
    from placer.engine_policies import install_vllm

    install_vllm("placer")
    run(SNIPPETS[1])["configure"]("vllm")
    proposer = attached().proposer
    assert isinstance(proposer, RebalancerProposer)
    capturer = sys.modules["vllm.model_executor.layers.fused_moe.routed_experts_capturer"].RoutedExpertsCapturer(
        TOKENS_PER_STEP, SMALL["HIDDEN_LAYERS"], SMALL["TOP_K"])
    for step in range(STEPS):
        ids = routing(step, TOKENS_PER_STEP)
        for layer in range(SMALL["FIRST_DENSE"], SMALL["HIDDEN_LAYERS"]):
            capturer.capture(layer, ids[:, layer])
        capturer.snapshot_routing_data(TOKENS_PER_STEP)
    assert not proposer.rebalancer.window.empty
    config = sys.modules["vllm.config.parallel"].ParallelConfig(eplb_config={"policy": "placer", "use_async": False})
    layers, ranks = SMALL["HIDDEN_LAYERS"] - SMALL["FIRST_DENSE"], SMALL["NODES"] * SMALL["GPUS_PER_NODE"]
    state = sys.modules["vllm.distributed.eplb.eplb_state"].EplbState(config, SMALL["EXPERTS"], ranks * SMALL["SLOTS"],
                                                                      layers)
    window = torch.from_numpy(np.random.default_rng(9).integers(1, 100, (4, layers, SMALL["EXPERTS"])).astype(np.int32))
    new = state.rearrange(window, 0, SMALL["NODES"], ranks).numpy()
    assert proposer.last is not None and proposer.last.mode == "routing"
    assert all(np.unique(row).size == SMALL["EXPERTS"] for row in new)


def test_sglang_setup_snippet_feeds_the_window_and_serves_placer():
    from placer.engine_policies import install_sglang

    install_sglang("placer")
    run(SNIPPETS[3])["configure"]("sglang")
    proposer = attached().proposer
    ranks = SMALL["NODES"] * SMALL["GPUS_PER_NODE"]
    physical = ranks * SMALL["SLOTS"]
    p2l = torch.arange(physical).remainder(SMALL["EXPERTS"]).repeat(SMALL["MODEL_LAYERS"], 1)
    server = types.SimpleNamespace(chunked_prefill_size=8192, eplb_algorithm="placer", nnodes=SMALL["NODES"],
                                   ep_size=ranks, ep_num_redundant_experts=physical - SMALL["EXPERTS"])
    tap = sys.modules["sglang.srt.eplb.expert_distribution"].ExpertDistributionRecorder.init_new(
        types.SimpleNamespace(physical_to_logical_map=p2l), rank=0)  # as SGLang 0.5.23's model runner calls it
    for step in range(STEPS):
        ids = routing(step, TOKENS_PER_STEP)  # logical = physical here (identity on the first 16 slots)
        with tap.with_forward_pass(step, types.SimpleNamespace(input_ids=torch.zeros(TOKENS_PER_STEP))):
            for layer in range(SMALL["FIRST_DENSE"], SMALL["MODEL_LAYERS"]):
                with tap.with_current_layer(layer):
                    tap.on_select_experts(topk_ids=ids[:, layer])
    assert not proposer.rebalancer.window.empty
    layers = SMALL["MODEL_LAYERS"] - SMALL["FIRST_DENSE"]
    counts = torch.from_numpy(np.random.default_rng(3).integers(1, 100, (2, layers, SMALL["EXPERTS"])))
    phy2log, log2phy = sys.modules["sglang.srt.eplb.expert_location"].init_by_eplb(server, None, counts)
    assert proposer.last.mode == "routing" and log2phy.shape == (layers, SMALL["EXPERTS"], physical)
    assert all(np.unique(row).size == SMALL["EXPERTS"] for row in phy2log.numpy())
