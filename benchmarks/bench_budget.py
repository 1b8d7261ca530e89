"""How faithfully ``auto`` keeps to its budget, and what a shorter budget costs on held-out tokens.

Run from the repository root (with Mt-KaHyPar installed, as ``pip install -e ".[bench]"``
gives, ``auto`` also starts from its partition):

    python benchmarks/bench_budget.py [--budgets 0.2,1,4] [--layers 3] [--test-tokens 8000]
        [--shapes olmoe:6x2,qwen1.5-moe:3x4,qwen3-30b:5x4,mixtral:4x2] [--windows 2000,20000]

``--time-limit`` becomes deterministic effort: ``1.6 x time_limit / layers`` units per layer
(:func:`placer.solvers.options.layer_budget`, at least 0.2), a unit meant as about one
second of one core. For each synthetic case (a preset's first ``--layers`` layers solved on
the first W tokens of its ``train`` split at nodes x GPUs) and each per-layer budget, ``auto``
solves on one worker (so wall time = core time) and the bench prints the core-seconds per
layer, their ratio to the budget (1 = on budget; above 1 = over), and the held-out
inter-node copies and busiest-NIC tokens (``--test-tokens`` of the drifted ``test`` split,
source GPU t mod P) relative to the largest budget's placement. Placements do not depend
on machine speed; the seconds do (run it on an idle machine).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from placer import PlacementProblem, SolverSettings, load_topology
from placer.evaluation.replay import count_traffic
from placer.graph import summarize
from placer.solvers import solve
from placer.solvers.mtk import installed
from placer.solvers.options import MIN_LAYER_BUDGET, UNITS_PER_SECOND
from placer.studies import synth

SHAPES = "olmoe:6x2,qwen1.5-moe:3x4,qwen3-30b:5x4,mixtral:4x2"


def time_limit(budget: float, layers: int) -> float:
    """The ``--time-limit`` giving ``budget`` effort units per layer over ``layers`` layers."""
    return budget * layers / UNITS_PER_SECOND


def held_out(test, placement, topology) -> tuple[float, float]:
    """(inter-node copies, sum over layers of the busiest node's received tokens) of a replay."""
    counters = count_traffic(test, placement, topology)
    return float(counters["internode_tokens_dedup"].sum()), float(counters["node_recv_dedup"].max(axis=1).sum())


def warm_up(topology) -> None:
    """Compile the search kernels (numba) before anything is timed."""
    params = replace(synth.PRESETS["olmoe"], num_layers=1)
    solve(summarize(synth.generate(params, 500, seed=0, split="train")), PlacementProblem(topology),
          SolverSettings("auto", 1.0))


def run(args: argparse.Namespace) -> list[list[str]]:
    hardware = load_topology("h100-dgx")
    warm_up(hardware.resized(4, 2))
    rows = []
    for shape in args.shapes:
        preset, nodes_gpus = shape.split(":")
        nodes, gpus = map(int, nodes_gpus.split("x"))
        params = replace(synth.PRESETS[preset], num_layers=args.layers)
        topology = hardware.resized(nodes, gpus)
        test = synth.generate(params, args.test_tokens, seed=0, split="test")
        for tokens in args.windows:
            summary = summarize(synth.generate(params, tokens, seed=0, split="train"))
            results = []
            for budget in args.budgets:
                settings = SolverSettings("auto", time_limit(budget, args.layers), workers=1)
                started = time.perf_counter()
                placement = solve(summary, PlacementProblem(topology), settings)[0]
                seconds = (time.perf_counter() - started) / args.layers
                results.append((budget, seconds, *held_out(test, placement, topology)))
            _, _, cut_ref, nic_ref = results[-1]
            for budget, seconds, cut, nic in results:
                rows.append([f"{preset} {nodes_gpus} {tokens // 1000}k", f"{budget:g}", f"{seconds:.2f}",
                             f"{seconds / budget:.2f}", f"{cut / cut_ref:.3f}", f"{nic / nic_ref:.3f}"])
            print(f"  {shape} {tokens}: done", file=sys.stderr, flush=True)
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="0.2,1,4", help="effort units per layer, comma-separated")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--test-tokens", type=int, default=8000)
    parser.add_argument("--shapes", default=SHAPES, help="preset:NODESxGPUS, comma-separated")
    parser.add_argument("--windows", default="2000,20000", help="training tokens, comma-separated")
    args = parser.parse_args(argv)
    try:
        args.budgets = sorted(float(b) for b in args.budgets.split(","))
        args.windows = [int(w) for w in args.windows.split(",")]
    except ValueError as exc:
        parser.error(f"--budgets / --windows: expected comma-separated numbers ({exc})")
    if args.budgets[0] < MIN_LAYER_BUDGET:
        parser.error(f"--budgets: the smallest per-layer budget is {MIN_LAYER_BUDGET:g} units, "
                     f"got {args.budgets[0]:g}")
    if args.layers < 1 or args.test_tokens < 1 or min(args.windows) < 1:
        parser.error("--layers, --test-tokens and --windows must be positive")
    args.shapes = args.shapes.split(",")
    for shape in args.shapes:
        preset, _, nodes_gpus = shape.partition(":")
        if preset not in synth.PRESETS or len(nodes_gpus.split("x")) != 2:
            parser.error(f"--shapes: expected preset:NODESxGPUS with a preset of {sorted(synth.PRESETS)}, "
                         f"got {shape!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    rows = run(args)
    header = ["case", "units/layer", "core s/layer", "s per unit", "inter-node x", "NIC peak x"]
    print(f"### auto's budget per layer\n\n{args.layers} layers, one worker; Mt-KaHyPar start "
          f"{'on' if installed() else 'off'}\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nheld-out ratios: to the same case at the largest budget ({args.budgets[-1]:g} units/layer)")
    for budget in args.budgets:
        ratios = [float(row[3]) for row in rows if row[1] == f"{budget:g}"]
        cuts = [float(row[4]) for row in rows if row[1] == f"{budget:g}"]
        text = (f"{budget:g} units/layer: s per unit median {np.median(ratios):.2f}, worst {max(ratios):.2f}; "
                f"inter-node x median {np.median(cuts):.3f}, worst {max(cuts):.3f}")
        print(textwrap.fill(text, 80, initial_indent="- ", subsequent_indent="  "))
    print(f"\nwall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
