"""Placement at scale: end-to-end time of ``spectral`` and ``auto`` at frontier MoE shapes.

Run from the repository root:

    python benchmarks/bench_scale.py [--rows main,tokens,experts,nodes] [--repeat 2]
        [--workers 2] [--scaling-layers 8] [--cache-dir /tmp/placer-bench-scale] [--quick]

Prints a markdown table. Each timed run is a fresh process that reads the saved
``.npz`` trace (``TraceSource``), summarises it and places every layer with
``place(..., workers=W)`` at the default ``time_limit`` (60 s; the scaling rows get
60 x layers / 58, the same per-layer budget as the DeepSeek-V3 row); trace generation is
not timed (the traces are cached in ``--cache-dir``). Columns: seconds to read and
validate the .npz, to summarise it (``summarize(..., workers=W)``) and to solve, the
total (each min..max over ``--repeat`` runs), the CPU seconds of all processes (what
the run costs on an idle machine), the held-out inter-node
tokens (deduplicated, token source t mod P, normal dispatch; placer's evaluator) and
NIC peak as ratios to the contiguous placement on a second synthetic trace (the
``test`` split, or another seed with drift), and the peak RSS of the main process
and of the largest worker.

Rows: ``main`` = DeepSeek-V3 shape (256 experts x 58 layers, top-8) on 32 x 8 GPUs and
Kimi-K2 shape (384 x 60, top-8) on 48 x 8, from 1M-token traces (the issue's floors:
spectral < 60 s, auto < 300 s); ``tokens`` / ``experts`` / ``nodes`` = scaling rows on
``--scaling-layers`` layers (tokens 100k/300k/1M at 256 experts on 32 x 8; experts
64/128/256 at 1M tokens on 8 x 8; nodes 8/16/32 x 8 GPUs at 256 experts, 1M tokens).

Routing comes from :mod:`placer.studies.synth` when it has the ``deepseek-v3`` and
``kimi-k2`` presets, else from a small generator here: per layer log-normal expert
popularity, latent topics (clusters of co-activated experts) that persist along the
token stream, and top-k without replacement (Gumbel-top-k / Plackett-Luce).
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
from dataclasses import dataclass, replace
from pathlib import Path

import numba as nb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from placer import baseline
from placer.evaluation.replay import evaluate
from placer.placement import Placement
from placer.topology import Topology
from placer.trace import Trace, TraceSource, save_trace

TEST_TOKENS = 100_000
MAIN = ("DeepSeek-V3", "Kimi-K2")
SIMPLE_VERSION = 2  # bump when simple_routing changes (names the cached traces)


# ---------------------------------------------------------------- synthetic routing


@dataclass(frozen=True)
class Shape:
    name: str
    experts: int
    layers: int
    top_k: int = 8


def _synth_preset(shape: Shape):
    """The placer.studies.synth preset for the shape (None when synth lacks the frontier presets)."""
    try:
        from placer.studies import synth
    except ImportError:
        return None
    presets = getattr(synth, "PRESETS", {})
    if not {"deepseek-v3", "kimi-k2"} <= set(presets):
        return None
    base = synth.preset("kimi-k2" if shape.experts % 384 == 0 else "deepseek-v3")
    if (base.num_experts, base.num_layers, base.top_k) == (shape.experts, shape.layers, shape.top_k):
        return base
    params = replace(base, num_experts=shape.experts, num_layers=shape.layers, top_k=shape.top_k)
    if params.num_groups > 1 and shape.experts % params.num_groups:
        params = replace(params, num_groups=0, groups_per_token=0)
    return params


@nb.njit(cache=True)
def _mix(z):  # pragma: no cover - jitted
    """splitmix64 finaliser (uint64, wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(parallel=True, cache=True)
def _route(out, pop_cdf, cl_cdf, cl_members, cl_mass, topic, seeds):  # pragma: no cover - jitted
    """out: [tokens, layers, k]. Each token draws k distinct experts: with probability
    cl_mass[l, z] from its topic's cluster (by popularity), else from all experts by
    popularity; repeats are redrawn (= sampling without replacement from the mixture).
    Uniforms are counter-based hashes of (layer seed, token, draw)."""
    T, L, k = out.shape
    golden = np.uint64(0x9E3779B97F4A7C15)
    scale = 1.0 / 9007199254740992.0
    for t in nb.prange(T):
        for layer in range(L):
            state = _mix(np.uint64(seeds[layer]) ^ (np.uint64(t) * golden))
            z = topic[t]
            chosen = 0
            while chosen < k:
                state += golden
                u0 = float(_mix(state) >> np.uint64(11)) * scale
                state += golden
                u1 = float(_mix(state) >> np.uint64(11)) * scale
                if u0 < cl_mass[layer, z]:
                    i = min(
                        np.searchsorted(cl_cdf[layer, z], u1 * cl_cdf[layer, z, -1], side="right"),
                        cl_members.shape[2] - 1,
                    )
                    e = cl_members[layer, z, i]
                else:
                    e = min(
                        np.searchsorted(pop_cdf[layer], u1 * pop_cdf[layer, -1], side="right"), pop_cdf.shape[1] - 1
                    )
                dup = False
                for c in range(chosen):
                    if out[t, layer, c] == e:
                        dup = True
                if not dup:
                    out[t, layer, chosen] = e
                    chosen += 1


def simple_routing(
    shape: Shape,
    tokens: int,
    seed: int,
    drift: float = 0.0,
    topics: int = 32,
    cluster: int = 16,
    boost: float = 4.0,
    sigma: float = 0.6,
    persistence: float = 0.9,
) -> Trace:
    """Log-normal popularity, ``topics`` latent clusters of ``cluster`` experts per layer (weight
    x ``boost``), topics persisting along the stream. The model (popularity, clusters) depends
    on the shape only; ``seed`` draws the tokens, ``drift`` perturbs popularity (held-out)."""
    E, L = shape.experts, shape.layers
    rng = np.random.default_rng(1000 + E * 7 + L)
    pop = np.exp(sigma * rng.standard_normal((L, E)))
    members = np.stack([np.stack([rng.choice(E, cluster, replace=False) for _ in range(topics)]) for _ in range(L)])
    mix = rng.dirichlet(np.full(topics, 1.0))
    if drift:
        pop = pop * np.exp(drift * sigma * np.random.default_rng(seed + 17).standard_normal((L, E)))
    cl_w = np.take_along_axis(np.repeat(pop[:, None, :], topics, axis=1), members, axis=2)
    extra = (boost - 1.0) * cl_w.sum(axis=2)
    cl_mass = extra / (pop.sum(axis=1)[:, None] + extra)
    stream = np.random.default_rng(seed)
    new = stream.random(tokens) > persistence
    new[0] = True
    topic = stream.choice(topics, size=int(new.sum()), p=mix)[np.cumsum(new) - 1].astype(np.int64)
    out = np.empty((tokens, L, shape.top_k), np.int16 if E < 32768 else np.int32)
    _route(
        out,
        np.cumsum(pop, axis=1),
        np.cumsum(cl_w, axis=2),
        members.astype(np.int64),
        cl_mass,
        topic,
        stream.integers(0, 2**31 - 1, L).astype(np.int64),
    )
    return Trace(topk_ids=out, num_experts=E)


def routing(shape: Shape, tokens: int, split: str) -> tuple[Trace, str]:
    """(trace, generator name): ``train`` (seed 0) or the held-out ``test`` trace."""
    params = _synth_preset(shape)
    if params is not None:
        from placer.studies import synth

        return synth.generate(params, tokens, 0, split=split), "placer.studies.synth"
    if split == "train":
        return simple_routing(shape, tokens, seed=0), "simple"
    return simple_routing(shape, tokens, seed=1, drift=0.1), "simple"


def cached_train(shape: Shape, tokens: int, cache: Path) -> tuple[Path, str]:
    """Path of the saved train trace (generated once per shape and size)."""
    generator = "synth" if _synth_preset(shape) is not None else f"simple{SIMPLE_VERSION}"
    path = cache / f"{generator}-{shape.experts}x{shape.layers}-k{shape.top_k}-{tokens}.npz"
    if not path.exists():
        trace, _ = routing(shape, tokens, "train")
        save_trace(trace, path)
    return path, generator


# ---------------------------------------------------------------- one timed run (child process)


def child(args: argparse.Namespace) -> None:
    from placer.graph import summarize
    from placer.request import PlacementProblem, SolverSettings
    from placer.solvers import solve

    nodes, gpus = (int(x) for x in args.topology.split("x"))
    topology = Topology("bench", nodes, gpus, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
    # the same work as place(TraceSource(path), ...), timed in three steps
    started = time.perf_counter()
    chunks = [chunk.trace for chunk in TraceSource(args.trace).chunks()]  # read + validate
    trace = chunks[0] if len(chunks) == 1 else TraceSource(args.trace)
    read = time.perf_counter()
    summary = summarize(trace, workers=args.workers)
    summarized = time.perf_counter()
    placement, report = solve(
        summary,
        PlacementProblem(topology),
        SolverSettings(solver=args.solver, workers=args.workers, time_limit=args.time_limit),
    )
    done = time.perf_counter()
    np.save(args.out, placement.phy2log)
    sets = float(np.mean([len(layer.sets) for layer in summary.layers]))
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "read": read - started,
                "summarize": summarized - read,
                "solve": done - summarized,
                "total": done - started,
                "cpu": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
                "slots": placement.slots_per_gpu,
                "sets": sets,
                "messages": report.messages[-1:],
                "rss_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "rss_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
            }
        )
    )


