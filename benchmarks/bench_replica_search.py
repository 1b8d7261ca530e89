"""What the replica-aware swap search buys on ESFT windows, in-sample and on the next window.

Run from the repository root (needs ../shared/traces/esft-dsv2lite):

    python benchmarks/bench_replica_search.py [--windows 8000,12000,16000] [--tokens 4000]

The four ESFT tasks concatenated in order (as ``placer replay`` takes them), 8 x 8 GPUs,
2 slots per GPU, ``nearest`` rule. For each start t: a spectral placement solved on tokens
[t - W, t), the same placement with its replicas stripped (first copy of each expert kept),
and the same placement after :func:`placer.solvers.replica_search.seat_replicas` (4 passes,
no migration penalty, the window's 1,024 heaviest sets, every layer). Prints inter-node
copies (dedup) and the GPU peak replayed on the solved window and on the next one
[t, t + W), with ratios to spectral, and the search's wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from placer.evaluation.replay import evaluate
from placer.formats.esft import import_esft
from placer.graph import summarize
from placer.instances import load_topology
from placer.placement import Placement
from placer.request import PlacementProblem, SolverSettings
from placer.solvers.api import solve
from placer.solvers.replica_search import seat_replicas
from placer.trace import Trace

ESFT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "esft-dsv2lite"
SEARCH_NETS = 1024


def _strip_replicas(placement: Placement) -> Placement:
    """The placement with only the first copy (in slot order) of each expert."""
    rows = placement.phy2log.copy()
    for row in rows:
        _, first = np.unique(row, return_index=True)
        keep = np.zeros(len(row), dtype=bool)
        keep[first] = True
        row[~keep] = -1
    return Placement(rows, placement.num_experts, placement.gpus_per_node, placement.slots_per_gpu)


def _searched(placement: Placement, part: Trace) -> Placement:
    summary = summarize(part, max_nets=4096)
    rows = []
    for row, layer in zip(placement.phy2log, summary.layers):
        weights = layer.net_weights()
        keep = np.sort(np.argsort(-weights, kind="stable")[:SEARCH_NETS])
        rows.append(seat_replicas(row, layer.sets[keep], weights[keep], layer.loads, layer.coactivation.toarray(),
                                  placement.gpus_per_node, placement.slots_per_gpu, passes=4))
    return Placement(np.stack(rows), placement.num_experts, placement.gpus_per_node, placement.slots_per_gpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esft", type=Path, default=ESFT)
    parser.add_argument("--windows", default="8000,12000,16000")
    parser.add_argument("--tokens", type=int, default=4000)
    args = parser.parse_args(argv)
    if not args.esft.is_dir():
        print(f"ESFT traces not found at {args.esft}: nothing measured.", file=sys.stderr)
        return 0
    stream = import_esft(args.esft)
    topology = load_topology("h100-dgx").resized(8, 8)
    width = args.tokens

    def part(lo: int, hi: int) -> Trace:
        return Trace(stream.topk_ids[lo:hi], stream.num_experts)

    def replay(placement: Placement, lo: int, hi: int) -> tuple[int, int]:
        totals = evaluate(part(lo, hi), placement, topology, None, rule="nearest", token_offset=lo).totals
        return int(totals["internode_tokens_dedup"]), int(totals["gpu_peak_load"])

    print(f"ESFT stream, 8 x 8 GPUs, 2 slots/GPU, nearest rule, windows of {width:,} tokens")
    print("inter-node copies; x sp: vs spectral; pk: busiest GPU (next window); s: search")
    print(f"{'start':>6} {'placement':11s} {'in-sample':>9} {'x sp':>6} {'next':>9} {'x sp':>6} {'pk':>7} {'s':>5}")
    for start in (int(w) for w in args.windows.split(",")):
        train = part(start - width, start)
        spectral, _ = solve(train, PlacementProblem(topology, None, slots_per_gpu=2), SolverSettings("spectral", 60, 0))
        began = time.perf_counter()
        searched = _searched(spectral, train)
        seconds = time.perf_counter() - began
        base_in, _ = replay(spectral, start - width, start)
        base_next, _ = replay(spectral, start, start + width)
        for name, placement, wall in (("spectral", spectral, None), ("no replicas", _strip_replicas(spectral), None),
                                      ("+ search", searched, seconds)):
            inside, _ = replay(placement, start - width, start)
            after, peak = replay(placement, start, start + width)
            print(f"{start:>6,} {name:11s} {inside:>9,} {inside / base_in:>6.3f} {after:>9,}"
                  f" {after / base_next:>6.3f} {peak:>7,} {'' if wall is None else f'{wall:5.1f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
