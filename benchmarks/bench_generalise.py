"""Held-out quality across model shapes, cluster shapes and training windows (issue 17).

Run from the repository root (Mt-KaHyPar >= 1.5: ``pip install -e ".[bench]"``; the ESFT
part needs ../shared/traces/esft-dsv2lite and is skipped with a reason when absent):

    python benchmarks/bench_generalise.py [--quick] [--solvers spectral,auto]
        [--layers 6] [--test-tokens 20000] [--windows 1000,2000,10000,100000]
        [--seeds 0,1] [--boot 200] [--blocks 40] [--headroom 10] [--no-esft]

``--quick``: 5 synthetic shapes x windows 2,000 and 20,000 x seed 0 on 3 layers, 8,000 test
tokens, plus two ESFT tasks held out at 3 x 4 (12 cases; its wall time is printed at the end).
The full grid (17 shapes x 4 windows x 2 seeds, 6 layers, plus ESFT) has not been run: on
the previous layout Mt-KaHyPar's Steiner-tree mapping alone took 295 s for 3 layers of
qwen3-30b on 5 x 4 at 20k tokens, and more than 11 minutes for 3 layers of esft on 4 x 8
(32 blocks) at 2k tokens (session 9, stopped there), so expect well over 10 hours on 2 cores.

A case is one (shape, nodes x GPUs, training window, seed), all its layers summed:

- synthetic: the first ``--layers`` layers of a preset (:mod:`placer.studies.synth`:
  the frontier presets and the open-model shapes qwen1.5-moe 60 top-4, olmoe 64 top-8,
  qwen3-30b 128 top-8, mixtral 8 top-2, deepseek-v2 160 top-6), solved on the first W
  tokens of the ``train`` split (seed s) and replayed on ``--test-tokens`` tokens of the
  ``test`` split (other tokens, drifted): never on tokens solved on. Node counts include
  3, 5, 6 and 12, and many shapes leave GPUs with unequal expert counts (E not a multiple
  of the GPUs: ceil(E / GPUs) slots, some empty).
- ESFT cross-task: solve on a window of the three other tasks (W/3 tokens of whole
  sequences from each, or all of them), replay the held-out task.

Placements: Mt-KaHyPar's three variants (``benchmarks/peers.py``: km1 QUALITY + packing,
km1 HIGHEST_QUALITY + packing, Steiner-tree mapping onto nodes x GPUs) and placer's solvers,
all on the same window; ``auto`` at its default budget (60 s for the whole model, scaled to
the layers replayed, so the per-layer effort is the default's) and NIC-balance weight
(``--alpha`` sets placer's: 0 asks for the fewest inter-node copies). Each placer metric is a ratio
to the best Mt-KaHyPar variant for that metric. Intervals: bootstrap over ``--blocks``
contiguous blocks of whole test sequences (``--boot`` resamples; the best peer is re-chosen
in every resample; the median's interval from the median of each resample). Replay: source
GPU t mod P, normal dispatch, one copy per expert.

In-sample vs held out: every placement is also replayed on the window it was solved on; a
solver whose ratio to the best peer grows from there to the held-out tokens fits its window
more than the peers do (the shift per case is printed, not judged).

Hindsight (with ``auto`` among the solvers): every candidate ``auto`` compares, solved on the
whole window, replayed on the held-out tokens; the exact frontier of choosing one per layer
knowing those tokens shows whether any choice among them reaches the floors together (no
selection rule can do better than that choice). Oracle: the same with every candidate solved on
the held-out tokens themselves, so both the candidates and the choice know them: whether
placer's candidate family holds placements that reach the floors at all.

Headroom (synthetic cases; ``--headroom 0`` skips it): placer's search for the fewest
inter-node copies (``ilp`` at alpha 0, the same budget) solved on the window, on
``--headroom`` x the window (the same stream, longer) and on the held-out tokens themselves,
each replayed on the held-out tokens: how far below the best peer a placement can go when
it knows more of the data, and how much of that a window holds.

Floors (on the 95% upper bound): inter-node <= 1.01 x on every case, <= 0.99 x in the median;
NIC peak <= 0.97 x on every case, <= 0.93 x in the median; GPU peak <= 1.00 x on every case
and in the median; the same on the 2,000-token windows alone. A case's metric is exempt when
exhaustive search over every node assignment (E <= :data:`EXHAUSTIVE_MAX_EXPERTS`) shows that
no placement reaches the floor on the held-out tokens (best possible / best peer > limit);
the same search's exact frontier of (inter-node, NIC peak) over every node assignment says
on which cases no placement meets both every-case floors at once.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import textwrap
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from peers import PEERS, available, mtkahypar_placement

from placer import InputError, Placement, Topology, load_topology
from placer.evaluation.replay import count_traffic
from placer.formats.esft import ESFT_TASKS, read_esft_task
from placer.graph import TraceSummary, summarize
from placer.placement import from_expert_gpu
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve
from placer.solvers.api import layer_options
from placer.solvers.pipeline import place_layer
from placer.solvers.problem import build_problems
from placer.solvers.validation import auto_options, candidate_placements
from placer.studies import synth
from placer.trace import Trace, concatenate

ESFT = ROOT.parent / "shared" / "traces" / "esft-dsv2lite"
METRICS = ("internode_tokens_dedup", "nic_peak_tokens", "gpu_peak_load")
#: the two metrics of the (inter-node, NIC peak) frontiers: hindsight and exhaustive search
CUT_AND_NIC = METRICS[:2]
LABELS = {"internode_tokens_dedup": "inter-node", "nic_peak_tokens": "NIC peak", "gpu_peak_load": "GPU peak"}
#: metric -> (every-case limit, median limit) on the bootstrap 95% upper bound
FLOORS = {"internode_tokens_dedup": (1.01, 0.99), "nic_peak_tokens": (0.97, 0.93), "gpu_peak_load": (1.0, 1.0)}
EXHAUSTIVE_MAX_EXPERTS = 8
#: (preset, nodes x GPUs) of the full suite; the quick subset below
SHAPES = (
    ("esft", "4x8"), ("esft", "3x4"), ("seed001", "5x4"), ("qwen1.5-moe", "3x4"), ("qwen1.5-moe", "5x4"),
    ("qwen1.5-moe", "6x2"), ("olmoe", "6x2"), ("olmoe", "4x4"), ("qwen3-30b", "5x4"), ("qwen3-30b", "12x2"),
    ("mixtral", "4x2"), ("mixtral", "3x2"), ("deepseek-v2", "5x8"), ("deepseek-v2", "12x4"),
    ("qwen3-235b", "6x8"), ("deepseek-v3", "12x8"), ("kimi-k2", "12x8"),
)
QUICK_SHAPES = (("qwen1.5-moe", "3x4"), ("olmoe", "6x2"), ("mixtral", "4x2"), ("seed001", "5x4"),
                ("esft", "3x4"))


@dataclass
class Case:
    """One held-out case: its label, the placements' block counters and the exemptions."""

    label: str
    window: int
    counters: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # name -> key -> [blocks, ...]
    train_counters: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # the same, on the window
    seconds: dict[str, float] = field(default_factory=dict)
    exempt: dict[str, str] = field(default_factory=dict)  # metric -> reason
    hindsight: list[np.ndarray] = field(default_factory=list)  # per layer: [candidates, (inter-node, NIC peak)]
    oracle: list[np.ndarray] = field(default_factory=list)  # the same, the candidates solved on the held-out tokens
    headroom: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # tokens solved on -> counters
    exhaustive: np.ndarray | None = None  # tiny shapes: [points, (inter-node x, NIC peak x) the best peer]


