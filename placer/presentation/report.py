"""Placement reports: replay placements side by side and write an HTML or Markdown page with figures.

:func:`write_report` evaluates every placement (plus the contiguous, round-robin
and random baselines unless given), draws the figures of :mod:`placer.presentation.plots`
into PNG files and writes either ``index.html`` (PNGs embedded as base64 data
URIs, so the one file is self-contained; the PNGs stay beside it) or
``report.md`` (referencing the PNGs). Every file is written atomically.

Needs matplotlib (extra ``plots``).
"""

from __future__ import annotations

import base64
import html
import io
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from placer import __version__
from placer.atomic import atomic_output, refuse_overwriting_input, write_text_atomic
from placer.checks import check_choice
from placer.dispatch import LP_BATCH_TOKENS
from placer.errors import InputError
from placer.evaluation.replay import ReplayReport
from placer.graph import summarize
from placer.placement import BASELINES, Placement, baseline
from placer.presentation import REPORT_FORMATS, plots
from placer.presentation.render import summary_notes, summary_rows
from placer.progress import ProgressFn
from placer.request import BATCHED_RULES
from placer.topology import Model, Topology
from placer.trace import Trace, TraceSource
from placer.workflow import compare, with_baselines

FIGURE_NAMES = ("coactivation", "expert_map", "nic_per_node", "gpu_load", "nodes_per_token", "per_layer", "tradeoff")
"""PNG files of a report (``NAME.png``), in the order the page shows them."""
INDEX = {"html": "index.html", "md": "report.md"}