def timed_run(trace: Path, topology: str, solver: str, workers: int, out: Path, time_limit: float) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--trace",
        str(trace),
        "--topology",
        topology,
        "--solver",
        solver,
        "--workers",
        str(workers),
        "--out",
        str(out),
        "--time-limit",
        str(time_limit),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    group: str
    shape: Shape
    nodes: int
    tokens: int
    gpus: int = 8


def rows(kinds: list[str], scaling_layers: int, quick: bool) -> list[Row]:
    out = []
    tokens = 100_000 if quick else 1_000_000
    if "main" in kinds:
        out += [Row(MAIN[0], Shape("dsv3", 256, 58), 32, tokens), Row(MAIN[1], Shape("kimi", 384, 60), 48, tokens)]
    L = scaling_layers
    if "tokens" in kinds:
        out += [
            Row("tokens", Shape("dsv3", 256, L), 32, t)
            for t in (100_000, 300_000, 1_000_000)
            if not quick or t <= 300_000
        ]
    if "experts" in kinds:
        out += [Row("experts", Shape("dsv3", e, L), 8, tokens) for e in (64, 128, 256)]
    if "nodes" in kinds:
        out += [Row("nodes", Shape("dsv3", 256, L), n, tokens) for n in (8, 16, 32)]
    return out