def window(trace: Trace, tokens: int) -> Trace:
    """The first whole sequences of ``trace`` holding at least ``tokens`` tokens (all if fewer)."""
    ends = np.cumsum(trace.seq_lens)
    return trace.sequence_slice(0, int(min(len(ends), np.searchsorted(ends, tokens) + 1)))


def block_counters(test: Trace, placement: Placement, topology: Topology, blocks: int) -> dict[str, np.ndarray]:
    """Additive replay counters per block of whole test sequences (up to ``blocks`` contiguous
    blocks; sources t mod P of the whole trace pinned, so blocks sum to the whole replay):
    key -> [blocks, layers, ...]."""
    pinned = replace(test, src_rank=np.arange(test.num_tokens) % topology.num_gpus)
    groups = np.array_split(np.arange(len(test.seq_lens)), min(blocks, len(test.seq_lens)))
    per_block = [count_traffic(pinned.sequence_slice(int(g[0]), int(g[-1]) + 1), placement, topology)
                 for g in groups]
    keys = ("internode_tokens_dedup", "node_recv_dedup", "gpu_load", "nvlink_sent")
    return {key: np.stack([c[key] for c in per_block]) for key in keys}


def totals(counters: dict[str, np.ndarray], pick: np.ndarray | None = None) -> dict[str, float]:
    """Held-out totals over layers from block counters (``pick``: resampled block ids)."""
    summed = {key: (value if pick is None else value[pick]).sum(axis=0) for key, value in counters.items()}
    return {"internode_tokens_dedup": float(summed["internode_tokens_dedup"].sum()),
            "nic_peak_tokens": float(summed["node_recv_dedup"].max(axis=1).sum()),
            "gpu_peak_load": float(summed["gpu_load"].max(axis=1).sum()),
            "nvlink_copies": float(summed["nvlink_sent"].sum())}


