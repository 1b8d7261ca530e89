"""placer against the engines' own placement rules at DeepSeek-V3 shape, held out.

Run from the repository root:

    python benchmarks/bench_engine_peers.py [--shapes 4x8:9,8x8:5,4x8:8] [--layers 4]
        [--train-tokens 100000] [--test-tokens 50000] [--seed 0]

A shape is nodes x GPUs per node : slots per GPU (256 experts; slots beyond 256 hold
replicas, as DeepSeek serves with 32 redundant experts on EP32). Every placement is solved
on the first ``--train-tokens`` tokens of the synthetic ``deepseek-v3`` preset's ``train``
split (its first ``--layers`` layers) and replayed on ``--test-tokens`` tokens of its drifted
``test`` split: source GPU t mod P, replicas by the ``nearest`` rule. Peers: DeepSeek's EPLB
(load only: ``placer/eplb.py``) and TensorRT-LLM's co-occurrence example (GPU by GPU, the
experts most often picked with those already there: ``benchmarks/engine_peers.py``); placer
``spectral`` and ``auto`` at the default 60 s budget scaled to the layers replayed. Ratios are
to EPLB and to TensorRT-LLM's rule; the last lines give placer's worst case over shapes.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from engine_peers import trtllm_cooccurrence_placement

from placer import Placement, Topology, load_topology
from placer.evaluation.replay import evaluate
from placer.graph import summarize
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve
from placer.studies import synth
from placer.trace import Trace

METRICS = {"inter-node copies": "internode_tokens_dedup", "busiest NIC": "nic_peak_tokens",
           "busiest GPU": "gpu_peak_load"}
PLACER = ("spectral", "auto")


def held_out(test: Trace, placement: Placement, topology: Topology) -> dict[str, float]:
    """The replay's totals of ``placement`` on ``test``, source GPU t mod P."""
    pinned = replace(test, src_rank=np.arange(test.num_tokens) % topology.num_gpus)
    return evaluate(pinned, placement, topology).totals


def run_shape(shape: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every placement of one ``nodes x gpus : slots`` shape: name -> held-out totals (and seconds)."""
    dims, slots = shape.split(":")
    nodes, gpus = map(int, dims.split("x"))
    topology = load_topology("h100-dgx").resized(nodes, gpus)
    full = synth.PRESETS["deepseek-v3"]
    params = replace(full, num_layers=args.layers)
    train = synth.generate(params, args.train_tokens, seed=args.seed, split="train")
    test = synth.generate(params, args.test_tokens, seed=args.seed, split="test")
    summary = summarize(train)
    problem = PlacementProblem(topology, slots_per_gpu=int(slots))
    budget = 60.0 * args.layers / full.num_layers
    solvers = {
        "eplb": lambda: solve(summary, problem, SolverSettings("eplb", budget))[0],
        "trtllm-cooc": lambda: trtllm_cooccurrence_placement(summary, topology, int(slots)),
        **{name: (lambda name=name: solve(summary, problem, SolverSettings(name, budget, seed=args.seed))[0])
           for name in PLACER},
    }
    results = {}
    for name, place in solvers.items():
        started = time.perf_counter()
        placement = place()
        results[name] = {**held_out(test, placement, topology), "seconds": time.perf_counter() - started}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4x8:9,8x8:5,4x8:8")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--train-tokens", type=int, default=100_000)
    parser.add_argument("--test-tokens", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"Synthetic deepseek-v3, first {args.layers} layers, solved on {args.train_tokens:,} train tokens, "
          f"replayed on {args.test_tokens:,} held-out tokens.\n")
    worst: dict[str, list[float]] = {}
    for shape in args.shapes.split(","):
        results = run_shape(shape, args)
        eplb, trt = results["eplb"], results["trtllm-cooc"]
        print(f"## {shape} (nodes x GPUs : slots per GPU)\n\n"
              "| placement | solve s | inter-node x EPLB | x TRT-LLM | NIC peak x EPLB | x TRT-LLM "
              "| GPU peak x EPLB | x TRT-LLM |\n|---|---|---|---|---|---|---|---|")
        for name, row in results.items():
            cells = [f"{row[key] / eplb[key]:.3f} | {row[key] / trt[key]:.3f}" for key in METRICS.values()]
            print(f"| {name} | {row['seconds']:.1f} | " + " | ".join(cells) + " |")
            if name in PLACER:
                for label, key in METRICS.items():
                    worst.setdefault(f"{name} {label} x TRT-LLM", []).append(row[key] / trt[key])
        print()
    for label, values in worst.items():
        print(f"- {label}: worst {max(values):.3f}, best {min(values):.3f} over {len(values)} shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
