"""Human-readable tables for the CLI (rich) and the reports; machines get ``--json`` instead.

Every table is a :class:`Figures`: row labels, measures (a long name, a short column
header, a meaning for the legend) and cells already formatted. It lays itself out when
printed, to the console's width: in its preferred orientation when that fits, else
transposed, else split into several tables that each repeat the label column. A cell is
never cut: it is as wide as its widest cell, and would fold onto a second line rather than
end in an ellipsis if even one column could not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions
from rich.table import Table
from rich.text import Text

from placer.evaluation.calc import AllToAllVolume
from placer.evaluation.replay import ReplayReport

__all__ = [
    "Figures",
    "Measure",
    "calc_figures",
    "comparison",
    "comparison_table",
    "human_bytes",
    "key_value_table",
    "stats_table",
    "summary_notes",
    "summary_rows",
    "sweep_notes",
    "sweep_table",
    "verdict",
]

_NATURAL = 10_000
"""Width a table is measured at to find its natural (unwrapped) width."""


@dataclass(frozen=True)
class Measure:
    """One measured quantity: its name (a row label), short header (a column) and meaning.

    sub: the measure qualifies the one before it (a ratio to it): indented as a row label.
    """

    name: str
    short: str = ""
    meaning: str = ""
    sub: bool = False

    def header(self, as_row: bool) -> str:
        if as_row:
            return ("  " if self.sub else "") + self.name
        return self.short or self.name


@dataclass(frozen=True)
class Figures:
    """A table of formatted figures that fits any console width without cutting a cell.

    rows: (label, cells) with one cell per measure. transpose: preferred layout has the
    measures as rows and the labels as columns. notes: lines printed after the legend.
    """

    corner: str
    measures: tuple[Measure, ...]
    rows: tuple[tuple[str, tuple[str, ...]], ...]
    title: str = ""
    transpose: bool = False
    notes: tuple[str, ...] = ()

    def grid(self, transpose: bool) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the table in one orientation (transpose: measures as rows)."""
        if not transpose:
            header = [self.corner, *(m.header(False) for m in self.measures)]
            return header, [[label, *cells] for label, cells in self.rows]
        header = ["", *(label for label, _ in self.rows)]
        body = [[m.header(True), *(cells[i] for _, cells in self.rows)] for i, m in enumerate(self.measures)]
        return header, body

    def legend(self, transpose: bool) -> list[str]:
        """"name: meaning" for every measure with a meaning, under the header shown."""
        return [f"{' '.join(m.header(transpose).split())}: {m.meaning}" for m in self.measures if m.meaning]

    def tables(self, console: Console, width: int) -> tuple[list[Table], bool]:
        """The tables that show every cell within ``width`` columns, and whether transposed."""
        for transpose in (self.transpose, not self.transpose):
            header, body = self.grid(transpose)
            table = _table(header, body, range(len(header) - 1))
            if _natural_width(console, table) <= width:
                return [table], transpose
        header, body = self.grid(self.transpose)
        chunks: list[list[int]] = [[]]
        for column in range(len(header) - 1):
            trial = [*chunks[-1], column]
            if chunks[-1] and _natural_width(console, _table(header, body, trial)) > width:
                chunks.append([column])
            else:
                chunks[-1] = trial
        return [_table(header, body, chunk) for chunk in chunks], self.transpose

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[object]:
        tables, transpose = self.tables(console, options.max_width)
        if self.title:
            yield Text(self.title)
        for index, table in enumerate(tables):
            if index:
                yield Text("")
            yield table
        for line in [*self.legend(transpose), *self.notes]:
            yield Text(line, style="dim")


