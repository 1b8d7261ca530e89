"""Human-readable tables for the CLI (rich); machines get ``--json`` instead."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich import box
from rich.table import Table

from placer.evaluation.replay import ReplayReport


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.3f}" if reference else "-"


def _maybe(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary_rows(
    results: Sequence[tuple[str, ReplayReport]], reference: str
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table; ratios are against the ``reference`` row.

    The "> M nodes" column appears only when some replay counted it (``--max-nodes``).
    """
    ref = dict(results)[reference].totals
    with_max = any(r.totals.get("max_nodes") for _, r in results)
    header = [
        "placement", "inter-node tokens", f"x {reference}", "NIC peak tokens", f"x {reference}",
        "GPU peak pairs", "GPU max/mean", "nodes/token",
        *(["> M nodes"] if with_max else []), "a2a ms", "a2a/compute",
    ]
    rows = []
    for name, report in results:
        t = report.totals
        a2a = t.get("all_to_all_s")
        rows.append([
            name,
            f"{t['internode_tokens_dedup']:,}",
            _ratio(t["internode_tokens_dedup"], ref["internode_tokens_dedup"]),
            f"{t['nic_peak_tokens']:,}",
            _ratio(t["nic_peak_tokens"], ref["nic_peak_tokens"]),
            f"{t['gpu_peak_load']:,}",
            f"{t['gpu_load_imbalance']:.3f}",
            f"{t['nodes_per_token_mean']:.2f}",
            *([_maybe(t.get("share_over_max_nodes"), ".1%")] if with_max else []),
            _maybe(None if a2a is None else a2a * 1e3, ".3f"),
            _maybe(t.get("a2a_to_compute_ratio"), ".2f"),
        ])
    return header, rows


def comparison_table(results: Sequence[tuple[str, ReplayReport]], title: str) -> Table:
    """One row per placement; ratios are against the first row."""
    header, rows = summary_rows(results, results[0][0])
    table = Table(title=title, title_justify="left")
    table.add_column(header[0])
    for name in header[1:]:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def key_value_table(rows: Mapping[str, object], title: str) -> Table:
    """A two-column table of named figures."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("name")
    table.add_column("value", justify="right")
    for name, value in rows.items():
        shown = f"{value:,.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        table.add_row(name, shown)
    return table


STAT_COLUMNS = {
    "load_skew": "load skew (max/mean)",
    "entropy_bits": "usage entropy (bits)",
    "distinct_share": "distinct sets / tokens",
    "density": "co-activation density",
}


def stats_table(stats: dict) -> Table:
    """Per-layer trace statistics (``TraceStats.to_dict()``) with the mean as the last row."""
    table = Table(title="per layer (trace layer ids are 0-based MoE layers)", title_justify="left")
    table.add_column("layer", justify="right")
    for header in STAT_COLUMNS.values():
        table.add_column(header, justify="right")
    per_layer = stats["per_layer"]
    for row, layer in enumerate(stats["layer_ids"]):
        table.add_row(str(layer), *(_maybe(per_layer[name][row], ".3f") for name in STAT_COLUMNS))
    table.add_row("mean", *(_maybe(stats["mean"][name], ".3f") for name in STAT_COLUMNS), style="bold")
    return table


def sweep_table(result) -> Table:
    """One row per EP size of a :class:`placer.studies.sweep.SweepResult`: GB per step and a2a/compute."""
    step = result.step
    copies = "one copy per remote node" if step.dispatch == "normal" else "one copy per remote pair"
    table = Table(
        title=f"{result.model.name} on {result.topology.name}: {step.tokens_per_step:,} tokens per step, "
              f"{result.routing} routing, {step.dispatch} dispatch ({copies}); GB per step, whole cluster",
        title_justify="left",
    )
    for name in ("EP", "nodes/group", "inter GB contiguous", "inter GB placer", "placer/contig",
                 "intra GB contiguous", "intra GB placer", "a2a/compute contiguous", "a2a/compute placer"):
        table.add_column(name, justify="right")
    for p in result.points:
        table.add_row(
            str(p.ep), str(p.nodes),
            f"{p.contiguous.internode_gb:,.1f}", f"{p.placer.internode_gb:,.1f}", _maybe(p.internode_ratio, ".3f"),
            f"{p.contiguous.intranode_gb:,.1f}", f"{p.placer.intranode_gb:,.1f}",
            f"{p.contiguous.a2a_to_compute:.3f}", f"{p.placer.a2a_to_compute:.3f}",
        )
    return table


def sweep_notes(result) -> str:
    """The assumptions behind a sweep's figures, one paragraph."""
    m, t, s = result.model, result.topology, result.step
    return (
        f"Assumptions: {m.num_moe_layers} MoE layers, hidden {m.hidden_size} x {m.dispatch_bytes_per_element:g} B "
        f"dispatch / {m.combine_bytes_per_element:g} B combine per element, expert width {m.moe_intermediate_size}; "
        f"forward + backward = {s.to_dict()['a2a_passes']} all-to-all rounds (dispatch + combine each) and "
        f"{s.to_dict()['compute_passes']}x forward expert FLOPs; NIC {t.nic_bandwidth / 1e9:g} GB/s per GPU, "
        f"NVLink {t.nvlink_bandwidth / 1e9:g} GB/s, {t.latency_s * 1e6:g} us per phase"
        f" + {s.peer_latency_s * 1e6:g} us per inter-node peer, {t.gpu_flops / 1e12:g} TFLOP/s per GPU; "
        f"all-to-all on the busiest NIC / NVLink GPU, compute at balanced load; placer solver {result.solver}, seed {result.seed}"
        f"{'' if result.alpha is None else f', alpha {result.alpha:g}'}."
    )


