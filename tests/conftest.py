"""Shared test helpers: run the CLI in-process and locate optional shared data."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from placer.cli import main
from placer.topology import Topology
from placer.trace import Trace

SHARED = Path(__file__).resolve().parents[2] / "shared"
ESFT_DIR = SHARED / "traces" / "esft-dsv2lite"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


def invoke(*args: object) -> int:
    """Run ``placer ARGS`` in-process and return its exit code."""
    saved = sys.argv
    sys.argv = ["placer", *map(str, args)]
    try:
        main()
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved


@pytest.fixture
def cli(capsys):
    """Run ``placer ARGS`` in-process; returns exit code, stdout and stderr."""

    def run(*args: object) -> CliResult:
        code = invoke(*args)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def esft_dir() -> Path:
    if not ESFT_DIR.is_dir():
        pytest.skip(f"real ESFT traces not found at {ESFT_DIR} (../shared beside the repo)")
    return ESFT_DIR


def topo(nodes: int, gpus: int) -> Topology:
    """An H100-like topology of ``nodes`` x ``gpus`` for solver tests."""
    return Topology("t", nodes, gpus, 80e9, 1e15, 4.5e11, 5e10, 5e-6)


def random_trace(tokens: int, layers: int, experts: int, k: int, seed: int, skew: float = 1.0) -> Trace:
    """Random top-k routing with skewed popularity: topk_ids [tokens, layers, k]."""
    rng = np.random.default_rng(seed)
    p = rng.random(experts) ** skew
    p /= p.sum()
    ids = np.stack([
        np.stack([rng.choice(experts, size=k, replace=False, p=p) for _ in range(tokens)])
        for _ in range(layers)
    ], axis=1)
    return Trace(topk_ids=ids.astype(np.int16), num_experts=experts)
