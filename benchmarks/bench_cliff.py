"""Seed 001's "network cliff" reproduced with ``placer sweep``: figures against the seed's, placer vs contiguous.

Run from the repository root:

    python benchmarks/bench_cliff.py [--tokens 200000] [--cache DIR] [--figure PNG]

Generates the ``seed001`` synthetic preset's train and test splits (cached in --cache,
default a directory under the system temp dir), then sweeps EP 1..32 on ``h100-512``
with the ``seed001`` model at the default step (2^19 tokens, normal dispatch, no
per-peer cost): under uniform routing (no trace; per node and per pair) and on the
held-out synthetic split (placer spectral solved on train, at its default NIC-balance
weight alpha and at alpha 2). Prints markdown:

* the seed's figures at EP 16 and 32 next to the sweep's, with growth EP 16 -> 32;
* the synthetic sweep, every EP: GB per step and a2a/compute, contiguous vs placer;
* what the seed's 2.29x ratio growth would need from a per-inter-node-peer cost
  (derived from the bandwidth-only figures, not used anywhere else).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from placer import load_model, load_topology, run_sweep
from placer.studies.sweep import A2A_PASSES, SEED001_REFERENCE, StepModel, SweepResult
from placer.studies.synth import preset, write_trace
from placer.trace import TraceSource

ALPHAS = (None, 2.0)
"""placer's NIC-balance weight: the solver's default (0 at 2 nodes: fewest copies) and 2."""


def cached_split(tokens: int, split: str, cache: Path) -> Path:
    """The seed001 preset's ``split`` (seed 0) with ``tokens`` tokens, generated once."""
    path = cache / f"seed001-{split}-{tokens}.npz"
    if not path.exists():
        write_trace(preset("seed001"), tokens, path, seed=0, split=split)
    return path


def by_ep(result: SweepResult) -> dict:
    return {point.ep: point for point in result.points}


Column = tuple[str, SweepResult, str]
"""(label, sweep, placement name: "contiguous" or "placer")."""


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def seed_table(columns: list[Column]) -> list[str]:
    """Seed figures vs the sweeps at EP 16 and 32, and their growth."""
    rows = []
    for key, label, fmt in (("internode_gb", "inter-node GB per step", ".1f"),
                            ("a2a_to_compute", "a2a / compute", ".3f")):
        values = {ep: [getattr(getattr(by_ep(result)[ep], name), key) for _, result, name in columns]
                  for ep in (16, 32)}
        for ep in (16, 32):
            rows.append([label, str(ep), f"{SEED001_REFERENCE[ep][key]:g}", *(format(v, fmt) for v in values[ep])])
        seed_growth = SEED001_REFERENCE[32][key] / SEED001_REFERENCE[16][key]
        rows.append([f"{label}, growth", "16 -> 32", f"{seed_growth:.2f}x",
                     *(f"{b / a:.2f}x" for a, b in zip(values[16], values[32]))])
    return table(["figure", "EP", "seed 001", *(c[0] for c in columns)], rows)


def sweep_rows(columns: list[Column]) -> list[str]:
    """Every EP: inter-node GB (and x the first column), intra-node GB and a2a/compute per column."""
    header = ["EP", "nodes/group"]
    for label, _, _ in columns:
        header += [f"inter GB {label}", "x first"]
    header += [f"intra GB {c[0]}" for c in columns] + [f"a2a/compute {c[0]}" for c in columns]
    rows = []
    for index, first in enumerate(columns[0][1].points):
        traffic = [getattr(result.points[index], name) for _, result, name in columns]
        row = [str(first.ep), str(first.nodes)]
        base = traffic[0].internode_gb
        for t in traffic:
            row += [f"{t.internode_gb:.1f}", f"{t.internode_gb / base:.3f}" if base else "-"]
        row += [f"{t.intranode_gb:.1f}" for t in traffic] + [f"{t.a2a_to_compute:.3f}" for t in traffic]
        rows.append(row)
    return table(header, rows)