@dataclass
class ReportFigure:
    """One figure of the report: its PNG file name, heading, reading guide and the PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes = field(repr=False)

    @property
    def filename(self) -> str:
        return f"{self.name}.png"


@dataclass
class ReportData:
    """Everything a report shows: the replays (reference row first in ``reference``), config, figures."""

    title: str
    results: list[tuple[str, ReplayReport]]
    reference: str
    config: dict[str, str]
    placements_info: list[tuple[str, str]]
    figures: list[ReportFigure]


# ---------------------------------------------------------------- inputs


def _open(trace: Trace | TraceSource | str | Path, label: str | None) -> tuple[Trace | TraceSource, str]:
    """The trace (paths opened for streaming) and the name to show it under."""
    if isinstance(trace, (str, Path)):
        return TraceSource(trace), label or str(trace)
    if isinstance(trace, TraceSource):
        return trace, label or str(trace.path)
    return trace, label or "in-memory trace"


def reference_placement(
    entries: list[tuple[str, Placement]], num_layers: int, num_experts: int, topology: Topology
) -> str:
    """The row ratios are taken against: the contiguous layout (by name or by slots), else the first row."""
    names = [name for name, _ in entries]
    if "contiguous" in names:
        return "contiguous"
    contiguous = baseline("contiguous", num_layers, num_experts, topology.num_gpus, topology.gpus_per_node)
    for name, p in entries:
        if p.phy2log.shape == contiguous.phy2log.shape and np.array_equal(p.phy2log, contiguous.phy2log):
            return name
    return names[0]


def _solver_facts(name: str, placement: Placement) -> str:
    """One line about where a placement came from (its metadata)."""
    solver = placement.metadata.get("solver") or {}
    parts = []
    if isinstance(solver, dict) and solver.get("name"):
        parts.append(f"solver {solver['name']}")
        for key, label in (("objective", "train objective"), ("gap", "gap")):
            value = solver.get(key)
            if isinstance(value, (int, float)):
                parts.append(f"{label} {value:.1%}" if key == "gap" else f"{label} {value:,.0f}")
    if name in BASELINES and not parts:
        parts.append("baseline")
    copies = placement.expert_copies()
    if copies.size and copies.max() > 1:
        parts.append(f"{int((copies > 1).sum())} replicated (layer, expert) pairs")
    if placement.excluded_gpus:
        parts.append(f"GPUs out of service: {placement.excluded_gpus}")
    parts.append(f"{placement.slots_per_gpu} slots per GPU")
    return ", ".join(parts)


# ---------------------------------------------------------------- figures


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    plots.save_png(fig, buffer)
    return buffer.getvalue()


def _grid(count: int, max_columns: int) -> tuple[int, int]:
    columns = min(count, max_columns)
    return -(-count // columns), columns


def _coactivation_figure(coactivation, entries, layer: int, num_experts: int) -> bytes:
    """One heatmap panel per placement on one colour scale, titled with its share of pairs within a node."""
    rows, columns = _grid(len(entries), 2 if len(entries) <= 4 else 3)
    fig = plots.new_figure(4.6 * columns + 1.2, 4.4 * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    dense = coactivation.toarray()
    vmax = float(dense.max()) if dense.size else 1.0
    image = None
    for ax, (name, placement) in zip(axes.flat, entries):
        gpus = placement.expert_gpu()[layer, :num_experts]
        order, boundaries = plots.expert_order(gpus, placement.gpus_per_node)
        share = plots.within_block_share(dense, boundaries, order)
        image = plots.coactivation_heatmap(
            dense, order, boundaries, ax, vmax=vmax, colorbar=False,
            title=f"{plots.short(name)}\n{share:.0%} of co-activations within a node",
        )
    for ax in list(axes.flat)[len(entries):]:
        fig.delaxes(ax)
    for ax in axes[:, 1:].flat:
        ax.set_ylabel("")
    for index, ax in enumerate(list(axes.flat)[: len(entries)]):
        if index + columns < len(entries):  # a panel below this one carries the label
            ax.set_xlabel("")
    bar = fig.colorbar(image, ax=list(axes.flat)[: len(entries)], shrink=0.8 if rows > 1 else 0.95)
    bar.set_label("tokens choosing both experts (log scale)")
    wrap = "\n" if columns == 1 else ", "
    fig.suptitle(f"Expert co-activation in MoE layer {layer}{wrap}rows and columns in each placement's order")
    return _png(fig)


def _expert_map_figure(entries, num_experts: int) -> bytes:
    count = len(entries)
    layers = entries[0][1].num_layers
    panel = min(max(1.0 + layers * 0.06, 1.9), 4.0)
    fig = plots.new_figure(10.0, panel * count + 0.6)
    axes = fig.subplots(count, 1, squeeze=False)[:, 0]
    for index, (ax, (name, placement)) in enumerate(zip(axes, entries)):
        plots.expert_gpu_map(
            placement.expert_gpu()[:, :num_experts], placement.gpus_per_node, ax,
            title=plots.short(name, 60), legend=index == 0,
        )
        if index < count - 1:
            ax.set_xlabel("")
    fig.suptitle("Node holding each expert, per layer")
    return _png(fig)


def _nic_figure(reports: dict[str, ReplayReport]) -> bytes:
    fig = plots.new_figure(11.0, 4.6)
    left, right = fig.subplots(1, 2, sharey=True)
    plots.nic_bytes_per_node(reports, left, direction="recv", title="Received per node", legend=False)
    plots.nic_bytes_per_node(reports, right, direction="sent", title="Sent per node", legend=False)
    right.set_ylabel("")
    right.tick_params(labelleft=True)
    plots.figure_legend(fig, *left.get_legend_handles_labels())
    fig.suptitle("Inter-node (NIC) traffic per node, all layers")
    return _png(fig)


def _per_layer_figure(reports: dict[str, ReplayReport]) -> bytes:
    fig = plots.new_figure(9.0, 7.4)
    top, bottom = fig.subplots(2, 1, sharex=True)
    plots.internode_per_layer(reports, top, legend=False)
    plots.imbalance_per_layer(reports, bottom, legend=False)
    top.set_xlabel("")
    plots.figure_legend(fig, *top.get_legend_handles_labels())
    return _png(fig)


def _single(draw, reports, width: float = 9.0, height: float = 4.6, **options) -> bytes:
    """A one-panel figure of ``draw`` with the legend under it."""
    fig = plots.new_figure(width, height)
    ax = fig.add_subplot()
    draw(reports, ax, legend=False, **options)
    plots.figure_legend(fig, *ax.get_legend_handles_labels())
    return _png(fig)


def build_figures(
    trace: Trace | TraceSource,
    entries: list[tuple[str, Placement]],
    results: list[tuple[str, ReplayReport]],
    layer: int,
    model: Model | None,
) -> list[ReportFigure]:
    """The report's figures: PNG bytes with titles and captions, in :data:`FIGURE_NAMES` order."""
    reports = dict(results)
    num_experts = trace.num_experts
    coactivation = summarize(trace, layers=[layer]).layers[0].coactivation
    heatmap = _coactivation_figure(coactivation, entries, layer, num_experts)
    unit = "bytes (scaled to kB/MB/GB)" if model is not None else "token copies (pass a model for bytes)"
    fixed = ("no balance freedom: every placement has the same GPU loads (e.g. one expert per GPU)"
             if plots.balance_is_fixed(reports) else "")
    figures = [
        ReportFigure(
            "coactivation", "Co-activation ordered by placement",
            f"Each panel is layer {layer}'s expert co-activation matrix (cell = tokens that chose both experts, "
            "log colour scale, white = never together) with experts sorted by node then GPU of that placement; "
            "red lines separate nodes, so mass inside the diagonal squares stays on one node and mass "
            "outside them crosses the network.",
            heatmap,
        ),
        ReportFigure(
            "expert_map", "Expert to node map",
            "Each row is a layer and each column an expert id, coloured by the node holding it: contiguous "
            "shows vertical bands, round-robin a repeating stripe, and a traffic-aware placement a different "
            "grouping in every layer.",
            _expert_map_figure(entries, num_experts),
        ),
        ReportFigure(
            "nic_per_node", "NIC traffic per node",
            f"Bars give each node's inter-node traffic in {unit} over all layers of the replayed trace, "
            "received (left) and sent (right); lower is better and even bars mean no node's NIC is the bottleneck.",
            _nic_figure(reports),
        ),
        ReportFigure(
            "gpu_load", "Busiest GPU per layer",
            "Each line gives, in every MoE layer, the token-expert pairs of that layer's busiest GPU: every layer "
            "waits for its busiest GPU, so this sets the pace of expert compute (summed over layers it is the "
            "table's GPU peak column); the dashed line is the mean per GPU. Which GPU is the busiest can change "
            "from layer to layer, so load summed per GPU over layers would not show the pace."
            + (f" Here there is {fixed}, so one line stands for all." if fixed else ""),
            _single(plots.gpu_peak_per_layer, reports),
        ),
        ReportFigure(
            "nodes_per_token", "Nodes reached per token",
            "Bars give the share of (token, layer) pairs whose selected experts span 1, 2, ... nodes; mass to "
            "the left means fewer RDMA copies per token (mean in the legend).",
            _single(plots.nodes_per_token, reports),
        ),
        ReportFigure(
            "per_layer", "Traffic and balance per layer",
            "Top: token copies crossing the network in every MoE layer (the gap to the baselines is the traffic "
            "a placement saves there); bottom: the busiest GPU's load over the mean in every layer "
            "(1 = perfectly even, the dashed line)."
            + (f" Bottom: {fixed}, so one line stands for all." if fixed else ""),
            _per_layer_figure(reports),
        ),
        ReportFigure(
            "tradeoff", "Traffic vs balance",
            "Each point is a placement: further left is better balanced, lower sends less across nodes; "
            "points with a thick outline (joined by a dashed staircase when several) are the placements no "
            "other beats on both." if not fixed else
            f"There is {fixed}: nothing to trade, so the bars give each placement's inter-node copies.",
            _single(plots.tradeoff, reports, 9.0, 5.0),
        ),
    ]
    assert tuple(f.name for f in figures) == FIGURE_NAMES
    return figures