def best_peer(case: Case, counters: str = "counters", pick: np.ndarray | None = None) -> dict[str, float]:
    """The lowest held-out total of any Mt-KaHyPar variant, per key of :func:`totals`
    (``counters="train_counters"``: on the training window; ``pick``: resampled block ids)."""
    peers = [totals(getattr(case, counters)[p], pick) for p in PEERS]
    return {key: min(p[key] for p in peers) for key in peers[0]}


def front_limits(which: int) -> np.ndarray:
    """The every-case (``which`` 0) or median (1) limits of :data:`CUT_AND_NIC`: [2]."""
    return np.array([FLOORS[key][which] for key in CUT_AND_NIC])


def peer_scaled(front: np.ndarray, case: Case) -> np.ndarray:
    """Held-out (inter-node, NIC peak) totals [points, 2] over the best peer's."""
    peer = best_peer(case)
    return front / [peer[key] for key in CUT_AND_NIC]


def ratios(case: Case, solver: str, counters: str = "counters", pick: np.ndarray | None = None) -> list[float]:
    """``solver``'s total over the best peer's, per judged metric (arguments as :func:`best_peer`)."""
    mine, peer = totals(getattr(case, counters)[solver], pick), best_peer(case, counters, pick)
    return [mine[key] / max(peer[key], 1e-9) for key in METRICS]


def in_sample_and_held_out(case: Case, solver: str) -> np.ndarray:
    """Ratios of ``solver`` to the best peer per judged metric, on the training window and on
    the held-out tokens (the best peer chosen on each): [2, metrics]."""
    return np.array([ratios(case, solver, counters) for counters in ("train_counters", "counters")])


def overfitting(cases: list[Case], solvers: list[str]) -> None:
    """Print whether a solver loses more ground than the peers between the window it was
    solved on and the held-out tokens: held-out ratio minus in-sample ratio, per case."""
    print("\n### In-sample vs held out\n\n"
          "Ratios to the best peer on the training window itself and on the held-out\n"
          "tokens (point ratios, medians over cases); shift = held-out ratio minus\n"
          "in-sample ratio per case (> 0: the solver fits its window more than the peers).\n\n"
          "| solver | metric | in-sample | held out | shift median | shift worst |\n|---|---|---|---|---|---|")
    for solver in solvers:
        ratios = np.stack([in_sample_and_held_out(case, solver) for case in cases])  # [cases, 2, metrics]
        shift = ratios[:, 1] - ratios[:, 0]
        for m, key in enumerate(CUT_AND_NIC):
            print(f"| {solver} | {LABELS[key]} | {np.median(ratios[:, 0, m]):.3f} | {np.median(ratios[:, 1, m]):.3f} "
                  f"| {np.median(shift[:, m]):+.3f} | {shift[:, m].max():+.3f} |")