def peer_cost_rows(results: dict[str, SweepResult]) -> list[str]:
    """Per-inter-node-peer cost x (per phase) making a2a/compute grow 3.36 / 1.47 from EP 16 to 32.

    a2a(EP) = bandwidth part B(EP) + A2A_PASSES x layers x 2 phases x peers(EP) x x, so
    x = (B32 - g B16) / (g c16 - c32) with g the seed's growth and c = A2A_PASSES x layers x 2 x peers.
    """
    growth = SEED001_REFERENCE[32]["a2a_to_compute"] / SEED001_REFERENCE[16]["a2a_to_compute"]
    rows = []
    for label, result in results.items():
        p16, p32 = by_ep(result)[16], by_ep(result)[32]
        layers = result.model.num_moe_layers
        c16, c32 = (A2A_PASSES * layers * 2 * p.internode_peers for p in (p16, p32))
        b16, b32 = p16.contiguous.all_to_all_s, p32.contiguous.all_to_all_s
        cost = (b32 - growth * b16) / (growth * c16 - c32)
        if cost < 0:
            rows.append([label, f"{p16.internode_peers} / {p32.internode_peers}", f"{b32 / b16:.2f}x",
                         "none (grows faster already)", "-"])
            continue
        r16, r32 = ((b + c * cost) / p.contiguous.compute_s for b, c, p in ((b16, c16, p16), (b32, c32, p32)))
        rows.append([label, f"{p16.internode_peers} / {p32.internode_peers}", f"{b32 / b16:.2f}x",
                     f"{cost * 1e6:.1f}", f"{r16:.3f} / {r32:.3f}"])
    return table(["sweep", "peers EP 16 / 32", "bandwidth-only growth", "per-peer cost for 2.29x (us)",
                  "a2a/compute EP 16 / 32 with it"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000, help="tokens per synthetic split")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "placer-bench-cliff")
    parser.add_argument("--figure", type=Path, help="also write the synthetic sweep's figure here (PNG)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    model, topology = load_model("seed001"), load_topology("h100-512")
    started = time.perf_counter()
    train, test = (TraceSource(cached_split(args.tokens, split, args.cache)) for split in ("train", "test"))
    generated = time.perf_counter() - started
    uniform = run_sweep(model, topology)
    pairs = run_sweep(model, topology, step=StepModel(dispatch="low-latency"))
    started = time.perf_counter()
    synthetic = {alpha: run_sweep(model, topology, train, test, solver="spectral", alpha=alpha) for alpha in ALPHAS}
    swept = time.perf_counter() - started
    placers = [(f"synthetic placer{'' if a is None else f' alpha {a:g}'}", synthetic[a], "placer") for a in ALPHAS]
    print(f"## Network cliff: seed001 on h100-512, {StepModel().tokens_per_step:,} tokens per step\n")
    print(f"Synthetic: seed001 preset, {args.tokens:,} train tokens (placer spectral solves on them) and "
          f"{args.tokens:,} held-out test tokens (replayed); generation/read {generated:.0f} s, "
          f"{len(ALPHAS)} synthetic sweeps {swept:.0f} s.\n")
    print("\n".join(seed_table([("uniform, per node", uniform, "contiguous"),
                                ("uniform, per pair", pairs, "contiguous"),
                                ("synthetic contiguous", synthetic[None], "contiguous"), *placers])))
    print("\n### Synthetic held-out sweep (normal dispatch: one copy per remote node)\n")
    print("\n".join(sweep_rows([("contiguous", synthetic[None], "contiguous"),
                                *((label.removeprefix("synthetic "), r, n) for label, r, n in placers)])))
    print("\n### Per-inter-node-peer cost the seed's ratio growth would need (contiguous; derived)\n")
    print("\n".join(peer_cost_rows({"uniform, per node (N-1 peers)": uniform,
                                    "uniform, per pair (P-G peers)": pairs})))
    if args.figure is not None:
        from placer.presentation import plots

        plots.save_png(plots.network_cliff(synthetic[ALPHAS[-1]].to_dict(), SEED001_REFERENCE), str(args.figure))
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
