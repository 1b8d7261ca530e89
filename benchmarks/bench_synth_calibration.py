"""Calibration of the synthetic ``esft`` preset against the real ESFT traces, and generation speed.

Run from the repository root (needs ../shared/traces/esft-dsv2lite; the inter-node
rows need Mt-KaHyPar: `pip install -e ".[bench]"`):

    python benchmarks/bench_synth_calibration.py [--seeds 0] [--no-ratio]
        [--speed-preset deepseek-v3] [--speed-tokens 1000000]

Prints markdown:

* per split (train, test) the mean over layers of the per-layer load skew
  (max/mean), entropy (bits) and distinct-set share of the real ESFT split and of
  the ``esft`` preset at the same token count (``placer stats`` figures), with
  relative differences and PASS/FAIL against the 10% tolerance; the adjacent-token
  expert overlap (share of a token's experts also chosen by the previous token of
  its sequence) is shown for information;
* the held-out inter-node ratio Mt-KaHyPar / contiguous at 4 nodes x 8 GPUs for the
  real split (solve on real train, replay real test) and for the preset (solve on
  synthetic train, replay synthetic test), PASS/FAIL against the 0.05 tolerance;
* generation speed of a frontier preset (tokens x layers per second).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from placer import baseline, evaluate, load_topology
from placer.formats.esft import import_esft
from placer.graph import summarize
from placer.stats import trace_stats
from placer.studies.synth import PRESETS, generate
from placer.trace import Trace

ESFT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "esft-dsv2lite"
STAT_TOLERANCE = 0.10
RATIO_TOLERANCE = 0.05
STATS = (("load_skew", "skew (max/mean)"), ("entropy_bits", "entropy (bits)"),
         ("distinct_share", "distinct-set share"))


def adjacent_overlap(trace: Trace) -> float:
    """Mean over layers and adjacent token pairs of one sequence of |S_t & S_t+1| / k."""
    ids = np.sort(trace.topk_ids.astype(np.int64), axis=2)
    same = np.ones(trace.num_tokens, bool)
    if trace.seq_lens is not None:
        same[np.concatenate([[0], np.cumsum(trace.seq_lens)[:-1]])] = False
    shared = (ids[:-1, :, :, None] == ids[1:, :, None, :]).sum(axis=(2, 3)) / trace.top_k
    return float(shared[same[1:]].mean())


def stat_rows(real: Trace, synthetic: Trace, split: str) -> tuple[list[str], bool]:
    real_means, synth_means = trace_stats(real).means, trace_stats(synthetic).means
    rows, ok = [], True
    for key, label in STATS:
        a, b = real_means[key], synth_means[key]
        rel = b / a - 1
        passed = abs(rel) <= STAT_TOLERANCE
        ok &= passed
        rows.append(f"| {split} | {label} | {a:.3f} | {b:.3f} | {rel:+.1%} | {'PASS' if passed else 'FAIL'} |")
    a, b = adjacent_overlap(real), adjacent_overlap(synthetic)
    rows.append(f"| {split} | adjacent-token overlap (info) | {a:.3f} | {b:.3f} | {b / a - 1:+.1%} | - |")
    return rows, ok


def held_out_ratio(train: Trace, test: Trace, nodes: int = 4, gpus: int = 8) -> float:
    """Mt-KaHyPar (solved on train) / contiguous inter-node tokens, replayed on test."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import mtkahypar_placement

    topology = load_topology("h100-dgx").resized(nodes, gpus)
    peer = mtkahypar_placement(summarize(train), topology)
    contiguous = baseline("contiguous", train.num_layers, train.num_experts, topology.num_gpus,
                          topology.gpus_per_node)
    key = "internode_tokens_dedup"
    return evaluate(test, peer, topology).totals[key] / evaluate(test, contiguous, topology).totals[key]


def speed(preset: str, tokens: int) -> str:
    params = PRESETS[preset]
    generate(params, 1000)  # compile (cached after the first run) and warm up
    started = time.perf_counter()
    trace = generate(params, tokens)
    seconds = time.perf_counter() - started
    rate = tokens * params.num_layers / seconds
    return (f"{preset}: {tokens:,} tokens x {params.num_layers} layers x top-{params.top_k} of "
            f"{params.num_experts} in {seconds:.1f} s = {rate / 1e6:.2f} M token-layers/s "
            f"({trace.topk_ids.nbytes / 2**20:,.0f} MiB of ids)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esft", type=Path, default=ESFT, help="ESFT traces root")
    parser.add_argument("--preset", default="esft")
    parser.add_argument("--seeds", default="0", help="comma-separated generator seeds")
    parser.add_argument("--ratio", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--speed-preset", default="deepseek-v3")
    parser.add_argument("--speed-tokens", type=int, default=1_000_000, help="0 = skip the speed run")
    args = parser.parse_args(argv)
    if not args.esft.is_dir():
        print(f"ESFT traces not found at {args.esft}: nothing to compare.", file=sys.stderr)
        return 1
    train, test = import_esft(args.esft, split=True)
    params = PRESETS[args.preset]
    print(f"ESFT split: train {train.num_tokens:,} tokens, test {test.num_tokens:,} tokens; "
          f"preset {args.preset!r} generated at the same token counts.\n")
    real_ratio = None
    if args.ratio:
        try:
            real_ratio = held_out_ratio(train, test)
        except ImportError:
            print("Mt-KaHyPar is not installed (pip install -e \".[bench]\"): no inter-node rows.\n")
    all_ok = True
    for seed in (int(s) for s in args.seeds.split(",")):
        synth_train = generate(params, train.num_tokens, seed=seed, split="train")
        synth_test = generate(params, test.num_tokens, seed=seed, split="test")
        print(f"## seed {seed}\n")
        print("| split | statistic (mean over layers) | ESFT | synthetic | difference | within 10% |")
        print("|---|---|---|---|---|---|")
        for split, real, synthetic in (("train", train, synth_train), ("test", test, synth_test)):
            rows, ok = stat_rows(real, synthetic, split)
            all_ok &= ok
            print("\n".join(rows))
        if real_ratio is not None:
            ratio = held_out_ratio(synth_train, synth_test)
            passed = abs(ratio - real_ratio) <= RATIO_TOLERANCE
            all_ok &= passed
            print(f"| train -> test | inter-node Mt-KaHyPar / contiguous, 4x8 | {real_ratio:.3f} | {ratio:.3f} "
                  f"| {ratio - real_ratio:+.3f} (abs) | {'PASS' if passed else 'FAIL'} (0.05) |")
        print()
    print(f"Calibration: {'PASS' if all_ok else 'FAIL'}\n")
    if args.speed_tokens:
        print("## Generation speed\n")
        print(speed(args.speed_preset, args.speed_tokens))
    return 0 if all_ok else 2


if __name__ == "__main__":
    sys.exit(main())
