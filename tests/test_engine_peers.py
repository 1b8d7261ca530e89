"""benchmarks/engine_peers.py: TensorRT-LLM's co-occurrence placement, as its example describes it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_trace

from placer import load_topology
from placer.graph import summarize

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "engine_peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("engine_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cliques() -> np.ndarray:
    """[8, 8] co-occurrence of two cliques {0..3} and {4..7}."""
    block = np.ones((4, 4)) * 50
    return np.block([[block, np.zeros((4, 4))], [np.zeros((4, 4)), block]])


def test_ranks_start_hot_then_gather_co_occurring_experts_then_balance(peers):
    loads = np.array([2, 1, 1, 1, 1.9, 1, 1, 1])
    held = peers.cooccurrence_ranks(loads, np.ones(8, dtype=np.int64), cliques(), ranks=2)
    # rank 0: expert 0, then its clique mates while under 0.8 of the mean load (3.96) and of 4 slots;
    # rank 1 the same from expert 4; the copies left go to the least-loaded rank, hottest first
    assert held.tolist() == [[0, 1, 2, 7], [4, 5, 6, 3]]


def test_every_copy_placed_once_with_replicas(peers):
    rng = np.random.default_rng(0)
    loads = rng.integers(1, 100, 16).astype(float)
    copies = np.ones(16, dtype=np.int64)
    copies[np.argsort(-loads)[:4]] = 2
    held = peers.cooccurrence_ranks(loads, copies, rng.integers(0, 9, (16, 16)), ranks=4)
    assert held.shape == (4, 5)
    assert (np.bincount(held.ravel(), minlength=16) == copies).all()


def test_placement_fills_every_slot_and_refuses_uneven_shapes(peers):
    summary = summarize(random_trace(200, 2, 16, 2, seed=1))
    placement = peers.trtllm_cooccurrence_placement(summary, load_topology("h100-dgx").resized(2, 4))
    assert placement.phy2log.shape == (2, 16) and (np.sort(placement.phy2log, axis=1) == np.arange(16)).all()
    with pytest.raises(ValueError, match="every slot"):
        peers.trtllm_cooccurrence_placement(summary, load_topology("h100-dgx").resized(3, 2))


def test_bench_engine_peers_runs_end_to_end(capsys):
    spec = importlib.util.spec_from_file_location("bench_engine_peers", SCRIPT.with_name("bench_engine_peers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--shapes", "2x4:33", "--layers", "1", "--train-tokens", "3000", "--test-tokens", "1000"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| eplb", "| trtllm-cooc", "| spectral", "| auto"]
    trt = rows[2].strip("| ").split(" | ")
    assert trt[3::2] == ["1.000"] * 3  # TensorRT-LLM's rule over itself
    assert "auto busiest NIC x TRT-LLM: worst" in out
