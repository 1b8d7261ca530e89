"""Dask backend: speed-up from 1 to 2 workers, and a model of the behaviour at scale.

Run from the repository root (needs the ``dask`` extra):

    python benchmarks/bench_dask.py [--preset deepseek-v3] [--tokens 200000]
        [--shard-tokens 25000] [--nodes 32] [--solver spectral] [--cache-dir DIR]

Writes a sharded synthetic trace once (``placer synth``, cached in ``--cache-dir``), then:

1. in-process, one core, instrumented: seconds to read + summarise each shard, of each
   merge of the merge tree (:func:`placer.graph.merge_in_order`), of each layer's solve
   (:func:`placer.solvers.pipeline.solve_layer`) and of the trace digest;
2. the same work on ``local:1`` and ``local:2`` (:mod:`placer.cluster`; worker start-up
   and numba loading are not timed): wall seconds of the summary (shards, then merges one
   task per layer, on the workers; the result gathered by the client), of ``place`` on
   that summary (problems built on the client, scattered, solved one task per layer,
   gathered) and of the digest (one task, overlapping the rest), and whether the
   placements are identical;
3. a model fitted on step 1: W workers take about ``client + shards / W + merge chain +
   LPT(layer solves, W)``, where the merge chain is the path of merges that cannot start
   before their last input (simulated on the tree, per layer), and ``client`` is what
   step 2 measured beyond the workers' compute at W = 1 (transfers, problem building).

Prints markdown tables. Wall-clock figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from placer import instances
from placer.cluster import connect
from placer.graph import TraceSummary, merge_in_order, summarize
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve
from placer.solvers.options import Options
from placer.solvers.pipeline import solve_layer
from placer.solvers.problem import build_problems
from placer.studies import synth
from placer.trace import TraceSource, trace_digest, validate_arrays

TIME_LIMIT = 60.0


def _timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def _warm_up() -> None:
    """Runs on every worker: load the numba kernels and the solver before timing."""
    rng = np.random.default_rng(0)
    ids = np.argsort(rng.random((64, 2, 16)), axis=2)[:, :, :4]
    summary = summarize(validate_arrays("warm-up", {"topk_ids": ids}, num_experts=16))
    for problem in build_problems(summary, 2, 2):
        solve_layer(problem, Options("spectral", 0, None, 15, 0.2))


def trace_dir(args: argparse.Namespace) -> Path:
    """The cached sharded trace (written once)."""
    out = Path(args.cache_dir) / f"{args.preset}-{args.tokens}-{args.shard_tokens}"
    if not out.is_dir():
        synth.write_trace(synth.load_params(args.preset), args.tokens, out, shard_tokens=args.shard_tokens)
    return out


def in_process(source: TraceSource, topology, args: argparse.Namespace) -> dict:
    """Step 1: per-shard, per-merge, per-layer and digest seconds on one core, and the placement."""
    shard_s: list[float] = []
    merge_s: list[float] = []
    layer_s: list[float] = []

    def shard(index: int) -> tuple[int, TraceSummary]:
        part, seconds = _timed(lambda: summarize(source.read_shard(index)))
        shard_s.append(seconds)
        return source.shard_tokens[index], part

    def merge(a: TraceSummary, b: TraceSummary) -> TraceSummary:
        merged, seconds = _timed(a.merge, b)
        merge_s.append(seconds)
        return merged

    def timed_map(fn, items):
        results = [_timed(fn, item) for item in items]
        layer_s.extend(seconds for _, seconds in results)
        return [result for result, _ in results]

    summary, summarise_s = _timed(lambda: merge_in_order(map(shard, range(len(source.shards))), merge))
    (placement, _), solve_s = _timed(
        lambda: solve(
            summary,
            PlacementProblem(topology),
            SolverSettings(solver=args.solver, time_limit=TIME_LIMIT, mapper=timed_map),
        )
    )
    _, digest_s = _timed(trace_digest, source)
    return {
        "placement": placement,
        "shard_s": shard_s,
        "merge_s": merge_s,
        "summarise_s": summarise_s,
        "solve_s": solve_s,
        "layer_s": layer_s,
        "digest_s": digest_s,
    }


def merge_chain(source: TraceSource, shard_s: list[float], merge_s: list[float], workers: int) -> float:
    """Seconds of the summary on ``workers`` workers, simulated on the merge tree: shards start
    in order on the first free worker; a merge, as one task per layer (its measured seconds
    split evenly), when both inputs are done (and a worker is free)."""
    free = [0.0] * workers
    done_merges = iter(merge_s)
    layers = source.num_layers

    def run(ready: float, seconds: float) -> float:
        start = max(heapq.heappop(free), ready)
        heapq.heappush(free, start + seconds)
        return start + seconds

    def shard(index: int) -> tuple[int, float]:
        return source.shard_tokens[index], run(0.0, shard_s[index])

    def merge(a: float, b: float) -> float:
        seconds = next(done_merges) / layers
        return max(run(max(a, b), seconds) for _ in range(layers))

    return merge_in_order(map(shard, range(len(shard_s))), merge)


def lpt(seconds: list[float], workers: int) -> float:
    """Makespan of longest-processing-time-first list scheduling."""
    loads = [0.0] * workers
    for value in sorted(seconds, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + value)
    return max(loads)


def on_cluster(source: TraceSource, topology, args: argparse.Namespace, workers: int) -> dict:
    """Step 2: wall seconds on ``local:workers``."""
    with connect(f"local:{workers}") as cluster:
        cluster.client.run(_warm_up)
        started = time.perf_counter()
        digest = cluster.submit(trace_digest, source)
        summary, summarise_s = _timed(cluster.summarize, source)
        (placement, _), solve_s = _timed(
            lambda: solve(
                summary,
                PlacementProblem(topology),
                SolverSettings(solver=args.solver, time_limit=TIME_LIMIT, mapper=cluster.map),
            )
        )
        digest.result()
        total_s = time.perf_counter() - started
    return {"summarise_s": summarise_s, "solve_s": solve_s, "total_s": total_s, "placement": placement}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="deepseek-v3")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--shard-tokens", type=int, default=25_000)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--solver", default="spectral")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "placer-bench-dask"))
    args = parser.parse_args()

    source = TraceSource(trace_dir(args))
    topology = instances.load_topology("h100-dgx").resized(args.nodes, None)
    local = in_process(source, topology, args)
    runs = {w: on_cluster(source, topology, args, w) for w in (1, 2)}
    identical = all(np.array_equal(r["placement"].phy2log, local["placement"].phy2log) for r in runs.values())

    shards, layers = local["shard_s"], local["layer_s"]
    merges = local["merge_s"]
    print(
        f"## Dask backend: {args.preset}, {source.num_tokens:,} tokens in {len(shards)} shards x "
        f"{source.num_layers} layers, {args.solver} on {topology.nodes} x {topology.gpus_per_node} GPUs\n"
    )
    print(f"Placements identical to the in-process one on local:1 and local:2: {identical}.\n")
    print("| step | in-process, 1 core (s) | local:1 (s) | local:2 (s) | speed-up 1 -> 2 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    local["total_s"] = local["summarise_s"] + local["solve_s"] + local["digest_s"]
    for name, key in (
        ("summarise (read + summarise shards, merge)", "summarise_s"),
        ("place (build problems, one task per layer)", "solve_s"),
        ("total (in-process: + digest; Dask: digest overlaps)", "total_s"),
    ):
        one, two = runs[1][key], runs[2][key]
        print(f"| {name} | {local[key]:.1f} | {one:.1f} | {two:.1f} | {one / two:.2f} |")

    print(
        f"\nIn-process parts: {len(shards)} shards {sum(shards):.1f} s (each {min(shards):.2f}.."
        f"{max(shards):.2f}), {len(merges)} merges {sum(merges):.1f} s (largest "
        f"{max(merges):.2f}), {len(layers)} layer solves {sum(layers):.1f} s "
        f"(each {min(layers):.2f}..{max(layers):.2f}), digest {local['digest_s']:.1f} s "
        "(one task, overlaps).\n"
    )
    compute_1 = merge_chain(source, shards, merges, 1) + lpt(layers, 1)
    client = max(0.0, runs[1]["summarise_s"] + runs[1]["solve_s"] - compute_1)
    print(
        f"Model: client + summary(W) + LPT(layer solves, W), client = {client:.1f} s (measured at "
        "W = 1 beyond the workers' compute: transfers of the merged summary and of the problems, "
        "building the problems). Summary(W) is simulated on the merge tree (merges one task per "
        "layer); the layer solves cap "
        f"the solve's speed-up at {len(layers)} workers (one task per layer).\n"
    )
    print("| workers W | summary (s) | of which serial merge chain (s) | solve (s) | total (s) | speed-up |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for workers in (1, 2, 4, 8, 16, 32, 64, 128):
        summary_w = merge_chain(source, shards, merges, workers)
        chain = merge_chain(source, [0.0] * len(shards), merges, workers)
        solve_w = lpt(layers, workers)
        total = client + summary_w + solve_w
        print(
            f"| {workers} | {summary_w:.1f} | {chain:.1f} | {solve_w:.1f} | {total:.1f} | "
            f"{(client + compute_1) / total:.2f} |"
        )


if __name__ == "__main__":
    main()