def node_frontiers(test: Trace, topology: Topology, slots: int) -> list[np.ndarray]:
    """Per layer, the held-out (inter-node copies, NIC peak) of every assignment of the E
    experts to nodes holding at most GPUs x ``slots`` experts that no other assignment beats
    on both (tiny shapes only: N^E assignments): [points, 2] each."""
    experts, nodes = test.num_experts, topology.nodes
    assign = np.array(list(itertools.product(range(nodes), repeat=experts)), dtype=np.int64)
    fits = (np.stack([(assign == n).sum(axis=1) for n in range(nodes)], axis=1)
            <= topology.gpus_per_node * slots).all(axis=1)
    assign = assign[fits]
    src_node = (np.arange(test.num_tokens) % topology.num_gpus) // topology.gpus_per_node
    fronts = []
    for layer in range(test.num_layers):
        ids = test.topk_ids[:, layer, :].astype(np.int64)
        rows, weight = np.unique(np.column_stack([ids, src_node]), axis=0, return_counts=True)
        recv = np.zeros((len(assign), nodes))
        for n in range(nodes):
            touched = ((assign[:, np.where(rows[:, :-1] >= 0, rows[:, :-1], 0)] == n)
                       & (rows[:, :-1] >= 0)).any(axis=2)
            recv[:, n] = (touched * (rows[:, -1] != n) * weight).sum(axis=1)
        fronts.append(pareto_sums([np.column_stack([recv.sum(axis=1), recv.max(axis=1)])]))
    return fronts


