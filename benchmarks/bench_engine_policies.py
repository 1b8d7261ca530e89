"""Cost of placer inside the engines' EPLB loop, at DeepSeek-V3 shape, on CPU torch.

Run from the repository root:

    python benchmarks/bench_engine_policies.py [--tokens 100000] [--repeats 5]

Prints two tables:

1. Routing recorder, per engine step: ``RoutingRecorder.record`` (one slice
   copy into a device buffer; the delivery to the sink amortised over the
   steps) for a decode step and a prefill chunk of a 61-layer model (58 MoE
   layers, top-8, 256 experts), beside a per-step ``.cpu()`` copy of the same
   ids (what a naive hook does; on a GPU it also waits for the step to finish).
   Then the window's cost per token (``Rebalancer.observe``), which the sink
   pays once per buffer, not per step.
2. One drop-in call (``PlacerEplbPolicy.rebalance_experts``) at 58 layers x
   256 experts, 32 x 8 GPUs, 2 slots per GPU (512 replicas), 8 groups: placer's
   EPLB alone, the drop-in load-only without and with the map in service
   (slot keeping), and the drop-in with a Rebalancer whose window holds
   ``--tokens`` tokens of the ``deepseek-v3`` synthetic preset (warm from the
   map in service). Wall time on this machine, median of ``--repeats``.
3. With ``--esft DIR`` (default ../shared/traces/esft-dsv2lite, skipped when
   absent): the drop-in's trade-off on held-out ESFT tokens, 8 x 8 GPUs, 2 slots
   per GPU, ``nearest`` rule. Per task the window holds the train half (fed
   through the recorder), the engine's load is the train half's counts, and the
   drop-in is called 4 times in a row from vLLM's initial map (as successive
   rearrangements); its inter-node tokens and GPU peak on the test half are
   printed as ratios to the load-only drop-in (EPLB), per ``peak_tolerance``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from placer import evaluate, load_topology
from placer.engine_policies import (
    PlacerEplbPolicy,
    RebalancerProposer,
    RoutingRecorder,
    attach,
    detach,
)
from placer.eplb import rebalance_experts as eplb
from placer.formats.esft import ESFT_TASKS, import_esft
from placer.online import Rebalancer
from placer.placement import Placement
from placer.studies.synth import generate, preset

ESFT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "esft-dsv2lite"
HIDDEN, DENSE, TOP_K, EXPERTS = 61, 3, 8, 256
LAYERS = HIDDEN - DENSE
NODES, GPUS_PER_NODE, SLOTS, GROUPS = 32, 8, 2, 8
RANKS = NODES * GPUS_PER_NODE


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def recorder_rows(repeats: int) -> list[tuple[str, float, float]]:
    """(step, recorder us/step, naive .cpu() us/step) for a decode step and a prefill chunk."""
    rows = []
    rng = np.random.default_rng(0)
    for label, tokens, steps in (("decode 256 tok", 256, 400), ("prefill 8192 tok", 8192, 40)):
        ids = torch.from_numpy(rng.integers(0, EXPERTS, (tokens, HIDDEN, TOP_K)).astype(np.int32))
        recorder = RoutingRecorder(lambda rows: None, num_layers=HIDDEN, top_k=TOP_K, capacity=16384,
                                   layers=range(DENSE, HIDDEN))

        def run(recorder=recorder, ids=ids, steps=steps):
            for _ in range(steps):
                recorder.record(ids)
            recorder.flush()

        def naive(ids=ids, steps=steps):
            for _ in range(steps):
                ids[:, DENSE:].cpu().numpy().copy()

        rows.append((label, 1e6 * median_seconds(run, repeats) / steps, 1e6 * median_seconds(naive, repeats) / steps))
    return rows


def synthetic_routing(tokens: int) -> np.ndarray:
    """deepseek-v3 preset ids [tokens, 58, 8]."""
    return generate(preset("deepseek-v3"), tokens, seed=0).topk_ids


def esft_tradeoff(root: Path, tolerances: tuple[float, ...] = (1.02, 1.1, 1.25), calls: int = 4) -> None:
    """Held-out inter-node tokens and GPU peak of the drop-in with a window, x the load-only drop-in."""
    topology = load_topology("h100-dgx").resized(8, 8)
    replicas = topology.num_gpus * 2
    print(f"\nESFT held-out, 8 x 8 GPUs, 2 slots/GPU, nearest rule, {calls} successive calls\n")
    print("| task        | peak_tolerance | inter-node x EPLB | GPU peak x EPLB |")
    print("|-------------|---------------:|------------------:|----------------:|")
    for task in ESFT_TASKS:
        train, test = import_esft(root, task=task, split=True)
        ids = train.topk_ids
        layers, experts, top_k = ids.shape[1], train.num_experts, ids.shape[2]
        load = torch.from_numpy(np.stack([np.bincount(ids[:, layer].ravel(), minlength=experts)
                                          for layer in range(layers)]))
        initial = torch.from_numpy(np.tile(np.arange(replicas) % experts, (layers, 1)))

        def replay(phy2log, experts=experts, test=test):
            totals = evaluate(test, Placement(np.asarray(phy2log), experts, 8, 2), topology, rule="nearest").totals
            return totals["internode_tokens_dedup"], totals["gpu_peak_load"]

        detach()
        reference = replay(PlacerEplbPolicy.rebalance_experts(load, replicas, 0, 8, topology.num_gpus, initial))
        for tolerance in tolerances:
            proposer = RebalancerProposer(Rebalancer(layers, experts, 8, 8, 2, top_k=top_k))
            recorder = RoutingRecorder(proposer.observe, num_layers=layers, top_k=top_k)
            for begin in range(0, len(ids), 512):
                recorder.record(torch.from_numpy(ids[begin : begin + 512].astype(np.int32)))
            recorder.flush()
            attach(proposer, peak_tolerance=tolerance)
            served = initial
            for _ in range(calls):
                served = PlacerEplbPolicy.rebalance_experts(load, replicas, 0, 8, topology.num_gpus, served)
            detach()
            internode, peak = replay(served)
            print(f"| {task:<11} | {tolerance:>14.2f} | {internode / reference[0]:>17.3f} "
                  f"| {peak / reference[1]:>15.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--esft", type=Path, default=ESFT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print("Routing recorder per engine step (CPU torch, 1 thread; DeepSeek-V3: 61 layers, 58 MoE, top-8)\n")
    print("| step             | recorder (us/step) | host copy per step (us/step) |")
    print("|------------------|-------------------:|-----------------------------:|")
    for label, ours, naive in recorder_rows(args.repeats):
        print(f"| {label:<16} | {ours:>18.1f} | {naive:>28.1f} |")
    print("\n(recorder: one slice copy into the device buffer per step, the host copy and the\n"
          " delivery to a no-op sink amortised; host copy per step: what a naive hook does,\n"
          " on a GPU a .cpu() that also waits for the step's kernels)")

    ids = synthetic_routing(args.tokens)
    weight = np.stack([np.bincount(ids[:, layer].ravel(), minlength=EXPERTS) for layer in range(LAYERS)])
    rebalancer = Rebalancer(LAYERS, EXPERTS, NODES, GPUS_PER_NODE, SLOTS, top_k=TOP_K)
    start = time.perf_counter()
    for begin in range(0, len(ids), 16384):
        rebalancer.observe(ids[begin : begin + 16384])
    observe = time.perf_counter() - start
    print(f"\nWindow fold (Rebalancer.observe): {1e6 * observe / len(ids):.1f} us/token "
          f"({len(ids):,} tokens in {observe:.1f} s), paid by the sink once per full buffer")

    replicas = RANKS * SLOTS
    load = torch.from_numpy(weight.astype(np.int32))
    in_service = PlacerEplbPolicy.rebalance_experts(torch.from_numpy(np.roll(weight, 1, axis=1).astype(np.int32)),
                                                    replicas, GROUPS, NODES, RANKS)
    cases = [
        ("placer EPLB alone", lambda: eplb(weight.astype(np.float64), replicas, GROUPS, NODES, RANKS)),
        ("drop-in, load only, no map", lambda: PlacerEplbPolicy.rebalance_experts(load, replicas, GROUPS, NODES,
                                                                                  RANKS)),
        ("drop-in, load only, map", lambda: PlacerEplbPolicy.rebalance_experts(load, replicas, GROUPS, NODES, RANKS,
                                                                               in_service)),
    ]
    proposer = RebalancerProposer(rebalancer)

    def with_window():
        attach(proposer, peak_tolerance=1.02)
        try:
            return PlacerEplbPolicy.rebalance_experts(load, replicas, GROUPS, NODES, RANKS, in_service)
        finally:
            detach()

    cases.append((f"drop-in, window {args.tokens // 1000}k tok", with_window))
    print(f"\nOne drop-in call: {LAYERS} layers x {EXPERTS} experts, {NODES} x {GPUS_PER_NODE} GPUs, "
          f"{SLOTS} slots/GPU, {GROUPS} groups\n")
    print("| policy                       | wall (s) | x EPLB |")
    print("|------------------------------|---------:|-------:|")
    reference = None
    for label, function in cases:
        seconds = median_seconds(function, args.repeats)
        reference = reference or seconds
        print(f"| {label:<28} | {seconds:>8.3f} | {seconds / reference:>6.1f} |")
    if proposer.last is not None:
        print(f"\nlast window rebalance: mode {proposer.last.mode}, {len(proposer.last.changed_layers)} layers "
              f"changed, {proposer.last.experts_moved} copies moved, {proposer.last.seconds:.2f} s inside")
    if args.esft.is_dir():
        esft_tradeoff(args.esft)
    else:
        print(f"\nESFT traces not found at {args.esft}: trade-off table skipped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
