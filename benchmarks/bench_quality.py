"""Placement quality on held-out ESFT tokens: placer vs Mt-KaHyPar vs the baselines.

Run from the repository root (needs ../shared/traces/esft-dsv2lite; Mt-KaHyPar
rows need `pip install -e ".[bench]"`):

    python benchmarks/bench_quality.py [--topologies 4x8,8x8] [--solvers spectral,auto]
        [--time-limit 60] [--boot 200] [--no-loto]

Prints markdown: per topology the held-out figures of every placement with
ratios to contiguous and to Mt-KaHyPar (same run, same split, same
topology), the issue's floors as PASS/FAIL, bootstrap 95% confidence
intervals of the ratios over test sequences, and leave-one-task-out results.
Every figure comes from placer's evaluator (token source t mod P, normal
dispatch, no replicas).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from placer import Placement, Topology, baseline, evaluate, from_expert_gpu, load_topology
from placer.esft import ESFT_TASKS, import_esft, read_esft_task
from placer.graph import TraceSummary, summarize
from placer.replay import count_traffic
from placer.solvers import place
from placer.solvers.api import longest_first_pack
from placer.trace import Trace, concatenate

ESFT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "esft-dsv2lite"
METRICS = ("internode_tokens_dedup", "nic_peak_tokens", "gpu_peak_load")


def mtkahypar_placement(summary: TraceSummary, topology: Topology) -> Placement:
    """The benchmark peer: Mt-KaHyPar QUALITY preset, seed 0, one thread, km1, equal expert
    counts per node (epsilon 0), then longest-first packing by train load onto GPUs with
    equal counts per GPU."""
    import mtkahypar

    if not hasattr(mtkahypar_placement, "library"):
        mtkahypar_placement.library = mtkahypar.initialize(1, False)
    library = mtkahypar_placement.library
    mtkahypar.set_seed(0)
    nodes, gpus = topology.nodes, topology.gpus_per_node
    experts = summary.num_experts
    slots = -(-experts // topology.num_gpus)
    expert_gpu = np.zeros((len(summary.layers), experts), dtype=np.int64)
    for layer, part in enumerate(summary.layers):
        context = library.context_from_preset(mtkahypar.PresetType.QUALITY)
        context.set_partitioning_parameters(nodes, 0.0, mtkahypar.Objective.KM1)
        context.logging = False
        nets = [list(row[row >= 0]) for row in part.sets]
        graph = library.create_hypergraph(context, experts, len(nets), nets, [1] * experts,
                                          part.set_counts.tolist())
        blocks = graph.partition(context)
        node = np.array([blocks.block_id(e) for e in range(experts)])
        for n in range(nodes):
            members = np.flatnonzero(node == n)
            expert_gpu[layer, members] = n * gpus + longest_first_pack(members, part.loads, gpus, slots)
    return from_expert_gpu(expert_gpu, topology.num_gpus, gpus, slots, {"solver": {"name": "mtkahypar"}})


@dataclass
class Entry:
    name: str
    placement: Placement
    seconds: float
    note: str = ""


def placements(train: Trace, topology: Topology, solvers: list[str], time_limit: float,
               baselines: tuple[str, ...] = ("contiguous", "round-robin", "random")) -> list[Entry]:
    """Baselines, Mt-KaHyPar (when installed) and placer's solvers, all solved on ``train``."""
    entries = [Entry(name, baseline(name, train.num_layers, train.num_experts, topology.num_gpus,
                                    topology.gpus_per_node), 0.0) for name in baselines]
    summary = summarize(train)
    try:
        started = time.perf_counter()
        entries.append(Entry("mtkahypar", mtkahypar_placement(summary, topology), time.perf_counter() - started))
    except ImportError:
        pass
    for solver in solvers:
        started = time.perf_counter()
        chosen, report = place(summary, topology, solver=solver, time_limit=time_limit, workers=2)
        entries.append(Entry(f"placer {solver}", chosen, time.perf_counter() - started, report.summary()))
    return entries


def ratio(value: float, reference: dict | None, key: str) -> str:
    return f"{value / reference[key]:.3f}" if reference else "n/a"