# ---------------------------------------------------------------- the report


def build_report(
    trace: Trace | TraceSource | str | Path,
    placements: Mapping[str, Placement],
    topology: Topology,
    model: Model | None = None,
    *,
    title: str | None = None,
    baselines: Sequence[str] = BASELINES,
    layer: int | None = None,
    source: str = "token",
    dispatch: str = "normal",
    max_nodes: int | None = None,
    rule: str = "nearest",
    lp_batch: int = LP_BATCH_TOKENS,
    trace_label: str | None = None,
    progress: ProgressFn | None = None,
) -> ReportData:
    """Replay every placement and draw the figures, without writing anything (see :func:`write_report`)."""
    trace, label = _open(trace, trace_label)
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        raise InputError(None, "baselines", f"unknown {unknown}; expected some of {', '.join(BASELINES)}")
    num_layers = trace.num_layers
    if placements:
        num_experts = next(iter(placements.values())).num_experts
    else:
        num_experts = model.num_experts if model is not None else trace.num_experts
    entries = with_baselines(placements, baselines, num_layers, num_experts, topology)
    if not entries:
        raise InputError(None, "placements", "nothing to report: give a placement or keep the baselines")
    layer = num_layers // 2 if layer is None else layer
    if not 0 <= layer < num_layers:
        raise InputError(None, "layer", f"expected 0 <= layer < {num_layers}, got {layer}")
    results = compare(trace, entries, topology, model, progress=progress, source=source, dispatch=dispatch,
                      max_nodes=max_nodes, rule=rule, lp_batch=lp_batch)
    reference = reference_placement(entries, num_layers, num_experts, topology)
    figures = build_figures(trace, entries, results, layer, model)
    mode = "one copy per remote node" if dispatch == "normal" else "one copy per remote expert"
    config = {
        "trace": f"{label}: {trace.num_tokens:,} tokens x {num_layers} MoE layers, top-{trace.top_k} of "
                 f"{trace.num_experts} experts",
        "topology": f"{topology.name}: {topology.nodes} nodes x {topology.gpus_per_node} GPUs, NIC "
                    f"{topology.nic_bandwidth / 1e9:g} GB/s per GPU, NVLink {topology.nvlink_bandwidth / 1e9:g} GB/s",
        "model": model.name if model is not None else "none (token counts only; give a model for bytes and times)",
        "dispatch": f"{dispatch} ({mode})",
        "token source": source,
        "replica rule": rule if rule not in BATCHED_RULES else f"{rule}, batches of {lp_batch:,} tokens",
        "max nodes": str(max_nodes) if max_nodes else "-",
        "ratios against": reference,
        "heatmap layer": str(layer),
        "generated": f"placer {__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
                     f"Python {platform.python_version()}",
    }
    placements_info = [(name, _solver_facts(name, p)) for name, p in entries]
    return ReportData(
        title=title or f"Expert placement report: {label}",
        results=results,
        reference=reference,
        config=config,
        placements_info=placements_info,
        figures=figures,
    )


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.config th { text-align: left; vertical-align: top; }
figure { margin: 0.5em 0 1.5em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, p.note { color: #444; font-size: 0.92em; }
"""


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML page (figures embedded as base64 PNG data URIs)."""
    e = html.escape
    header, rows = summary_rows(data.results, data.reference)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(data.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(data.title)}</h1>",
        '<p class="note">Contents: <a href="#summary">summary</a> &middot; <a href="#config">configuration</a>'
        + "".join(f' &middot; <a href="#{e(f.name)}">{e(f.title.lower())}</a>' for f in data.figures) + "</p>",
        '<h2 id="summary">Summary</h2>',
        '<table class="summary">',
        "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        cells = [f"<th>{e(row[0])}</th>"] + [f'<td class="num">{e(cell)}</td>' for cell in row[1:]]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>", f'<p class="note">{e(summary_notes(data.results, data.reference))}</p>']
    out += ['<h2 id="config">Configuration</h2>', '<table class="config">']
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in data.config.items()]
    out += [f"<tr><th>placement {e(name)}</th><td>{e(facts)}</td></tr>" for name, facts in data.placements_info]
    out.append("</table>")
    for figure in data.figures:
        encoded = base64.b64encode(figure.png).decode("ascii")
        out += [
            f'<h2 id="{e(figure.name)}">{e(figure.title)}</h2>',
            "<figure>",
            f'<img src="data:image/png;base64,{encoded}" alt="{e(figure.title)}">',
            f"<figcaption>{e(figure.caption)} <small>({e(figure.filename)})</small></figcaption>",
            "</figure>",
        ]
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(data: ReportData) -> str:
    """The report as Markdown referencing the PNG files beside it."""
    header, rows = summary_rows(data.results, data.reference)
    out = [f"# {data.title}", "", "## Summary", ""]
    out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
    out.append("|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|")
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    out += ["", summary_notes(data.results, data.reference), "", "## Configuration", "", "| | |", "|:---|:---|"]
    out += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in data.config.items()]
    out += [f"| placement {_md_cell(name)} | {_md_cell(facts)} |" for name, facts in data.placements_info]
    for figure in data.figures:
        out += ["", f"## {figure.title}", "", f"![{figure.title}]({figure.filename})", "", f"*{figure.caption}*"]
    out.append("")
    return "\n".join(out)