def warm_up(workers: int) -> None:
    """Compile (or load) every numba kernel once, untimed, so no row pays for JIT."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm.npz"
        save_trace(simple_routing(Shape("warm", 64, 2), 40_000, seed=0), path)
        for solver in ("spectral", "auto"):
            timed_run(path, "4x8", solver, 1, Path(tmp) / "p.npy", 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="main,tokens,experts,nodes")
    parser.add_argument("--solvers", default="spectral,auto")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scaling-layers", type=int, default=8)
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "placer-bench-scale"))
    parser.add_argument("--quick", action="store_true", help="100k-token traces (a smoke run)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", help=argparse.SUPPRESS)
    parser.add_argument("--topology", help=argparse.SUPPRESS)
    parser.add_argument("--solver", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="place()'s time_limit for the main rows (scaling rows: x layers / 58)",
    )
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    solvers = args.solvers.split(",")
    warm_up(args.workers)
    print(
        f"placer bench_scale: {os.cpu_count()} cores, workers={args.workers}, repeat={args.repeat}, "
        f"default time_limit (60 s); load average at start {os.getloadavg()[0]:.1f}\n",
        flush=True,
    )
    print(
        "| rows | experts x layers | nodes x GPUs | tokens | distinct sets/layer | solver | read s "
        "| summarize s | solve s | total s | CPU s | held-out inter-node x contiguous | NIC peak x contiguous "
        "| peak RSS main / worker GB | load avg | routing |"
    )
    print("|---" * 16 + "|", flush=True)
    tests: dict[Shape, Trace] = {}
    for row in rows(args.rows.split(","), args.scaling_layers, args.quick):
        path, generator = cached_train(row.shape, row.tokens, cache)
        if row.shape not in tests:
            tests[row.shape] = routing(row.shape, TEST_TOKENS, "test")[0]
        test = tests[row.shape]
        topology = Topology("bench", row.nodes, row.gpus, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
        contiguous = None
        # scaling rows get the main rows' per-layer budget (time_limit / 58 per layer)
        limit = args.time_limit if row.group in MAIN else round(args.time_limit * row.shape.layers / 58, 3)
        for solver in solvers:
            runs = []
            load = os.getloadavg()[0]
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "phy2log.npy"
                    runs.append(timed_run(path, f"{row.nodes}x{row.gpus}", solver, args.workers, out, limit))
                    phy2log = np.load(out)
            last = runs[-1]
            placement = Placement(phy2log, row.shape.experts, row.gpus, last["slots"], {})
            if contiguous is None:
                contiguous = evaluate(
                    test,
                    baseline("contiguous", row.shape.layers, row.shape.experts, topology.num_gpus, row.gpus),
                    topology,
                ).totals
            totals = evaluate(test, placement, topology).totals

            def spread(key: str, runs: list = runs) -> str:
                low, high = min(r[key] for r in runs), max(r[key] for r in runs)
                return f"{low:.1f}" if len(runs) == 1 else f"{low:.1f}..{high:.1f}"

            print(
                f"| {row.group} | {row.shape.experts} x {row.shape.layers} | {row.nodes} x {row.gpus} "
                f"| {row.tokens:,} | {last['sets']:,.0f} | {solver} | {spread('read')} | {spread('summarize')} "
                f"| {spread('solve')} | {spread('total')} | {spread('cpu')} "
                f"| {totals['internode_tokens_dedup'] / contiguous['internode_tokens_dedup']:.3f} "
                f"| {totals['nic_peak_tokens'] / contiguous['nic_peak_tokens']:.3f} "
                f"| {max(r['rss_main'] for r in runs):.2f} / {max(r['rss_worker'] for r in runs):.2f} "
                f"| {load:.1f} | {generator} |",
                flush=True,
            )
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; held-out traces: {TEST_TOKENS:,} tokens")


if __name__ == "__main__":
    main()