def _table(header: Sequence[str], body: Sequence[Sequence[str]], columns: Sequence[int]) -> Table:
    """A compact rich table of the label column and the value columns ``columns`` (0-based)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
    table.add_column(header[0], overflow="fold")
    for column in columns:
        table.add_column(header[column + 1], justify="right", overflow="fold")
    for row in body:
        table.add_row(row[0], *(row[column + 1] for column in columns))
    return table


def _natural_width(console: Console, table: Table) -> int:
    return console.measure(table, options=console.options.update_width(_NATURAL)).maximum


def _fixed(fmt: str) -> Callable[[float | None], str]:
    return lambda value: "-" if value is None else format(value, fmt)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.3f}"


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.3f}" if value is not None and reference else "-"


# ---------------------------------------------------------------- placements compared


_COMPARED = (
    # totals key, name, short header, format, meaning (one line of the glossary)
    ("internode_tokens_dedup", "inter-node copies", "inter-node", _fixed(","),
     "token copies between nodes, one per remote node, all layers"),
    ("nic_peak_tokens", "busiest NIC copies", "NIC peak", _fixed(","),
     "busiest node's received copies per layer, summed"),
    ("gpu_peak_load", "GPU peak pairs", "GPU peak", _fixed(","),
     "busiest GPU's token-expert pairs per layer, summed"),
    ("gpu_load_imbalance", "GPU max/mean", "max/mean", _fixed(".3f"),
     "busiest GPU's pairs over the mean, per layer, averaged (1 = even)"),
    ("nodes_per_token_mean", "nodes per token", "nodes/tok", _fixed(".2f"),
     "mean nodes a token's experts span in one layer"),
    ("share_over_max_nodes", "tokens over M nodes", "> M nodes", _fixed(".1%"),
     "share of (token, layer) pairs spanning more than --max-nodes nodes"),
    ("all_to_all_s", "a2a ms", "a2a ms", _ms,
     "estimated all-to-all (dispatch + combine) time, summed over layers"),
    ("compute_s", "compute ms", "compute ms", _ms,
     "estimated expert time of the busiest GPU, summed over layers"),
)
_RATIO_OF = ("internode_tokens_dedup", "nic_peak_tokens")
"""Measures followed by their ratio to the reference placement."""


def comparison(
    results: Sequence[tuple[str, ReplayReport]], reference: str | None = None, title: str = ""
) -> Figures:
    """Replays side by side (one column per placement), with ratios to ``reference`` (default:
    the first). A measure no replay has (a2a without a model, "> M nodes" without --max-nodes)
    is left out."""
    reference = results[0][0] if reference is None else reference
    ref = dict(results)[reference].totals
    measures: list[Measure] = []
    columns: list[list[str]] = []
    for key, name, short, fmt, meaning in _COMPARED:
        values = [report.totals.get(key) for _, report in results]
        if all(value is None for value in values):
            continue
        measures.append(Measure(name, short, meaning))
        columns.append([fmt(value) for value in values])
        if key in _RATIO_OF:
            measures.append(Measure(f"x {reference}", f"x {reference}", sub=True))
            columns.append([_ratio(value, ref.get(key)) for value in values])
    rows = tuple((name, tuple(column[i] for column in columns)) for i, (name, _) in enumerate(results))
    note = f"x {reference}: the figure above over {reference}'s ({reference} is the reference)"
    return Figures("placement", tuple(measures), rows, title, transpose=True, notes=(note,))


def summary_rows(
    results: Sequence[tuple[str, ReplayReport]], reference: str
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison, one row per placement (for HTML and Markdown pages)."""
    return comparison(results, reference).grid(transpose=False)


def summary_notes(results: Sequence[tuple[str, ReplayReport]], reference: str) -> str:
    """The glossary of :func:`summary_rows`' columns, one paragraph."""
    figures = comparison(results, reference)
    return "; ".join([*figures.legend(transpose=False), *figures.notes]) + "."


def comparison_table(results: Sequence[tuple[str, ReplayReport]], title: str) -> Figures:
    """The comparison of :func:`comparison`, ratios against the first placement, with a title."""
    return comparison(results, None, title)


_VERDICT = (
    # totals key, fewer, more, what, same
    ("internode_tokens_dedup", "fewer", "more", "inter-node copies", "as many inter-node copies"),
    ("nic_peak_tokens", "less", "more", "on the busiest NIC", "the same on the busiest NIC"),
    ("gpu_peak_load", "less", "more", "load on the busiest GPU", "the same load on the busiest GPU"),
    ("all_to_all_s", "less", "more", "estimated all-to-all time", "the same estimated all-to-all time"),
)


def verdict(results: Sequence[tuple[str, ReplayReport]], chosen: str, reference: str) -> str:
    """One plain sentence: ``chosen`` against ``reference`` on inter-node copies, the busiest
    NIC, the busiest GPU and (with a model) the estimated all-to-all time; changes under 0.5%
    are called the same."""
    totals = {name: report.totals for name, report in results}
    ours, ref = totals[chosen], totals[reference]
    parts = []
    for key, fewer, more, what, same in _VERDICT:
        if ours.get(key) is None or not ref.get(key):
            continue
        change = round(100 * (1 - ours[key] / ref[key]))
        parts.append(same if change == 0 else f"{abs(change)}% {fewer if change > 0 else more} {what}")
    return f"{chosen}: {', '.join(parts)} than {reference}."


# ---------------------------------------------------------------- other tables