def _check_output(out_dir: str | Path, format: str, protected: Sequence[str | Path]) -> Path:
    """The output folder, after refusing a bad format, a file in the way or an output that is an input."""
    check_choice(format, "format", REPORT_FORMATS)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "out", "exists and is not a directory")
    for target in (out, out / INDEX[format], *(out / f"{name}.png" for name in FIGURE_NAMES)):
        for given in protected:
            refuse_overwriting_input(target, given)
    return out


def save_report(data: ReportData, out_dir: str | Path, format: str = "html",
                protected: Sequence[str | Path] = ()) -> Path:
    """Write a built report: the PNGs, then ``index.html`` or ``report.md`` (each file atomically).

    protected: input files that must not be overwritten. Returns the page's path.
    """
    out = _check_output(out_dir, format, protected)
    for figure in data.figures:
        with atomic_output(out / figure.filename, "wb") as handle:
            handle.write(figure.png)
    page = out / INDEX[format]
    write_text_atomic(page, render_html(data) if format == "html" else render_markdown(data))
    return page


def write_report(
    trace: Trace | TraceSource | str | Path,
    placements: Mapping[str, Placement],
    topology: Topology,
    model: Model | None,
    out_dir: str | Path,
    *,
    title: str | None = None,
    format: str = "html",  # mirrors the CLI option --format
    baselines: Sequence[str] = BASELINES,
    layer: int | None = None,
    source: str = "token",
    dispatch: str = "normal",
    max_nodes: int | None = None,
    rule: str = "nearest",
    lp_batch: int = LP_BATCH_TOKENS,
    trace_label: str | None = None,
    inputs: Sequence[str | Path] = (),
    progress: ProgressFn | None = None,
) -> Path:
    """Evaluate ``placements`` (plus baselines) on ``trace`` and write a report into ``out_dir``.

    placements: label -> placement, shown in this order after the baselines not already
    given (``baselines=()`` adds none). format: "html" writes ``index.html`` with the PNGs
    embedded (self-contained) or "md" writes ``report.md`` linking them; the PNGs are
    written beside it either way. layer: MoE layer of the co-activation heatmap (default:
    the middle one). inputs: further files the report must not overwrite (placement files);
    the trace's own files are always protected. progress: reports each replay
    (:mod:`placer.progress`). Returns the path of the page written.
    """
    trace, trace_label = _open(trace, trace_label)
    protected = [*inputs]
    if isinstance(trace, TraceSource):
        protected += [trace.path, *trace.shards]
    _check_output(out_dir, format, protected)  # fail before the slow part
    data = build_report(
        trace, placements, topology, model, title=title, baselines=baselines, layer=layer, source=source,
        dispatch=dispatch, max_nodes=max_nodes, rule=rule, lp_batch=lp_batch, trace_label=trace_label,
        progress=progress,
    )
    return save_report(data, out_dir, format, protected)


def write_markdown_report(
    trace: Trace | TraceSource | str | Path,
    placements: Mapping[str, Placement],
    topology: Topology,
    model: Model | None,
    out_dir: str | Path,
    **options,
) -> Path:
    """:func:`write_report` with ``format="md"``: ``report.md`` beside the PNGs."""
    return write_report(trace, placements, topology, model, out_dir, format="md", **options)