def run_case(label: str, train: Trace, test: Trace, topology: Topology, solvers: list[str],
             model_layers: int, args: argparse.Namespace, window_tokens: int, longer: Trace | None = None) -> Case:
    """Solve every placement on ``train``, replay ``test`` block by block, find exemptions;
    ``longer``: the same stream as ``train``, ``--headroom`` times as long (None: no headroom)."""
    case = Case(label, window_tokens)
    summary = summarize(train)
    budget = 60.0 * train.num_layers / model_layers  # the default 60 s, per layer as for the whole model
    placements: dict[str, Placement] = {}
    for name in (*PEERS, *solvers):
        started = time.perf_counter()
        if name in PEERS:
            placements[name] = mtkahypar_placement(summary, topology, name)
        else:
            settings = SolverSettings(name, budget, alpha=args.alpha)
            placements[name] = solve(summary, PlacementProblem(topology), settings)[0]
        case.seconds[name] = time.perf_counter() - started
    case.counters = {name: block_counters(test, p, topology, args.blocks) for name, p in placements.items()}
    case.train_counters = {name: block_counters(train, p, topology, 1) for name, p in placements.items()}
    if "auto" in solvers:
        settings = SolverSettings("auto", budget, alpha=args.alpha)
        case.hindsight = candidates_held_out(summary, test, topology, settings)
        case.oracle = candidates_held_out(summarize(test), test, topology, settings)
    if longer is not None:
        sources = {"window": train, f"{args.headroom} x window": longer, "held-out tokens": test}
        case.headroom = {name: block_counters(test, cut_first(trace, topology, budget), topology, 1)
                         for name, trace in sources.items()}
    if test.num_experts <= EXHAUSTIVE_MAX_EXPERTS:
        slots = -(-test.num_experts // topology.num_gpus)
        case.exhaustive = peer_scaled(pareto_sums(node_frontiers(test, topology, slots)), case)
        for key, best in zip(CUT_AND_NIC, case.exhaustive.min(axis=0)):
            if best > FLOORS[key][0]:
                case.exempt[key] = f"exhaustive: best possible {best:.3f} x best peer > {FLOORS[key][0]}"
    return case


def exhaustive_limits(cases: list[Case]) -> list[str]:
    """Cases searched exhaustively where no node assignment meets the every-case inter-node and
    NIC peak floors at once (one line; none when no case was searched)."""
    searched = [case for case in cases if case.exhaustive is not None]
    if not searched:
        return []
    limits = front_limits(0)
    short = [case.label for case in searched if not (case.exhaustive <= limits).all(axis=1).any()]
    text = (f"exhaustive: no node assignment has inter-node <= {limits[0]} x and NIC peak <= {limits[1]} x "
            f"on {len(short)} of the {len(searched)} cases searched" + (f": {'; '.join(short)}" if short else ""))
    return [textwrap.fill(text, 80, initial_indent="- ", subsequent_indent="  ")]


def cut_first(trace: Trace, topology: Topology, budget: float) -> Placement:
    """placer's deep search for the fewest inter-node copies (``ilp``, alpha 0) solved on ``trace``."""
    return solve(summarize(trace), PlacementProblem(topology), SolverSettings("ilp", budget, alpha=0.0))[0]


def headroom_ratios(cases: list[Case]) -> tuple[list[str], np.ndarray]:
    """Held-out inter-node copies of the cut-first search solved on each token set over the
    best peer's: (token sets, [cases, token sets])."""
    names = list(cases[0].headroom)
    table = [[totals(case.headroom[name])["internode_tokens_dedup"] for name in names] for case in cases]
    peers = [[max(best_peer(case)["internode_tokens_dedup"], 1e-9)] for case in cases]
    return names, np.array(table) / peers


def headroom(cases: list[Case]) -> list[str]:
    """How far below the best peer the held-out inter-node copies can go: the cut-first search
    solved on the window, on a longer window of the same stream and on the held-out tokens
    themselves (point ratios)."""
    names, table = headroom_ratios(cases)
    every, middle = FLOORS["internode_tokens_dedup"]
    print(f"\n### Headroom: {len(cases)} cases\n\n"
          "placer's search for the fewest inter-node copies (ilp, alpha 0, the same budget)\n"
          "solved on each token set, replayed on the held-out tokens; inter-node x the best\n"
          "peer (point ratios). Solved on the held-out tokens themselves it knows them, so\n"
          "a placement solved on a window seldom beats it (a heuristic, not a bound).\n\n"
          f"| case | {' | '.join(names)} |\n|---|{'---|' * len(names)}\n"
          + "\n".join(f"| {case.label} | " + " | ".join(f"{r:.3f}" for r in row) + " |"
                      for case, row in zip(cases, table)))
    lines = []
    for label, pick, floor in (("median", np.median, middle), ("worst", np.max, every)):
        text = f"headroom {label} inter-node x (floor {floor}), solved on the " + "; ".join(
            f"{name} {pick(table[:, n]):.3f}" for n, name in enumerate(names))
        lines.append(textwrap.fill(text, 80, initial_indent="- ", subsequent_indent="  "))
    return lines


def candidates_held_out(summary: TraceSummary, test: Trace, topology: Topology, settings: SolverSettings
                        ) -> list[np.ndarray]:
    """Every candidate ``auto`` (run with ``settings``) compares, solved on the whole window (as
    ``auto`` re-solves its choice) and replayed on ``test``: per layer [candidates, (inter-node
    copies, NIC peak)]."""
    problems = build_problems(summary, topology.nodes, topology.gpus_per_node)
    opts = auto_options(layer_options(settings, len(problems)))
    placed = [candidate_placements(p, opts, place_layer) for p in problems]
    layers = []
    for name in placed[0]:
        expert_gpu = np.stack([layer[name] for layer in placed])
        placement = from_expert_gpu(expert_gpu, topology.num_gpus, topology.gpus_per_node, problems[0].slots_per_gpu)
        counters = block_counters(test, placement, topology, 1)
        layers.append(np.column_stack([counters["internode_tokens_dedup"][0],
                                       counters["node_recv_dedup"][0].max(axis=1)]))
    return list(np.stack(layers, axis=1))


def pareto_sums(per_layer: list[np.ndarray]) -> np.ndarray:
    """Every (inter-node, NIC peak) total reachable by choosing one candidate per layer that no
    other choice beats on both: [points, 2] (exact; the frontier is merged layer by layer)."""
    front = np.zeros((1, 2))
    for options in per_layer:
        sums = (front[:, None, :] + options[None, :, :]).reshape(-1, 2)
        sums = sums[np.lexsort((sums[:, 1], sums[:, 0]))]
        front = sums[np.minimum.accumulate(sums[:, 1]) == sums[:, 1]]
        front = front[np.r_[True, front[1:, 1] < front[:-1, 1]]]
    return front


def median_limits_reached(fronts: list[np.ndarray]) -> tuple[int, int, int]:
    """Cases whose frontier [points, (inter-node x, NIC peak x)] holds a point at or under the
    inter-node median limit, one at or under the NIC peak median limit, and one under both."""
    limits = front_limits(1)
    under = [front <= limits for front in fronts]
    return (sum(bool(u[:, 0].any()) for u in under), sum(bool(u[:, 1].any()) for u in under),
            sum(bool(u.all(axis=1).any()) for u in under))


def hindsight(cases: list[Case], oracle: bool = False) -> list[str]:
    """Whether any per-layer choice among ``auto``'s candidates, made on the held-out tokens
    themselves, reaches the inter-node and NIC floors together (point ratios to the best peer);
    ``oracle``: the candidates solved on the held-out tokens too, not on the window."""
    rows, best, nic_at, fronts = [], [], [], []
    every, middle = FLOORS["internode_tokens_dedup"]
    for case in cases:
        front = peer_scaled(pareto_sums(case.oracle if oracle else case.hindsight), case)
        fronts.append(front)
        within = front[front[:, 0] <= every]
        best.append(front[:, 0].min())
        nic_at.append(within[:, 1].min() if len(within) else np.inf)
        rows.append(f"| {case.label} | {best[-1]:.3f} | {'none' if not len(within) else f'{nic_at[-1]:.3f}'} |")
    name = "oracle" if oracle else "hindsight"
    solved_on = "the held-out tokens themselves" if oracle else "the whole window"
    print(f"\n### {name.capitalize()}: {len(cases)} cases\n\n"
          + textwrap.fill(f"Every candidate auto compares, solved on {solved_on}; one chosen per layer with the "
                          "held-out tokens known (exact Pareto frontier; point ratios: the floors are judged on "
                          "95% upper bounds, which lie above them).", 80) + "\n\n"
          f"| case | fewest inter-node x | lowest NIC peak x, inter-node <= {every} x |\n|---|---|---|\n"
          + "\n".join(rows))
    nic_every, nic_middle = FLOORS["nic_peak_tokens"]
    short = [case.label for case, nic in zip(cases, nic_at) if nic > nic_every]
    cut_cases, nic_cases, both = median_limits_reached(fronts)
    return [f"- {name} median fewest inter-node x: {np.median(best):.3f} (floor {middle})",
            f"- {name} median lowest NIC peak x, inter-node <= {every} x: "
            f"{np.median(nic_at):.3f} (floor {nic_middle})",
            f"- {name}: cases where a choice reaches inter-node <= {middle} x: {cut_cases} of\n"
            f"  {len(cases)}; NIC peak <= {nic_middle} x: {nic_cases}; both at once: {both}",
            f"- {name}: no choice has inter-node <= {every} x and NIC peak <= {nic_every} x\n"
            + textwrap.fill(f"on {len(short)} of {len(cases)} cases" + (f": {'; '.join(short)}" if short else ""),
                            80, initial_indent="  ", subsequent_indent="  ")]


def synthetic_cases(args: argparse.Namespace, solvers: list[str]) -> list[Case]:
    hardware = load_topology("h100-dgx")
    cases = []
    for (preset, shape), tokens, seed in itertools.product(args.shapes, args.windows, args.seeds):
        full = synth.PRESETS[preset]
        params = replace(full, num_layers=min(args.layers, full.num_layers))
        nodes, gpus = map(int, shape.split("x"))
        train = synth.generate(params, tokens, seed=seed, split="train")
        test = synth.generate(params, args.test_tokens, seed=seed, split="test")
        longer = synth.generate(params, tokens * args.headroom, seed=seed, split="train") if args.headroom else None
        label = f"{preset} {shape} {tokens // 1000}k #{seed}"
        cases.append(run_case(label, train, test, hardware.resized(nodes, gpus), solvers, full.num_layers,
                              args, tokens, longer))
        print(f"  {label}: solve s " + ", ".join(f"{k} {v:.1f}" for k, v in cases[-1].seconds.items()),
              file=sys.stderr, flush=True)
    return cases


def esft_cases(args: argparse.Namespace, solvers: list[str]) -> list[Case]:
    if not args.esft.is_dir():
        print(f"\nESFT traces not found at {args.esft}: the cross-task cases are skipped.")
        return []
    tasks = {name: read_esft_task(args.esft / name) for name in ESFT_TASKS}
    layers = min(args.layers, tasks[ESFT_TASKS[0]].num_layers)
    tasks = {name: replace(t, topk_ids=t.topk_ids[:, :layers], topk_weights=None) for name, t in tasks.items()}
    hardware = load_topology("h100-dgx")
    cases = []
    for held_out, tokens, shape in itertools.product(args.esft_tasks, args.esft_windows, args.esft_shapes):
        others = [tasks[name] for name in ESFT_TASKS if name != held_out]
        train = concatenate([window(t, tokens // 3) if tokens else t for t in others])
        nodes, gpus = map(int, shape.split("x"))
        label = f"esft/{held_out} {shape} {f'{tokens // 1000}k' if tokens else 'all'}"
        cases.append(run_case(label, train, tasks[held_out], hardware.resized(nodes, gpus), solvers, 26, args,
                              tokens or train.num_tokens))
        print(f"  {label}: solve s " + ", ".join(f"{k} {v:.1f}" for k, v in cases[-1].seconds.items()),
              file=sys.stderr, flush=True)
    return cases


def bootstrap(cases: list[Case], solver: str, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """Ratios of ``solver`` to the best peer per metric: point [cases, metrics] and
    resampled [reps, cases, metrics] (block bootstrap, seed 0)."""
    rng = np.random.default_rng(0)
    point = np.empty((len(cases), len(METRICS)))
    samples = np.empty((reps, len(cases), len(METRICS)))
    for c, case in enumerate(cases):
        blocks = len(case.counters[solver]["gpu_load"])
        picks = [None] + [rng.integers(blocks, size=blocks) for _ in range(reps)]
        for r, pick in enumerate(picks):
            row = ratios(case, solver, pick=pick)
            if pick is None:
                point[c] = row
            else:
                samples[r - 1, c] = row
    return point, samples


def cell(value: float, high: float) -> str:
    return f"{value:.3f} ({high:.3f})"


def report(cases: list[Case], solvers: list[str], reps: int, title: str) -> list[str]:
    """Per-case table, worst case and median with 95% intervals, floors as PASS/FAIL lines."""
    print(f"\n## {title}: {len(cases)} cases\n")
    print("Ratio to the best Mt-KaHyPar variant per metric, held out:\npoint (95% upper bound).")
    verdicts = []
    for solver in solvers:
        point, samples = bootstrap(cases, solver, reps)
        high = np.percentile(samples, 97.5, axis=0)
        print(f"\n### {solver}\n\n| case | inter-node x | NIC peak x | GPU peak x |\n|---|---|---|---|")
        for c, case in enumerate(cases):
            marks = ["*" if key in case.exempt else "" for key in METRICS]
            print(f"| {case.label} | "
                  + " | ".join(cell(point[c, m], high[c, m]) + marks[m] for m in range(len(METRICS))) + " |")
        median = np.percentile(np.median(samples, axis=1), [2.5, 97.5], axis=0)
        for m, key in enumerate(METRICS):
            every, middle = FLOORS[key]
            judged = [c for c, case in enumerate(cases) if key not in case.exempt]
            worst = max(judged, key=lambda c: high[c, m]) if judged else None
            if worst is not None:
                low_w, high_w = np.percentile(samples[:, worst, m], [2.5, 97.5])
                verdicts.append(
                    f"- {'PASS' if high_w <= every else 'FAIL'}: {title}, {solver}, {LABELS[key]} <= {every} x "
                    f"on every case:\n  worst {cases[worst].label} {point[worst, m]:.3f} "
                    f"[{low_w:.3f}, {high_w:.3f}]")
            verdicts.append(
                f"- {'PASS' if median[1, m] <= middle else 'FAIL'}: {title}, {solver}, {LABELS[key]} median "
                f"<= {middle} x:\n  {np.median(point[:, m]):.3f} [{median[0, m]:.3f}, {median[1, m]:.3f}]")
    for solver in solvers:
        nvlink = [totals(case.counters[solver])["nvlink_copies"] / max(best_peer(case)["nvlink_copies"], 1e-9)
                  for case in cases]
        print(f"\nNVLink copies (not judged), {solver} / peers' fewest: median "
              f"{np.median(nvlink):.3f}, worst {max(nvlink):.3f}")
    exempt = [f"{case.label} {LABELS[key]} ({why})" for case in cases for key, why in case.exempt.items()]
    print("\n* exempt: " + ("; ".join(exempt) if exempt else "none"))
    if cases:
        overfitting(cases, solvers)
    if cases and all(case.hindsight for case in cases):
        verdicts += hindsight(cases) + hindsight(cases, oracle=True)
    verdicts += exhaustive_limits(cases)
    with_headroom = [case for case in cases if case.headroom]
    if with_headroom:
        verdicts += headroom(with_headroom)
    print("\n### Floors\n\n" + "\n".join(verdicts))
    return verdicts


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick subset (a few minutes on 2 cores)")
    parser.add_argument("--solvers", default="spectral,auto")
    parser.add_argument("--alpha", type=float, default=None, help="placer's NIC-balance weight (default: the solver's)")
    parser.add_argument("--layers", type=int, default=6, help="first layers of each preset replayed")
    parser.add_argument("--test-tokens", type=int, default=20_000)
    parser.add_argument("--windows", default="1000,2000,10000,100000", help="training windows (tokens)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--shapes", default=",".join(f"{p}:{s}" for p, s in SHAPES), help="preset:NxG,...")
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--headroom", type=int, default=10,
                        help="longer window (x the training window) of the headroom section; 0: no headroom")
    parser.add_argument("--blocks", type=int, default=40, help="bootstrap blocks of whole test sequences")
    parser.add_argument("--esft", type=Path, default=ESFT)
    parser.add_argument("--no-esft", dest="with_esft", action="store_false")
    parser.add_argument("--esft-windows", default="2000,0", help="ESFT training windows (0 = all three tasks)")
    parser.add_argument("--esft-shapes", default="4x8,3x4")
    parser.add_argument("--esft-tasks", default=",".join(ESFT_TASKS))
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.test_tokens, args.windows, args.seeds = 3, 8000, "2000,20000", "0"
        args.shapes = ",".join(f"{p}:{s}" for p, s in QUICK_SHAPES)
        args.boot, args.esft_windows, args.esft_shapes, args.esft_tasks = 100, "2000", "3x4", "law,translation"
    args.windows = [int(w) for w in args.windows.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.shapes = [tuple(item.split(":")) for item in args.shapes.split(",")]
    args.esft_windows = [int(w) for w in args.esft_windows.split(",")]
    args.esft_shapes = args.esft_shapes.split(",")
    args.esft_tasks = args.esft_tasks.split(",")
    if args.headroom < 0:
        parser.error(f"--headroom: expected 0 (no headroom) or a factor >= 1, got {args.headroom}")
    unknown = sorted({p for p, _ in args.shapes} - set(synth.PRESETS))
    if unknown:
        parser.error(f"unknown preset: {', '.join(unknown)}")
    for name in args.solvers.split(","):
        try:
            SolverSettings(name, alpha=args.alpha)
        except InputError as err:
            parser.error(f"--solvers {name}: {err}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not available():
        print("Mt-KaHyPar >= 1.5 is not installed (pip install -e \".[bench]\"): nothing to compare against.")
        return 1
    solvers = args.solvers.split(",")
    started = time.perf_counter()
    cases = synthetic_cases(args, solvers)
    if args.with_esft:
        cases += esft_cases(args, solvers)
    print(f"# Held-out quality across shapes\n\n{'Quick' if args.quick else 'Full'} grid; {args.layers} layers "
          f"per case, {args.test_tokens:,} held-out synthetic tokens,\n{args.boot} bootstrap resamples.")
    report(cases, solvers, args.boot, "all cases")
    small = [case for case in cases if case.window == 2000]
    if small:
        report(small, solvers, args.boot, "2,000-token windows")
    print(f"\nwall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
