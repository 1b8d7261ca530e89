"""Ingestion speed: per-layer loads, co-activation and weighted hypergraph from a 1M-token trace.

Run from the repository root:

    python benchmarks/bench_ingest.py [--tokens 1000000] [--workers 1,2] [--caps all,32768]
        [--repeat 1] [--cache-dir /tmp/placer-bench-scale] [--compare-placement] [--streamed]

Prints markdown tables. The trace is the ``deepseek-v3`` synthetic preset (256 experts x
58 layers, top-8), generated once and cached as ``.npz`` by ``bench_scale.cached_train``
(shared cache). Each run is a fresh process: it reads and validates the trace (``read s``,
reported separately, not in the rate), then ``summarize(trace, workers=W, max_nets=cap)``
and each layer's hypergraph (``summarize s``). Rates are token-layer rows (tokens x
layers) per wall second and per CPU second of the process (the machine may be shared:
the CPU rate is what the kernels cost; wall / CPU shows the parallelism obtained). Peak
RSS is the process's high-water mark (``ru_maxrss``), trace in memory included. ``dropped``
is the share of each layer's tokens whose top-k set the streaming cap left out
(min..max over layers); ``hypergraph dropped`` is what a solver-sized cap
(``SAMPLE_NETS`` heaviest nets) drops from the summary's hypergraph.

``--streamed``: summarise the file as ``place --trace FILE`` does, streamed from disk in token
blocks (``summarize(TraceSource(path))``): the read is inside ``summarize s`` (``read s`` is 0)
and peak memory holds the trace once while it is read.

``--compare-placement`` also places the trace (``spectral`` on 32 x 8 GPUs) from the exact
and the capped summary and replays both on a held-out trace: are they the same placement,
and how do their inter-node tokens compare (ratio to contiguous)?
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_scale import Shape, cached_train, routing

SHAPE = Shape("dsv3", 256, 58)


def _cap(text: str) -> int | None:
    return None if text == "all" else int(text)


def warm_up() -> None:
    """Load the compiled kernels on 100 tokens of the bench's shape and id dtype (untimed, and
    without reading the trace: a streamed run's peak memory is its own)."""
    from placer.graph import summarize
    from placer.trace import id_dtype, validate_arrays

    ids = (np.arange(100)[:, None, None] + np.arange(SHAPE.top_k)) % SHAPE.experts
    ids = np.broadcast_to(ids, (100, 2, SHAPE.top_k)).astype(id_dtype(SHAPE.experts))
    summarize(validate_arrays("warm-up", {"topk_ids": ids}, num_experts=SHAPE.experts))


