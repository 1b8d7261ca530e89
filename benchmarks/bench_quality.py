"""Placement quality on held-out ESFT tokens: placer vs Mt-KaHyPar vs baselines.

Run:  python benchmarks/bench_quality.py [--train /tmp/esft-train.npz --test /tmp/esft-test.npz]
      [--topologies 4x8,8x8] [--solvers spectral,auto] [--time-limit 60] [--no-loto] [--boot 200]

Prints markdown tables: held-out metrics and ratios vs contiguous and vs
Mt-KaHyPar (same run, same split and topology), leave-one-task-out results and
bootstrap 95% confidence intervals over test sequences.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from placer.placement import Placement, baseline, from_expert_gpu  # noqa: E402
from placer.trace import Trace, validate_arrays  # noqa: E402

METRICS = ("internode_tokens_dedup", "nic_peak_tokens", "gpu_peak_load", "gpu_load_imbalance")
ESFT_ROOT = Path("/work/shared/traces/esft-dsv2lite")


def load(path: str) -> Trace:
    """Load a native .npz trace (direct read; see report about load_trace)."""
    try:
        from placer.trace import load_trace

        return load_trace(path)
    except Exception:  # noqa: BLE001 - fall back to reading the arrays ourselves
        with np.load(path, allow_pickle=False) as npz:
            return validate_arrays(path, {k: npz[k] for k in npz.files})


# ------------------------------------------------------------------ metrics


def replay_metrics(trace: Trace, placement: Placement) -> dict[str, float]:
    """The evaluator's totals (placer.replay.evaluate when available, else the same definitions here)."""
    try:
        from placer.replay import evaluate  # type: ignore
        from placer.topology import Topology

        topo = Topology("bench", placement.num_nodes, placement.gpus_per_node, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
        return {k: float(evaluate(trace, placement, topo).totals[k]) for k in METRICS}
    except ImportError:
        pass
    return _own_totals(trace, placement)


def _token_node_hits(ids: np.ndarray, expert_gpu: np.ndarray, G: int, N: int) -> np.ndarray:
    """[tokens, nodes] bool: node holds >= 1 of the token's experts."""
    hit = np.zeros((ids.shape[0], N), dtype=bool)
    for i in range(ids.shape[1]):
        col = ids[:, i]
        ok = col >= 0
        hit[np.flatnonzero(ok), expert_gpu[col[ok]] // G] = True
    return hit


def token_arrays(trace: Trace, placement: Placement) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token contributions for bootstrap: internode [T, L], received [T, L, N] bool, gpu pairs [T, L, P] int8."""
    G, N, P = placement.gpus_per_node, placement.num_nodes, placement.num_gpus
    eg = placement.expert_gpu()
    T, L = trace.num_tokens, trace.num_layers
    src = (np.arange(T) % P) // G
    inter = np.zeros((T, L), dtype=np.int16)
    recv = np.zeros((T, L, N), dtype=bool)
    gpu = np.zeros((T, L, P), dtype=np.int8)
    for layer in range(L):
        ids = trace.topk_ids[:, layer, :]
        hit = _token_node_hits(ids, eg[layer], G, N)
        hit[np.arange(T), src] = False
        recv[:, layer] = hit
        inter[:, layer] = hit.sum(axis=1)
        for i in range(ids.shape[1]):
            col = ids[:, i]
            ok = col >= 0
            np.add.at(gpu[:, layer], (np.flatnonzero(ok), eg[layer][col[ok]]), 1)
    return inter, recv, gpu


def totals_from_tokens(inter, recv, gpu) -> dict[str, float]:
    loads = gpu.sum(axis=0, dtype=np.int64)  # [L, P]
    mean = loads.mean(axis=1)
    return {
        "internode_tokens_dedup": float(inter.sum(dtype=np.int64)),
        "nic_peak_tokens": float(recv.sum(axis=0, dtype=np.int64).max(axis=1).sum()),
        "gpu_peak_load": float(loads.max(axis=1).sum()),
        "gpu_load_imbalance": float(np.mean(loads.max(axis=1) / np.maximum(mean, 1e-12))),
    }


def _own_totals(trace: Trace, placement: Placement) -> dict[str, float]:
    return totals_from_tokens(*token_arrays(trace, placement))


# ------------------------------------------------------------------ Mt-KaHyPar reference


def mtkahypar_placement(train: Trace, nodes: int, G: int) -> Placement | None:
    """Mt-KaHyPar QUALITY, seed 0, 1 thread, km1, equal expert counts per node; then
    longest-first packing by train load onto GPUs with equal counts per GPU."""
    try:
        import mtkahypar
    except ImportError:
        return None
    from placer.solvers.problem import distinct_sets

    global _MTK
    if "_MTK" not in globals():
        _MTK = mtkahypar.initialize(1, False)
    mtkahypar.set_seed(0)
    E, P = train.num_experts, nodes * G
    slots = -(-E // P)
    eg = np.zeros((train.num_layers, E), dtype=np.int64)
    for layer in range(train.num_layers):
        ids = train.topk_ids[:, layer, :]
        nets, weights = distinct_sets(ids)
        loads = np.bincount(ids[ids >= 0], minlength=E)
        ctx = _MTK.context_from_preset(mtkahypar.PresetType.QUALITY)
        ctx.set_partitioning_parameters(nodes, 0.0, mtkahypar.Objective.KM1)
        ctx.logging = False
        hg = _MTK.create_hypergraph(ctx, E, len(nets), [list(r[r >= 0]) for r in nets],
                                    [1] * E, weights.tolist())
        part = hg.partition(ctx)
        node = np.array([part.block_id(e) for e in range(E)])
        for n in range(nodes):
            members = np.flatnonzero(node == n)
            members = members[np.argsort(-loads[members], kind="stable")]
            gl = np.zeros(G)
            gc = np.zeros(G, dtype=int)
            for e in members:
                free = np.flatnonzero(gc < slots)
                g = free[np.argmin(gl[free])]
                gl[g] += loads[e]
                gc[g] += 1
                eg[layer, e] = n * G + g
    return from_expert_gpu(eg, P, G, slots, metadata={"solver": {"name": "mtkahypar"}})


# ------------------------------------------------------------------ runs


@dataclass
class Row:
    name: str
    metrics: dict
    seconds: float
    placement: Placement


def solve_all(train: Trace, nodes: int, G: int, solvers: list[str], time_limit: float,
              with_mtk: bool = True) -> list[Row]:
    from placer.solvers import place
    from placer.topology import Topology

    rows = []
    P = nodes * G
    for name in ("contiguous", "round-robin", "random"):
        rows.append(Row(name, {}, 0.0, baseline(name, train.num_layers, train.num_experts, P, G)))
    if with_mtk:
        t = time.perf_counter()
        pl = mtkahypar_placement(train, nodes, G)
        if pl is not None:
            rows.append(Row("mtkahypar", {}, time.perf_counter() - t, pl))
    topo = Topology("bench", nodes, G, 80e9, 1e15, 4.5e11, 5e10, 5e-6)
    for solver in solvers:
        t = time.perf_counter()
        pl, report = place(train, topo, solver=solver, time_limit=time_limit, seed=0, workers=2)
        rows.append(Row(f"placer-{solver}", {"report": report}, time.perf_counter() - t, pl))
    return rows


def fmt_table(rows: list[Row], test: Trace) -> str:
    ref = {r.name: r for r in rows}
    for r in rows:
        r.metrics.update(replay_metrics(test, r.placement))
    cont = ref["contiguous"].metrics
    mtk = ref["mtkahypar"].metrics if "mtkahypar" in ref else None
    head = "| placement | solve s | internode | /contig | /mtk | nic peak | /contig | /mtk | gpu peak | /mtk | imbalance |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        m = r.metrics

        def ratio(key, base):
            return f"{m[key] / base[key]:.3f}" if base else "n/a"

        lines.append(
            f"| {r.name} | {r.seconds:.1f} | {m['internode_tokens_dedup']:.0f} | {ratio('internode_tokens_dedup', cont)} | "
            f"{ratio('internode_tokens_dedup', mtk)} | {m['nic_peak_tokens']:.0f} | {ratio('nic_peak_tokens', cont)} | "
            f"{ratio('nic_peak_tokens', mtk)} | {m['gpu_peak_load']:.0f} | {ratio('gpu_peak_load', mtk)} | "
            f"{m['gpu_load_imbalance']:.3f} |"
        )
    return "\n".join(lines)


def bootstrap(rows: list[Row], test: Trace, reps: int, seed: int = 0) -> str:
    """95% CI of placer/contiguous and placer/mtk ratios, resampling test sequences (tokens keep their source GPU)."""
    assert test.seq_lens is not None
    bounds = np.concatenate([[0], np.cumsum(test.seq_lens)])
    arrays = {r.name: token_arrays(test, r.placement) for r in rows}
    rng = np.random.default_rng(seed)
    S = len(test.seq_lens)
    samples = {r.name: [] for r in rows}
    for _ in range(reps):
        pick = rng.integers(S, size=S)
        idx = np.concatenate([np.arange(bounds[s], bounds[s + 1]) for s in pick])
        # each resampled token keeps the source GPU of its original row
        for name, (inter, recv, gpu) in arrays.items():
            samples[name].append(totals_from_tokens(inter[idx], recv[idx], gpu[idx]))
    lines = ["| placement | metric | ratio vs contiguous [95% CI] | ratio vs mtkahypar [95% CI] |", "|---|---|---|---|"]
    for r in rows:
        if not r.name.startswith("placer"):
            continue
        for key in ("internode_tokens_dedup", "nic_peak_tokens", "gpu_peak_load"):
            out = []
            for base in ("contiguous", "mtkahypar"):
                if base not in samples:
                    out.append("n/a")
                    continue
                ratios = np.array([a[key] / b[key] for a, b in zip(samples[r.name], samples[base])])
                lo, mid, hi = np.percentile(ratios, [2.5, 50, 97.5])
                out.append(f"{mid:.3f} [{lo:.3f}, {hi:.3f}]")
            lines.append(f"| {r.name} | {key} | {out[0]} | {out[1]} |")
    return "\n".join(lines)


def loto(nodes: int, G: int, solvers: list[str], time_limit: float) -> str:
    from placer.esft import ESFT_TASKS, read_esft_task
    from placer.trace import concatenate

    tasks = {t: read_esft_task(ESFT_ROOT / t) for t in ESFT_TASKS}
    lines = ["| held-out task | placement | internode /contig | /mtk | nic peak /contig | /mtk | gpu peak /mtk |",
             "|---|---|---|---|---|---|---|"]
    for out in ESFT_TASKS:
        train = concatenate([tasks[t] for t in ESFT_TASKS if t != out])
        rows = solve_all(train, nodes, G, solvers, time_limit)
        rows = [r for r in rows if r.name in ("contiguous", "mtkahypar") or r.name.startswith("placer")]
        for r in rows:
            r.metrics.update(replay_metrics(tasks[out], r.placement))
        c = rows[0].metrics
        m = next((r.metrics for r in rows if r.name == "mtkahypar"), None)
        for r in rows[1:]:
            x = r.metrics
            rm = (lambda k: f"{x[k] / m[k]:.3f}") if m else (lambda k: "n/a")
            lines.append(f"| {out} | {r.name} | {x['internode_tokens_dedup'] / c['internode_tokens_dedup']:.3f} | "
                         f"{rm('internode_tokens_dedup')} | {x['nic_peak_tokens'] / c['nic_peak_tokens']:.3f} | "
                         f"{rm('nic_peak_tokens')} | {rm('gpu_peak_load')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default="/tmp/esft-train.npz")
    ap.add_argument("--test", default="/tmp/esft-test.npz")
    ap.add_argument("--topologies", default="4x8,8x8")
    ap.add_argument("--solvers", default="spectral,auto")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--loto", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--loto-solvers", default="spectral")
    ap.add_argument("--boot", type=int, default=200)
    args = ap.parse_args(argv)
    train, test = load(args.train), load(args.test)
    solvers = [s for s in args.solvers.split(",") if s]
    try:
        import mtkahypar  # noqa: F401
    except ImportError:
        print("> Mt-KaHyPar is not installed (pip install mtkahypar): its rows and ratios are skipped.\n")
    try:
        import placer.replay  # noqa: F401
        print("> metrics: placer.replay.evaluate\n")
    except ImportError:
        print("> metrics: benchmark's own implementation of the evaluator definitions (placer.replay not found)\n")
    for topo in args.topologies.split(","):
        nodes, G = map(int, topo.split("x"))
        print(f"## {nodes} nodes x {G} GPUs: train {train.num_tokens} tokens, held-out test {test.num_tokens} tokens\n")
        rows = solve_all(train, nodes, G, solvers, args.time_limit)
        print(fmt_table(rows, test) + "\n")
        for r in rows:
            rep = r.metrics.get("report")
            if rep is not None:
                print(f"- {r.name}: {rep.summary()}")
        print()
        if args.boot:
            print(f"### bootstrap over {len(test.seq_lens)} test sequences ({args.boot} resamples)\n")
            print(bootstrap([r for r in rows if r.name in ("contiguous", "mtkahypar") or r.name.startswith("placer")],
                            test, args.boot) + "\n")
        if args.loto and ESFT_ROOT.is_dir():
            print("### leave-one-task-out (solve on three tasks, replay the fourth)\n")
            print(loto(nodes, G, [s for s in args.loto_solvers.split(",") if s], args.time_limit) + "\n")


if __name__ == "__main__":
    main()