def key_value_table(rows: Mapping[str, object], title: str) -> Table:
    """A two-column table of named figures (long values wrap; none is cut)."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("name", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for name, value in rows.items():
        if isinstance(value, float):
            shown = f"{value:,.4g}"
        elif isinstance(value, int):
            shown = f"{value:,}"
        else:
            shown = str(value)
        table.add_row(name, shown)
    return table


_STATS = (
    ("load_skew", Measure("load skew", "skew", "max over mean token-expert pairs per expert")),
    ("entropy_bits", Measure("usage entropy (bits)", "entropy", "entropy of the expert choice, in bits "
                                                                 "(log2 E when every expert is used equally)")),
    ("distinct_share", Measure("distinct sets / tokens", "distinct", "distinct top-k expert sets per token")),
    ("density", Measure("co-activation density", "density",
                        "share of expert pairs chosen together by at least one token")),
)


def stats_table(stats: dict) -> Figures:
    """Per-layer trace statistics (``TraceStats.to_dict()``) with the mean as the last row."""
    per_layer, fmt = stats["per_layer"], _fixed(".3f")
    rows = [(str(layer), tuple(fmt(per_layer[key][row]) for key, _ in _STATS))
            for row, layer in enumerate(stats["layer_ids"])]
    rows.append(("mean", tuple(fmt(stats["mean"][key]) for key, _ in _STATS)))
    return Figures("layer", tuple(m for _, m in _STATS), tuple(rows),
                   "per MoE layer (trace layer ids are 0-based)")


def sweep_table(result) -> Figures:
    """One row per EP size of a :class:`placer.studies.sweep.SweepResult`: GB per step and a2a/compute."""
    step = result.step
    copies = "one copy per remote node" if step.dispatch == "normal" else "one copy per remote pair"
    measures = (
        Measure("nodes per EP group", "nodes"),
        Measure("inter-node GB, contiguous", "inter\ncontig"),
        Measure("inter-node GB, placer", "inter\nplacer"),
        Measure("placer / contiguous", "ratio"),
        Measure("NVLink GB, contiguous", "intra\ncontig"),
        Measure("NVLink GB, placer", "intra\nplacer"),
        Measure("a2a/compute, contiguous", "a2a/cmp\ncontig"),
        Measure("a2a/compute, placer", "a2a/cmp\nplacer"),
    )
    glossary = (
        ("inter / intra: GB per step between nodes / over NVLink; ratio: placer's inter-node GB over "
        "contiguous's; a2a/cmp: all-to-all time over expert compute time (compute at balanced load, "
        "the same for both placements, so lower is better)"),
    )
    gb = _fixed(",.1f")
    rows = tuple(
        (str(p.ep), (
            str(p.nodes), gb(p.contiguous.internode_gb), gb(p.placer.internode_gb), _fixed(".3f")(p.internode_ratio),
            gb(p.contiguous.intranode_gb), gb(p.placer.intranode_gb),
            f"{p.contiguous.a2a_to_compute:.3f}", f"{p.placer.a2a_to_compute:.3f}",
        ))
        for p in result.points
    )
    title = (f"{result.model.name} on {result.topology.name}: {step.tokens_per_step:,} tokens per step, "
             f"{result.routing} routing, {step.dispatch} dispatch ({copies}); GB per step, whole cluster")
    return Figures("EP", measures, rows, title, notes=glossary)


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
        f"all-to-all on the busiest NIC / NVLink GPU, compute at balanced load; "
        f"placer solver {result.solver}, seed {result.seed}"
        f"{'' if result.alpha is None else f', alpha {result.alpha:g}'}."
    )


# ---------------------------------------------------------------- calc


def human_bytes(count: float) -> str:
    """Bytes in decimal units with three significant digits: 468 MB, 40.7 GB, 7,168 B."""
    for unit, divisor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= divisor * 0.9995:
            return f"{count / divisor:.3g} {unit}"
    return f"{count:,.0f} B"


def calc_figures(volume: AllToAllVolume) -> Figures:
    """The analytic all-to-all volume of :mod:`placer.evaluation.calc` with units; rows that do
    not apply (no --max-nodes, no topology) are left out."""
    v = volume
    measures = (
        Measure("token vectors", "token vectors"),
        Measure("dispatch", "dispatch", f"bytes sent, {v.dispatch_bytes_per_vector:,.0f} B per token vector"),
        Measure("combine", "combine", f"bytes returned, {v.combine_bytes_per_vector:,.0f} B per token vector"),
    )
    flows = [
        ("to other GPUs", v.remote_vectors),
        ("  of which on the same node", v.intra_node_vectors),
        ("  on other nodes, one per GPU", v.inter_node_vectors),
        ("  on other nodes, one per node", v.node_dedup_vectors),
        (f"  on other nodes, at most {v.max_nodes} nodes", v.node_limited_vectors),
        ("over the NIC (one per remote node)", v.nic_vectors),
    ]
    rows = tuple(
        (label, (f"{vectors:,.0f}", human_bytes(vectors * v.dispatch_bytes_per_vector),
                 human_bytes(vectors * v.combine_bytes_per_vector)))
        for label, vectors in flows if vectors is not None
    )
    notes = [(f"forward pass, all MoE layers: {human_bytes(v.forward_bytes)} per GPU (dispatch + combine "
             f"to other GPUs)")]
    if v.all_to_all_time_s is not None and v.expert_compute_time_s is not None:
        notes.append(
            f"on {v.topology}: all-to-all {v.all_to_all_time_s * 1e3:,.3f} ms and expert compute "
            f"{v.expert_compute_time_s * 1e3:,.3f} ms per layer; all-to-all / compute {v.comm_compute_ratio:.2f} "
            f"(above 1: the network takes longer than the experts unless the two overlap)"
        )
    title = (f"{v.model} at EP {v.ep_size} ({v.nodes} nodes x {v.gpus_per_node} GPUs), "
             f"{v.tokens_per_gpu:,} tokens per GPU, uniform routing; per GPU, per MoE layer, one way")
    return Figures("", measures, rows, title, notes=tuple(notes))


# ---------------------------------------------------------------- timeline


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
            f"{t['nic_moves'] / (len(result.windows) - 1):,.0f}", "-" if a2a is None else f"{a2a:.4f}",
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