def child(args: argparse.Namespace) -> None:
    """One timed run: read, summarise, build hypergraphs; prints one JSON line."""
    from placer.graph import summarize
    from placer.solvers.options import SAMPLE_NETS
    from placer.trace import TraceSource

    warm_up()
    started, cpu0 = time.perf_counter(), time.process_time()
    trace = TraceSource(args.trace) if args.streamed else TraceSource(args.trace).load()
    read_s, read_cpu = time.perf_counter() - started, time.process_time() - cpu0
    begun, cpu1 = time.perf_counter(), time.process_time()
    summary = summarize(trace, workers=args.workers, max_nets=_cap(args.cap))
    hypergraphs = [layer.hypergraph() for layer in summary.layers]
    done, cpu2 = time.perf_counter(), time.process_time()
    solver_sized = [layer.hypergraph(SAMPLE_NETS).dropped_share for layer in summary.layers]
    print(json.dumps({
        "read": read_s, "read_cpu": read_cpu, "summarize": done - begun, "cpu": cpu2 - cpu1,
        "rows": trace.num_tokens * trace.num_layers, "sets": float(np.mean([len(h.nets) for h in hypergraphs])),
        "dropped": [float(summary.dropped_shares.min()), float(summary.dropped_shares.max())],
        "hg_dropped": [min(solver_sized), max(solver_sized)], "sample_nets": SAMPLE_NETS,
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))


def run_child(trace: Path, workers: int, cap: str, streamed: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--trace", str(trace),
           "--workers", str(workers), "--cap", cap, *(["--streamed"] if streamed else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_placement(trace_path: Path, cap: int, workers: int) -> None:
    """Spectral placements from the exact and the capped summary, replayed on held-out routing."""
    from placer import baseline
    from placer.evaluation.replay import evaluate
    from placer.graph import summarize
    from placer.request import PlacementProblem, SolverSettings
    from placer.solvers import solve
    from placer.topology import Topology
    from placer.trace import TraceSource

    topology = Topology("bench", 32, 8, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
    trace = TraceSource(trace_path).load()
    test = routing(SHAPE, 100_000, "test")[0]
    contiguous = evaluate(test, baseline("contiguous", SHAPE.layers, SHAPE.experts, 256, 8), topology).totals
    print("\n| summary | placement time s | layers with dropped sets | held-out inter-node x contiguous "
          "| NIC peak x contiguous |")
    print("|---|---|---|---|---|")
    placements = {}
    for name, max_nets in (("exact", None), (f"capped {cap}", cap)):
        summary = summarize(trace, workers=workers, max_nets=max_nets)
        started = time.perf_counter()
        placement, _ = solve(summary, PlacementProblem(topology), SolverSettings(solver="spectral", workers=workers))
        took = time.perf_counter() - started
        totals = evaluate(test, placement, topology).totals
        placements[name] = placement.phy2log
        print(f"| {name} | {took:.1f} | {int((summary.dropped_shares > 0).sum())} "
              f"| {totals['internode_tokens_dedup'] / contiguous['internode_tokens_dedup']:.3f} "
              f"| {totals['nic_peak_tokens'] / contiguous['nic_peak_tokens']:.3f} |", flush=True)
    same = np.array_equal(*placements.values())
    print(f"\nidentical placements: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--caps", default="all,32768", help="streaming caps: 'all' (exact) or a count")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "placer-bench-scale"))
    parser.add_argument("--compare-placement", action="store_true")
    parser.add_argument("--streamed", action="store_true", help="summarise the file streamed from disk")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", help=argparse.SUPPRESS)
    parser.add_argument("--cap", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workers = int(args.workers)
        child(args)
        return
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path, generator = cached_train(SHAPE, args.tokens, cache)
    run_child(path, 1, "all")  # warm-up: numba cache, page cache
    print(f"placer bench_ingest: {os.cpu_count()} cores, {args.tokens:,} tokens x {SHAPE.layers} layers x "
          f"top-{SHAPE.top_k}, {SHAPE.experts} experts ({generator}); load average at start "
          f"{os.getloadavg()[0]:.1f}{'; streamed from disk (read inside summarize)' if args.streamed else ''}\n",
          flush=True)
    print("| workers | cap (sets/layer) | read s | summarize s | M rows/s (wall) | M rows/CPU-s | CPU s "
          "| distinct sets/layer kept | dropped by streaming cap | hypergraph dropped at SAMPLE_NETS "
          "| peak RSS GB | load avg |")
    print("|---" * 12 + "|", flush=True)
    for workers in (int(w) for w in args.workers.split(",")):
        for cap in args.caps.split(","):
            load = os.getloadavg()[0]
            runs = [run_child(path, workers, cap, args.streamed) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["summarize"])
            rows = best["rows"] / 1e6
            print(f"| {workers} | {cap} | {best['read']:.1f} | {best['summarize']:.2f} "
                  f"| {rows / best['summarize']:.1f} | {rows / best['cpu']:.1f} | {best['cpu']:.1f} "
                  f"| {best['sets']:,.0f} | {best['dropped'][0]:.1%}..{best['dropped'][1]:.1%} "
                  f"| {best['hg_dropped'][0]:.1%}..{best['hg_dropped'][1]:.1%} (SAMPLE_NETS {best['sample_nets']}) "
                  f"| {best['rss']:.2f} | {load:.1f} |", flush=True)
    if args.compare_placement:
        caps = [_cap(c) for c in args.caps.split(",") if c != "all"]
        compare_placement(path, caps[0] if caps else 32768, max(int(w) for w in args.workers.split(",")))


if __name__ == "__main__":
    main()
