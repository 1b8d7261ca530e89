"""Redundant experts on held-out ESFT tokens: placer vs DeepSeek's EPLB.

Run from the repository root (needs ../shared/traces/esft-dsv2lite):

    python benchmarks/bench_replicas.py [--topology 8x8] [--slots-per-gpu 2] [--solver spectral]
        [--lp-batch 4096]

Both placements are solved on the train half of the ESFT split and replayed
on the held-out half with the same dispatch rule (each rule in turn; ``lp`` balances
batches of ``--lp-batch`` tokens); placer's replicas are packed for ``nearest`` and, in
the rows "packed for RULE", for another rule (``PlacementProblem.rule``); prints a
markdown table with placer / EPLB ratios and the issue's floors
(inter-node <= 0.80 x EPLB, GPU peak <= 1.05 x EPLB, under ``nearest``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from placer import evaluate, load_topology
from placer.dispatch import RULES
from placer.formats.esft import import_esft
from placer.graph import summarize
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve

ESFT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "esft-dsv2lite"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esft", type=Path, default=ESFT)
    parser.add_argument("--topology", default="8x8")
    parser.add_argument("--slots-per-gpu", type=int, default=2)
    parser.add_argument("--solver", default="spectral")
    parser.add_argument("--lp-batch", type=int, default=4096)
    args = parser.parse_args(argv)
    if not args.esft.is_dir():
        print(f"ESFT traces not found at {args.esft}: nothing to measure.", file=sys.stderr)
        return 1
    nodes, gpus = map(int, args.topology.split("x"))
    topology = load_topology("h100-dgx").resized(nodes, gpus)
    train, test = import_esft(args.esft, split=True)
    summary = summarize(train)
    solved = {}
    runs = [("eplb", "eplb", "nearest"), (args.solver, args.solver, "nearest")]
    runs += [(f"{args.solver} packed for {rule}", args.solver, rule) for rule in RULES if rule != "nearest"]
    for label, name, packed in runs:
        started = time.perf_counter()
        placement, _ = solve(
            summary,
            PlacementProblem(topology, slots_per_gpu=args.slots_per_gpu, rule=packed, lp_batch=args.lp_batch),
            SolverSettings(solver=name, workers=2),
        )
        solved[label] = (placement, time.perf_counter() - started)
    spare = args.slots_per_gpu * topology.num_gpus - train.num_experts
    print(
        f"## {nodes} x {gpus} GPUs, {args.slots_per_gpu} slots per GPU ({spare} spare slots), "
        f"held-out {test.num_tokens:,} tokens\n"
    )
    print("| rule | placement | solve s | inter-node tokens | x EPLB | NIC peak | x EPLB | GPU peak | x EPLB |")
    print("|---" * 9 + "|")
    verdicts = []
    for rule in RULES:
        totals = {name: evaluate(test, p, topology, rule=rule, lp_batch=args.lp_batch).totals
                  for name, (p, _) in solved.items()}
        eplb = totals["eplb"]
        for name, (_, seconds) in solved.items():
            t = totals[name]
            print(
                f"| {rule} | {name} | {seconds:.1f} | {t['internode_tokens_dedup']:,} "
                f"| {t['internode_tokens_dedup'] / eplb['internode_tokens_dedup']:.3f} | {t['nic_peak_tokens']:,} "
                f"| {t['nic_peak_tokens'] / eplb['nic_peak_tokens']:.3f} | {t['gpu_peak_load']:,} "
                f"| {t['gpu_peak_load'] / eplb['gpu_peak_load']:.3f} |"
            )
        if rule == "nearest":
            ours = totals[args.solver]
            internode = ours["internode_tokens_dedup"] / eplb["internode_tokens_dedup"]
            peak = ours["gpu_peak_load"] / eplb["gpu_peak_load"]
            verdicts = [
                f"- {'PASS' if internode <= 0.80 else 'FAIL'}: inter-node <= 0.80 x EPLB (measured {internode:.3f})",
                f"- {'PASS' if peak <= 1.05 else 'FAIL'}: GPU peak <= 1.05 x EPLB (measured {peak:.3f})",
            ]
    print("\n" + "\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