def held_out_table(entries: list[Entry], test: Trace, topology: Topology) -> tuple[str, dict]:
    totals = {e.name: evaluate(test, e.placement, topology).totals for e in entries}
    contiguous, peer = totals["contiguous"], totals.get("mtkahypar")
    lines = [("| placement | solve s | inter-node tokens | x contiguous | x Mt-KaHyPar | NIC peak | x contiguous "
             "| x Mt-KaHyPar | GPU peak | x Mt-KaHyPar | GPU max/mean |"), "|---" * 11 + "|"]
    for e in entries:
        t = totals[e.name]
        lines.append(
            f"| {e.name} | {e.seconds:.1f} | {t['internode_tokens_dedup']:,} "
            f"| {ratio(t['internode_tokens_dedup'], contiguous, 'internode_tokens_dedup')} "
            f"| {ratio(t['internode_tokens_dedup'], peer, 'internode_tokens_dedup')} | {t['nic_peak_tokens']:,} "
            f"| {ratio(t['nic_peak_tokens'], contiguous, 'nic_peak_tokens')} "
            f"| {ratio(t['nic_peak_tokens'], peer, 'nic_peak_tokens')} | {t['gpu_peak_load']:,} "
            f"| {ratio(t['gpu_peak_load'], peer, 'gpu_peak_load')} | {t['gpu_load_imbalance']:.3f} |"
        )
    return "\n".join(lines), totals


def floors(totals: dict, entries: list[Entry], nodes: int) -> list[str]:
    """The issue's floors for placer auto (and the spectral time floor)."""
    lines = []
    seconds = {e.name: e.seconds for e in entries}
    auto, peer, contiguous = totals.get("placer auto"), totals.get("mtkahypar"), totals["contiguous"]
    checks = []
    if auto:
        checks.append(("inter-node <= 0.75 x contiguous",
                       auto["internode_tokens_dedup"] / contiguous["internode_tokens_dedup"], 0.75))
        if peer:
            checks += [
                ("inter-node <= 1.02 x Mt-KaHyPar", auto["internode_tokens_dedup"] / peer["internode_tokens_dedup"], 1.02),
                ("NIC peak <= 0.90 x Mt-KaHyPar", auto["nic_peak_tokens"] / peer["nic_peak_tokens"], 0.90),
                ("GPU peak <= Mt-KaHyPar", auto["gpu_peak_load"] / peer["gpu_peak_load"], 1.0),
            ]
        if nodes == 8:
            checks.append(("auto wall < 120 s", seconds["placer auto"], 120.0))
    if nodes == 8 and "placer spectral" in seconds:
        checks.append(("spectral wall < 15 s", seconds["placer spectral"], 15.0))
    for name, value, limit in checks:
        lines.append(f"- {'PASS' if value <= limit else 'FAIL'}: {name} (measured {value:.3f})")
    return lines


def sequence_counters(test: Trace, entry: Entry, topology: Topology) -> dict[str, np.ndarray]:
    """Additive evaluator counters per test sequence: name -> [sequences, layers, ...].

    Each sequence is replayed alone with its tokens pinned to the source GPUs they
    have in the whole trace (``src_rank``), so resampled sums equal whole-trace counters.
    """
    sources = np.arange(test.num_tokens) % topology.num_gpus
    pinned = replace(test, src_rank=sources)
    per_sequence = [count_traffic(pinned.sequence_slice(s, s + 1), entry.placement, topology)
                    for s in range(len(test.seq_lens))]
    keys = ("internode_tokens_dedup", "node_recv_dedup", "gpu_load")
    return {key: np.stack([c[key] for c in per_sequence]) for key in keys}


def resampled_totals(counters: dict[str, np.ndarray], pick: np.ndarray) -> dict[str, float]:
    summed = {key: value[pick].sum(axis=0) for key, value in counters.items()}
    return {
        "internode_tokens_dedup": float(summed["internode_tokens_dedup"].sum()),
        "nic_peak_tokens": float(summed["node_recv_dedup"].max(axis=1).sum()),
        "gpu_peak_load": float(summed["gpu_load"].max(axis=1).sum()),
    }