def timeline_tables(result) -> list[Table]:
    """A timeline replay (:class:`placer.evaluation.timeline.Timeline`) as two tables that fit
    80 columns: totals per policy over the counted windows (ratios against ``static`` when it
    ran), then inter-node copies per window and policy (thousands)."""
    totals = result.totals
    static = totals.get("static")
    summary = Table(title=f"totals over windows 1..{len(result.windows) - 1} ({result.config['window_tokens']:,} "
                          "tokens each; window 0 contiguous, not counted). inter/NIC/GPU: inter-node "
                          "copies, NIC peak, GPU peak (thousands); moved: expert copies per rebalance "
                          "(NIC mv: over the NIC); a2a+mig: seconds; b-even: serving steps to repay "
                          "migration vs static", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("policy", "inter", "x stat", "NIC", "GPU", "moved", "NIC mv", "a2a+mig", "b-even"):
        summary.add_column(name, justify="left" if name == "policy" else "right")
    for policy, t in totals.items():
        a2a = t.get("a2a_plus_migration_s")
        even = t.get("break_even_steps")
        summary.add_row(
            policy, f"{t['internode_copies'] / 1e3:,.1f}",
            "-" if static is None else _ratio(t["internode_copies"], static["internode_copies"]),
            f"{t['nic_peak'] / 1e3:,.1f}", f"{t['gpu_peak'] / 1e3:,.1f}", f"{t['moves_per_rebalance']:,.0f}",
            f"{t['nic_moves'] / (len(result.windows) - 1):,.0f}", _maybe(a2a, ".4f"),
            "-" if even is None else ("never" if even == float("inf") else f"{even:,.1f}"),
        )
    windows = Table(title="inter-node copies per window (thousands; * = contiguous)", title_justify="left",
                    box=box.SIMPLE_HEAD)
    windows.add_column("window", justify="right")
    windows.add_column("tokens", justify="right")
    for policy in result.per_window:
        windows.add_column(policy, justify="right")
    for index, (lo, hi) in enumerate(result.windows):
        windows.add_row(str(index) + ("*" if index == 0 else ""), f"{hi - lo:,}",
                        *(f"{rows[index]['internode_copies'] / 1e3:,.1f}" for rows in result.per_window.values()))
    return [summary, windows]
