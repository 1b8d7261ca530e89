"""Bounded memory: stream a ~5 GB sharded synthetic trace to a placement, measuring peak RSS.

Run from the repository root:

    python benchmarks/bench_stream.py [--tokens 5400000] [--shard-tokens 262144]
        [--solver spectral] [--workers 2] [--max-nets auto] [--cache-dir /tmp/placer-bench-stream]

Prints a markdown table. The trace is the ``deepseek-v3`` synthetic preset (256 experts x
58 layers, top-8; 5.4M tokens = 5.0 GB of int16 expert ids), written once as shards of
``--shard-tokens`` tokens (``placer.studies.synth.write_shards``) into the cache directory, not timed.
The timed run is a fresh process doing what ``placer place --trace DIR`` does:
``place(TraceSource(DIR), 32 x 8 GPUs, solver=..., workers=W, max_nets=...)`` (the default
``auto`` cap keeps as many distinct top-k sets per layer as the solver's search uses), then
the trace digest the CLI writes into the placement file. Peak RSS: the process's high-water
mark (``/proc/self/status`` VmHWM) and the largest worker process (``RUSAGE_CHILDREN``).
``dropped`` is the share of each layer's tokens whose set the streaming cap left out.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _vm_hwm_gb() -> float:
    """Peak resident set of this process (VmHWM), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(args: argparse.Namespace) -> None:
    from placer.request import PlacementProblem, SolverSettings
    from placer.solvers import solve
    from placer.topology import Topology
    from placer.trace import TraceSource, trace_digest

    topology = Topology("bench", 32, 8, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
    max_nets = None if args.max_nets == "all" else args.max_nets if args.max_nets == "auto" else int(args.max_nets)
    started = time.perf_counter()
    source = TraceSource(args.trace)
    placement, report = solve(
        source, PlacementProblem(topology), SolverSettings(solver=args.solver, workers=args.workers, max_nets=max_nets)
    )
    placed = time.perf_counter()
    digest = trace_digest(source)
    done = time.perf_counter()
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "tokens": source.num_tokens,
                "shards": len(source.shards),
                "place": placed - started,
                "digest": done - placed,
                "cpu": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
                "rss_main": _vm_hwm_gb(),
                "rss_worker": kids.ru_maxrss / 2**20,
                "sha": digest[:12],
                "notes": [m for m in report.messages if "streaming cap" in m],
                "objective": report.objective,
                "experts_placed": int((placement.phy2log >= 0).sum()),
            }
        )
    )


def cached_shards(tokens: int, shard_tokens: int, cache: Path) -> Path:
    """The sharded trace directory (written once; a partial write is never reused)."""
    from placer.studies import synth

    out = cache / f"dsv3-{tokens}-s{shard_tokens}"
    if not out.is_dir():
        partial = cache / f"{out.name}.partial"
        synth.write_shards(synth.preset("deepseek-v3"), tokens, partial, shard_tokens, overwrite=True)
        partial.rename(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=5_400_000)
    parser.add_argument("--shard-tokens", type=int, default=262_144)
    parser.add_argument("--solver", default="spectral")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-nets", default="auto", help="'auto', 'all' or a count")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "placer-bench-stream"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    trace = cached_shards(args.tokens, args.shard_tokens, cache)
    raw_gb = args.tokens * 58 * 8 * 2 / 1e9
    load = os.getloadavg()[0]
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--trace",
        str(trace),
        "--solver",
        args.solver,
        "--workers",
        str(args.workers),
        "--max-nets",
        args.max_nets,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"placer bench_stream: {os.cpu_count()} cores; deepseek-v3 preset, {r['tokens']:,} tokens x 58 layers x "
        f"top-8 ({raw_gb:.1f} GB of int16 ids) in {r['shards']} shards of {args.shard_tokens:,} tokens\n"
    )
    print(
        "| solver | workers | max-nets | place s (read + summarize + solve) | digest s | CPU s "
        "| peak RSS main GiB | peak RSS worker GiB | dropped by streaming cap | load avg |"
    )
    print("|---" * 10 + "|")
    dropped = r["notes"][0].split("dropping ")[1].split(" of")[0] if r["notes"] else "0%"
    print(
        f"| {args.solver} | {args.workers} | {args.max_nets} | {r['place']:.0f} | {r['digest']:.0f} | {r['cpu']:.0f} "
        f"| {r['rss_main']:.2f} | {r['rss_worker']:.2f} | {dropped} | {load:.1f} |"
    )
    for note in r["notes"]:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