def bootstrap_table(entries: list[Entry], test: Trace, topology: Topology, reps: int) -> str:
    """95% CIs of placer's ratios to contiguous and Mt-KaHyPar, resampling test sequences."""
    keep = [e for e in entries if e.name in ("contiguous", "mtkahypar") or e.name.startswith("placer")]
    counters = {e.name: sequence_counters(test, e, topology) for e in keep}
    rng = np.random.default_rng(0)
    sequences = len(test.seq_lens)
    samples: dict[str, list[dict]] = {e.name: [] for e in keep}
    for _ in range(reps):
        pick = rng.integers(sequences, size=sequences)
        for name, value in counters.items():
            samples[name].append(resampled_totals(value, pick))
    lines = ["| placement | metric | x contiguous [95% CI] | x Mt-KaHyPar [95% CI] |", "|---|---|---|---|"]
    for e in keep:
        if not e.name.startswith("placer"):
            continue
        for key in METRICS:
            cells = []
            for reference in ("contiguous", "mtkahypar"):
                if reference not in samples:
                    cells.append("n/a")
                    continue
                ratios = [a[key] / b[key] for a, b in zip(samples[e.name], samples[reference])]
                low, mid, high = np.percentile(ratios, [2.5, 50, 97.5])
                cells.append(f"{mid:.3f} [{low:.3f}, {high:.3f}]")
            lines.append(f"| {e.name} | {key} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def leave_one_task_out(topology: Topology, solvers: list[str], time_limit: float) -> str:
    tasks = {name: read_esft_task(ESFT / name) for name in ESFT_TASKS}
    lines = [("| held-out task | placement | inter-node x contiguous | x Mt-KaHyPar | NIC peak x contiguous "
             "| x Mt-KaHyPar | GPU peak x Mt-KaHyPar |"), "|---" * 7 + "|"]
    for held_out in ESFT_TASKS:
        train = concatenate([tasks[name] for name in ESFT_TASKS if name != held_out])
        entries = placements(train, topology, solvers, time_limit, baselines=("contiguous",))
        totals = {e.name: evaluate(tasks[held_out], e.placement, topology).totals for e in entries}
        contiguous, peer = totals["contiguous"], totals.get("mtkahypar")
        for e in entries[1:]:
            t = totals[e.name]
            lines.append(
                f"| {held_out} | {e.name} | {ratio(t['internode_tokens_dedup'], contiguous, 'internode_tokens_dedup')} "
                f"| {ratio(t['internode_tokens_dedup'], peer, 'internode_tokens_dedup')} "
                f"| {ratio(t['nic_peak_tokens'], contiguous, 'nic_peak_tokens')} "
                f"| {ratio(t['nic_peak_tokens'], peer, 'nic_peak_tokens')} | {ratio(t['gpu_peak_load'], peer, 'gpu_peak_load')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esft", type=Path, default=ESFT, help="ESFT traces root")
    parser.add_argument("--topologies", default="4x8,8x8")
    parser.add_argument("--solvers", default="spectral,auto")
    parser.add_argument("--loto-solvers", default="spectral")
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--loto", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if not args.esft.is_dir():
        print(f"ESFT traces not found at {args.esft}: nothing to measure.", file=sys.stderr)
        return 1
    train, test = import_esft(args.esft, split=True)
    hardware = load_topology("h100-dgx")
    print(f"ESFT split: train {train.num_tokens:,} tokens, held-out test {test.num_tokens:,} tokens, "
          f"{train.num_layers} layers, top-{train.top_k} of {train.num_experts}")
    try:
        import mtkahypar  # noqa: F401
    except ImportError:
        print("\nMt-KaHyPar is not installed (pip install -e \".[bench]\"): its rows and ratios are n/a.")
    for shape in args.topologies.split(","):
        nodes, gpus = map(int, shape.split("x"))
        topology = hardware.resized(nodes, gpus)
        print(f"\n## {nodes} nodes x {gpus} GPUs\n")
        entries = placements(train, topology, args.solvers.split(","), args.time_limit)
        table, totals = held_out_table(entries, test, topology)
        print(table + "\n")
        print("\n".join(floors(totals, entries, nodes)))
        for e in entries:
            if e.note:
                print(f"- {e.name}: {e.note}")
        if args.boot:
            print(f"\n### Bootstrap over {len(test.seq_lens)} test sequences ({args.boot} resamples)\n")
            print(bootstrap_table(entries, test, topology, args.boot))
        if args.loto:
            print("\n### Leave one task out (solve on three tasks, replay the fourth)\n")
            print(leave_one_task_out(topology, args.loto_solvers.split(","), args.time_limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
