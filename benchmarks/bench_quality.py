"""Placement quality on held-out tokens: every solver and baseline, ESFT and synthetic presets.

Run from the repository root (the ESFT part needs ../shared/traces/esft-dsv2lite;
Mt-KaHyPar rows need `pip install -e ".[bench]"`):

    python benchmarks/bench_quality.py [--suites esft,synth,scale] [--quick]
        [--topologies 4x8,8x8] [--solvers spectral,ilp,auto] [--placements NAMES]
        [--presets esft,deepseek-v3,kimi-k2,qwen3-235b,seed001] [--train-tokens 200000]
        [--test-tokens 100000] [--scale-train-tokens 500000] [--cache-dir DIR]
        [--time-limit 60] [--workers 2] [--boot 200] [--no-loto]

Suites (markdown on stdout; every figure from placer's evaluator: token source
t mod P, normal dispatch, ``nearest`` replica rule):

- ``esft``: the ESFT split (solve on train, replay the held-out half) per
  topology: every placement with ratios to contiguous and Mt-KaHyPar, the
  floors as PASS/FAIL, bootstrap 95% intervals over test sequences,
  leave-one-task-out; plus the all-placement table below.
- ``synth``: each synthetic preset at its topology (esft 4 x 8, deepseek-v3
  32 x 8, kimi-k2 48 x 8, qwen3-235b 16 x 8, seed001 8 x 8), solved on the
  ``train`` split, replayed on the drifted ``test`` split: held-out inter-node
  bytes, NIC peak, GPU peak, mean nodes per token, estimated all-to-all time
  and solve time, with ratios to contiguous and to EPLB.
- ``scale``: the quality-at-scale floor: DeepSeek-V3 preset on 32 x 8, 64 x 8
  and 16 x 8 (``--scale-topologies``), placer ``--keep-groups`` vs EPLB at the
  same slots per GPU (the fewest holding every expert, and one more; the same
  redundant experts for both), same dispatch rule; PASS/FAIL of inter-node
  <= 0.85 x EPLB and GPU peak <= 1.05 x EPLB, whether the groups kept disjoint
  node sets, and a GPU-peak reference: EPLB's balancing run inside each kept
  group's node set, every figure with each expert's load split evenly over
  its copies.

Placements: contiguous, round-robin, random, eplb, trtllm-cooc (TensorRT-LLM's
co-occurrence example, ``benchmarks/engine_peers.py``), mtkahypar (when installed),
spectral, ilp, auto (``--placements`` selects). Synthetic traces are cached in
``--cache-dir``. ``--quick``: 20k/10k-token synthetic traces, spectral only,
no bootstrap or leave-one-task-out. Solve times are wall seconds (noisy on a
shared machine); everything else is deterministic.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from engine_peers import trtllm_cooccurrence_placement
from peers import mtkahypar_placement  # Mt-KaHyPar QUALITY km1 + longest-first packing ("mtk-km1")

from placer import (
    Placement,
    Topology,
    baseline,
    evaluate,
    load_topology,
)
from placer.constraints import group_mask
from placer.eplb import rebalance_experts
from placer.evaluation.replay import count_traffic
from placer.formats.esft import ESFT_TASKS, import_esft, read_esft_task
from placer.graph import TraceSummary, expert_loads, summarize
from placer.instances import load_model
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve as run_solver
from placer.studies import synth
from placer.topology import Model
from placer.trace import Trace, concatenate, load_trace

ESFT = ROOT.parent / "shared" / "traces" / "esft-dsv2lite"
METRICS = ("internode_tokens_dedup", "nic_peak_tokens", "gpu_peak_load")
BASELINES = ("contiguous", "round-robin", "random")
PLACEMENTS = (*BASELINES, "eplb", "trtllm-cooc", "mtkahypar", "spectral", "ilp", "auto")
#: synthetic preset -> (model preset, nodes x GPUs)
PRESETS = {
    "esft": ("deepseek-v2-lite", "4x8"),
    "deepseek-v3": ("deepseek-v3", "32x8"),
    "kimi-k2": ("kimi-k2", "48x8"),
    "qwen3-235b": ("qwen3-235b-a22b", "16x8"),
    "seed001": ("seed001", "8x8"),
}


@dataclass
class Entry:
    name: str
    placement: Placement
    seconds: float
    note: str = ""


def solve(
    summary: TraceSummary,
    topology: Topology,
    names: list[str],
    time_limit: float,
    model: Model | None = None,
    workers: int = 2,
    **options,
) -> list[Entry]:
    """The named placements (see :data:`PLACEMENTS`), all from ``summary`` (Mt-KaHyPar skipped
    when not installed, TensorRT-LLM's co-occurrence rule when the GPUs do not divide the experts);
    ``workers`` and ``options`` go to :func:`placer.solvers.solve` for EPLB and placer's
    solvers (results do not depend on ``workers``)."""
    layers, experts = len(summary.layers), summary.num_experts
    entries = []
    for name in names:
        started = time.perf_counter()
        if name in BASELINES:
            chosen = baseline(name, layers, experts, topology.num_gpus, topology.gpus_per_node)
            entries.append(Entry(name, chosen, 0.0))
        elif name == "trtllm-cooc":
            if experts % topology.num_gpus:  # TensorRT-LLM fills every slot: one copy each needs E / GPUs slots
                continue
            entries.append(Entry(name, trtllm_cooccurrence_placement(summary, topology), time.perf_counter() - started))
        elif name == "mtkahypar":
            try:
                chosen = mtkahypar_placement(summary, topology)
            except ImportError:
                continue
            entries.append(Entry(name, chosen, time.perf_counter() - started))
        else:
            eplb = name == "eplb"
            problem = PlacementProblem(
                topology, model=model, **{k: v for k, v in options.items() if not (eplb and k == "keep_groups")}
            )
            chosen, report = run_solver(summary, problem, SolverSettings(name, time_limit, workers=workers))
            entries.append(
                Entry(
                    name if eplb else f"placer {name}",
                    chosen,
                    time.perf_counter() - started,
                    "" if eplb else report.summary(),
                )
            )
    return entries


def placements(
    train: Trace, topology: Topology, solvers: list[str], time_limit: float, baselines: tuple[str, ...] = BASELINES
) -> list[Entry]:
    """Baselines, Mt-KaHyPar (when installed) and placer's solvers, all solved on ``train``."""
    return solve(summarize(train), topology, [*baselines, "mtkahypar", *solvers], time_limit)


def ratio(value: float, reference: dict | None, key: str) -> str:
    return f"{value / reference[key]:.3f}" if reference else "n/a"


def held_out_table(entries: list[Entry], test: Trace, topology: Topology) -> tuple[str, dict]:
    totals = {e.name: evaluate(test, e.placement, topology).totals for e in entries}
    contiguous, peer = totals["contiguous"], totals.get("mtkahypar")
    lines = [
        (
            "| placement | solve s | inter-node tokens | x contiguous | x Mt-KaHyPar | NIC peak | x contiguous "
            "| x Mt-KaHyPar | GPU peak | x Mt-KaHyPar | GPU max/mean |"
        ),
        "|---" * 11 + "|",
    ]
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
        checks.append(
            (
                "inter-node <= 0.75 x contiguous",
                auto["internode_tokens_dedup"] / contiguous["internode_tokens_dedup"],
                0.75,
            )
        )
        if peer:
            checks += [
                (
                    "inter-node <= 1.02 x Mt-KaHyPar",
                    auto["internode_tokens_dedup"] / peer["internode_tokens_dedup"],
                    1.02,
                ),
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
    per_sequence = [
        count_traffic(pinned.sequence_slice(s, s + 1), entry.placement, topology) for s in range(len(test.seq_lens))
    ]
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
    lines = [
        (
            "| held-out task | placement | inter-node x contiguous | x Mt-KaHyPar | NIC peak x contiguous "
            "| x Mt-KaHyPar | GPU peak x Mt-KaHyPar |"
        ),
        "|---" * 7 + "|",
    ]
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
                f"| {ratio(t['nic_peak_tokens'], peer, 'nic_peak_tokens')} "
                f"| {ratio(t['gpu_peak_load'], peer, 'gpu_peak_load')} |"
            )
    return "\n".join(lines)


def all_placements_table(
    entries: list[Entry], test: Trace, topology: Topology, model: Model | None
) -> tuple[str, dict]:
    """Held-out figures of every entry with ratios to contiguous and EPLB (when present)."""
    totals = {e.name: evaluate(test, e.placement, topology, model=model).totals for e in entries}
    contiguous, eplb = totals.get("contiguous"), totals.get("eplb")
    lines = [
        (
            "| placement | solve s | inter-node GB | x contiguous | x EPLB | NIC peak x contiguous | x EPLB "
            "| GPU peak x contiguous | x EPLB | nodes per token | all-to-all s | x EPLB |"
        ),
        "|---" * 12 + "|",
    ]
    for e in entries:
        t = totals[e.name]
        gb = f"{t['internode_bytes'] / 1e9:,.2f}" if "internode_bytes" in t else "n/a"
        a2a = f"{t['all_to_all_s']:.4f}" if "all_to_all_s" in t else "n/a"
        lines.append(
            f"| {e.name} | {e.seconds:.1f} | {gb} "
            f"| {ratio(t['internode_tokens_dedup'], contiguous, 'internode_tokens_dedup')} "
            f"| {ratio(t['internode_tokens_dedup'], eplb, 'internode_tokens_dedup')} "
            f"| {ratio(t['nic_peak_tokens'], contiguous, 'nic_peak_tokens')} "
            f"| {ratio(t['nic_peak_tokens'], eplb, 'nic_peak_tokens')} "
            f"| {ratio(t['gpu_peak_load'], contiguous, 'gpu_peak_load')} "
            f"| {ratio(t['gpu_peak_load'], eplb, 'gpu_peak_load')} | {t['nodes_per_token_mean']:.2f} | {a2a} "
            f"| {ratio(t['all_to_all_s'], eplb, 'all_to_all_s') if 'all_to_all_s' in t else 'n/a'} |"
        )
    return "\n".join(lines), totals


def synthetic_split(preset: str, train_tokens: int, test_tokens: int, cache: Path) -> tuple[Trace, Trace]:
    """The preset's ``train`` and ``test`` traces (seed 0), generated once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    traces = []
    for split, tokens in (("train", train_tokens), ("test", test_tokens)):
        path = cache / f"{preset}-{split}-{tokens}.npz"
        if not path.exists():
            synth.write_trace(synth.preset(preset), tokens, path, seed=0, split=split)
        traces.append(load_trace(path))
    return traces[0], traces[1]


def synthetic_suite(args: argparse.Namespace, names: list[str]) -> None:
    hardware = load_topology("h100-dgx")
    for preset in args.presets.split(","):
        model_name, shape = PRESETS[preset]
        nodes, gpus = map(int, shape.split("x"))
        topology, model = hardware.resized(nodes, gpus), load_model(model_name)
        train, test = synthetic_split(preset, args.train_tokens, args.test_tokens, args.cache_dir)
        print(
            f"\n## Synthetic `{preset}` on {nodes} x {gpus} (model {model_name}; train {train.num_tokens:,}, "
            f"held-out test {test.num_tokens:,} tokens)\n"
        )
        entries = solve(summarize(train, workers=args.workers), topology, names, args.time_limit, model, args.workers)
        print(all_placements_table(entries, test, topology, model)[0])


def groups_disjoint(placement: Placement, groups: np.ndarray) -> bool:
    """Whether, in every layer, the nodes holding each group's copies are disjoint from the others'."""
    slot_node = np.arange(placement.phy2log.shape[1]) // (placement.slots_per_gpu * placement.gpus_per_node)
    for row in placement.phy2log:
        held = row >= 0
        owner = np.full(placement.num_nodes, -1)
        for node, group in zip(slot_node[held], groups[row[held]]):
            if owner[node] not in (-1, group):
                return False
            owner[node] = group
    return True


def even_split_peak(phy2log: np.ndarray, loads: np.ndarray, slots: int) -> float:
    """Sum over layers of the max GPU load when each expert's load splits evenly over its copies.

    phy2log: [layers, GPUs x slots] (-1 empty); loads: [layers, experts].
    """
    total = 0.0
    for row, load in zip(phy2log, loads):
        held = row >= 0
        served = np.zeros(len(row))
        served[held] = load[row[held]] / np.bincount(row[held], minlength=len(load))[row[held]]
        total += served.reshape(-1, slots).sum(axis=1).max()
    return total


def eplb_within_groups(loads: np.ndarray, groups: np.ndarray, topology: Topology, slots: int) -> np.ndarray:
    """A reference for kept groups: EPLB's global balancing run inside each group's node set,
    sized as placer sizes it (:func:`group_mask`, needs nodes >= groups). loads: [layers, experts]
    (train); returns phy2log [layers, GPUs x slots]."""
    node_slots = topology.gpus_per_node * slots
    phy2log = np.full((len(loads), topology.num_gpus * slots), -1, dtype=np.int64)
    for layer, load in enumerate(loads):
        mask = group_mask(groups, load, topology.nodes, node_slots)
        for group in range(int(groups.max()) + 1):
            members = np.flatnonzero(groups == group)
            nodes = np.flatnonzero(mask[members[0]])
            gpus = len(nodes) * topology.gpus_per_node
            sub, _, _ = rebalance_experts(load[members][None, :], gpus * slots, 1, 1, gpus)
            phy2log[layer, nodes[0] * node_slots : (nodes[-1] + 1) * node_slots] = members[sub[0]]
    return phy2log


def scale_suite(args: argparse.Namespace) -> list[str]:
    """The quality-at-scale floor on the DeepSeek-V3 preset: placer --keep-groups vs EPLB."""
    model = load_model("deepseek-v3")
    train, test = synthetic_split("deepseek-v3", args.scale_train_tokens, args.test_tokens, args.cache_dir)
    summary = summarize(train, workers=args.workers)
    groups = np.arange(model.num_experts) // (model.num_experts // model.num_groups)
    test_loads = expert_loads(test.topk_ids, test.num_experts)
    verdicts = []
    print(
        f"\n## Quality at scale: synthetic `deepseek-v3`, train {train.num_tokens:,} tokens, "
        f"held-out test {test.num_tokens:,} tokens\n"
    )
    for shape in args.scale_topologies.split(","):
        nodes, gpus = map(int, shape.split("x"))
        topology = load_topology("h100-dgx").resized(nodes, gpus)
        one_copy = -(-model.num_experts // topology.num_gpus)
        for slots in (one_copy, one_copy + 1):
            spare = slots * topology.num_gpus - model.num_experts
            names = ["contiguous", "eplb", *args.scale_solvers.split(",")]
            entries = solve(
                summary, topology, names, args.time_limit, model, args.workers, slots_per_gpu=slots, keep_groups=True
            )
            print(
                f"\n### {nodes} x {gpus}, {slots} slot(s) per GPU ({spare} redundant experts for EPLB and "
                "placer alike), placer with keep-groups\n"
            )
            table, totals = all_placements_table(entries, test, topology, model)
            print(table + "\n")
            reference = {e.name: even_split_peak(e.placement.phy2log, test_loads, slots) for e in entries[1:]}
            if nodes >= model.num_groups:
                within = eplb_within_groups(summary.loads, groups, topology, slots)
                reference["EPLB inside each kept group's node set"] = even_split_peak(within, test_loads, slots)
            print(
                "GPU peak with each expert's test load split evenly over its copies, x EPLB's: "
                + "; ".join(
                    f"{name} {value / reference['eplb']:.3f}" for name, value in reference.items() if name != "eplb"
                )
            )
            eplb = totals["eplb"]
            for e in entries[2:]:
                t = totals[e.name]
                inter = t["internode_tokens_dedup"] / eplb["internode_tokens_dedup"]
                peak = t["gpu_peak_load"] / eplb["gpu_peak_load"]
                kept = groups_disjoint(e.placement, groups)
                where = f"{nodes} x {gpus}, {slots} slot(s)/GPU, {e.name}"
                verdicts += [
                    f"- {'PASS' if inter <= 0.85 else 'FAIL'}: {where}: inter-node <= 0.85 x EPLB "
                    f"(measured {inter:.3f})",
                    f"- {'PASS' if peak <= 1.05 else 'FAIL'}: {where}: GPU peak <= 1.05 x EPLB (measured {peak:.3f})",
                    (
                        f"- {'PASS' if kept else 'FAIL'}: {where}: each group on its own nodes "
                        f"(max nodes per token {int(np.flatnonzero(t['nodes_per_token_histogram']).max())})"
                    ),
                ]
    print("\n### Floors\n\n" + "\n".join(verdicts))
    return verdicts


def esft_suite(args: argparse.Namespace, names: list[str]) -> int:
    if not args.esft.is_dir():
        print(f"ESFT traces not found at {args.esft}: ESFT suite skipped.", file=sys.stderr)
        return 1
    train, test = import_esft(args.esft, split=True)
    hardware = load_topology("h100-dgx")
    model = load_model("deepseek-v2-lite")
    print(
        f"ESFT split: train {train.num_tokens:,} tokens, held-out test {test.num_tokens:,} tokens, "
        f"{train.num_layers} layers, top-{train.top_k} of {train.num_experts}"
    )
    try:
        import mtkahypar  # noqa: F401 (availability check)
    except ImportError:
        print('\nMt-KaHyPar is not installed (pip install -e ".[bench]"): its rows and ratios are n/a.')
    for shape in args.topologies.split(","):
        nodes, gpus = map(int, shape.split("x"))
        topology = hardware.resized(nodes, gpus)
        print(f"\n## ESFT, {nodes} nodes x {gpus} GPUs\n")
        entries = solve(summarize(train), topology, names, args.time_limit, model)
        table, totals = held_out_table([e for e in entries if e.name != "eplb"], test, topology)
        print(table + "\n")
        print("\n".join(floors(totals, entries, nodes)))
        for e in entries:
            if e.note:
                print(f"- {e.name}: {e.note}")
        print("\n### All placements, with EPLB and estimated all-to-all time\n")
        print(all_placements_table(entries, test, topology, model)[0])
        if args.boot:
            print(f"\n### Bootstrap over {len(test.seq_lens)} test sequences ({args.boot} resamples)\n")
            print(bootstrap_table(entries, test, topology, args.boot))
        if args.loto:
            print("\n### Leave one task out (solve on three tasks, replay the fourth)\n")
            print(leave_one_task_out(topology, args.loto_solvers.split(","), args.time_limit))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default="esft,synth,scale")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--esft", type=Path, default=ESFT, help="ESFT traces root")
    parser.add_argument("--topologies", default="4x8,8x8", help="ESFT topologies")
    parser.add_argument("--solvers", default="spectral,ilp,auto", help="placer solvers")
    parser.add_argument("--placements", default=None, help=f"subset of {','.join(PLACEMENTS)} (solvers included)")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--train-tokens", type=int, default=200_000)
    parser.add_argument("--test-tokens", type=int, default=100_000)
    parser.add_argument("--scale-train-tokens", type=int, default=500_000)
    parser.add_argument("--scale-topologies", default="32x8,64x8,16x8")
    parser.add_argument("--scale-solvers", default="spectral")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "placer-bench-quality")
    parser.add_argument("--loto-solvers", default="spectral")
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2, help="processes for the synth and scale suites")
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--loto", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.quick:
        args.solvers, args.boot, args.loto = "spectral", 0, False
        args.train_tokens, args.test_tokens, args.scale_train_tokens = 20_000, 10_000, 20_000
    names = (
        args.placements.split(",") if args.placements
        else [*BASELINES, "eplb", "trtllm-cooc", "mtkahypar", *args.solvers.split(",")]
    )
    unknown = sorted(set(names) - set(PLACEMENTS)) + sorted(set(args.presets.split(",")) - set(PRESETS))
    if unknown:
        parser.error(f"unknown placement or preset: {', '.join(unknown)}")
    suites = args.suites.split(",")
    code = 0
    if "esft" in suites:
        code = esft_suite(args, names)
    if "synth" in suites:
        synthetic_suite(args, names)
    if "scale" in suites:
        scale_suite(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
