"""Figures of placements and replays (matplotlib, Agg, no display).

Every function takes plain data (arrays, :class:`~placer.evaluation.replay.ReplayReport`
objects keyed by placement name) and either draws on a given matplotlib
``Axes`` or, when ``ax`` is None, creates and returns its own ``Figure``.
Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas, never
through ``pyplot``: importing this module changes no global backend and opens
no window. Save with :func:`save_png`.

matplotlib is an optional dependency (extra ``plots``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from typing import IO

import numpy as np

try:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm, to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "placer's plots and reports need matplotlib: pip install 'placer[plots]' (or pip install matplotlib)"
    ) from err

from placer.placement import BASELINES

__all__ = [
    "balance_is_fixed",
    "coactivation_heatmap",
    "expert_gpu_map",
    "expert_order",
    "figure_legend",
    "gpu_peak_per_layer",
    "imbalance_per_layer",
    "internode_per_layer",
    "legend_columns",
    "network_cliff",
    "new_figure",
    "nic_bytes_per_node",
    "node_palette",
    "nodes_per_token",
    "pareto_front",
    "placement_colours",
    "save_png",
    "short",
    "timeline",
    "tradeoff",
    "within_block_share",
]

FONT = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
}
"""Font sizes used by every figure (applied while a figure is drawn and saved)."""

MAX_TICK_LABELS = 9
"""Most tick labels an index axis (experts, GPUs, layers) gets; every k-th index is labelled."""

_BASELINE_COLOURS = {"contiguous": "#8c8c8c", "round-robin": "#c9a227", "random": "#b5b5b5"}
_PLACEMENT_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#e377c2", "#8c564b"]
_NODE_COLOURS = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
]


# ---------------------------------------------------------------- helpers


MAX_LEGEND_NODES = 20
"""Above this many nodes the expert map shows a colour bar instead of a legend."""


def node_palette(nodes: int) -> list:
    """Distinct colours for up to 20 nodes (categorical), a sampled colour map beyond."""
    if nodes <= len(_NODE_COLOURS):
        return _NODE_COLOURS[:nodes]
    if nodes <= MAX_LEGEND_NODES:
        return [matplotlib.colormaps["tab20"](i) for i in range(nodes)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(i / (nodes - 1)) for i in range(nodes)]


def short(name: str, limit: int = 36) -> str:
    """``name`` cut to ``limit`` characters with an ellipsis in the middle (titles stay on one line)."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "\u2026" + name[-(limit - 1 - head):]


def new_figure(width: float = 8.0, height: float = 4.5, dpi: int = 120) -> Figure:
    """A Figure on an Agg canvas with constrained layout (labels and legends never overlap axes)."""
    with matplotlib.rc_context(FONT):
        fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, target: str | IO[bytes], dpi: int | None = None) -> None:
    """Write ``fig`` as PNG to a path or a binary file handle."""
    with matplotlib.rc_context(FONT):
        fig.savefig(target, format="png", dpi=dpi or fig.dpi, facecolor="white")


def _styled(draw):
    """Run a drawing function under :data:`FONT`, so text sizes do not depend on global rcParams."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(FONT):
            return draw(*args, **kwargs)

    return wrapper


def _axes(ax, width: float, height: float):
    """(fig, ax): the given Axes and its figure, or a fresh figure with one Axes."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(width, height)
    return fig, fig.add_subplot()


def _result(fig, ax, own: bool):
    return fig if own else ax


def tick_step(count: int, max_labels: int = MAX_TICK_LABELS) -> int:
    """Label every k-th of ``count`` indices so at most ``max_labels`` labels show (k = 1, 2, 4, 5, 8, 10, 16...)."""
    for step in (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500, 1000):
        if -(-count // step) <= max_labels:
            return step
    return -(-count // max_labels)


def _index_ticks(axis, count: int, max_labels: int = MAX_TICK_LABELS, first: int = 0) -> None:
    """Integer ticks 0, k, 2k, ... on an index axis (``axis`` = ax.xaxis or ax.yaxis)."""
    step = tick_step(count, max_labels)
    ticks = np.arange(0, count, step)
    axis.set_ticks(ticks, labels=[str(t + first) for t in ticks])


def placement_colours(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per placement: fixed colours for the baselines, strong colours for the rest."""
    colours: dict[str, str] = {}
    others = iter(_PLACEMENT_COLOURS * (1 + len(names) // len(_PLACEMENT_COLOURS)))
    for name in names:
        colours[name] = _BASELINE_COLOURS.get(name) or next(others)
    return colours


def _hatch(name: str) -> str | None:
    """Baselines are hatched so the figures read in grey-scale too."""
    return {"contiguous": None, "round-robin": "//", "random": ".."}.get(name) if name in BASELINES else None


def _scale(values: np.ndarray, kind: str) -> tuple[float, str]:
    """(divisor, unit) for bytes (decimal kB/MB/GB/TB) or token counts (thousands when large)."""
    peak = float(np.max(values)) if np.size(values) else 0.0
    if kind == "bytes":
        for divisor, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if peak >= divisor:
                return divisor, unit
        return 1.0, "bytes"
    if peak >= 1e7:
        return 1e6, "millions"
    if peak >= 1e4:
        return 1e3, "thousands"
    return 1.0, ""


def legend_columns(labels: Sequence[str], width_in: float, max_columns: int = 5) -> int:
    """Most legend columns (<= max_columns) whose entries fit across ``width_in`` inches at the legend font."""
    if not labels:
        return 1
    size = FONT["legend.fontsize"]
    entry = 0.6 + max(len(label) for label in labels) * size * 0.6 / 72  # handle + gap, ~0.6 em per character
    fit = max(int(0.95 * width_in // entry), 1)
    columns = min(fit, max_columns, len(labels))
    rows = -(-len(labels) // columns)
    return -(-len(labels) // rows)  # same rows, entries spread evenly


def figure_legend(fig, handles, labels, max_columns: int = 5) -> None:
    """One legend under all of the figure's panels (constrained layout makes room; never clipped)."""
    with matplotlib.rc_context(FONT):
        ncol = legend_columns(labels, fig.get_figwidth(), max_columns)
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)


def _legend(ax, own: bool, ncol: int = 5) -> None:
    """The placements' legend, never over the data or the axis labels.

    own figure: one legend row (or more) under the plot, laid out by constrained layout;
    a caller's Axes: to the right of it (the caller's layout decides the room).
    """
    handles, labels = ax.get_legend_handles_labels()
    if own:
        figure_legend(ax.figure, handles, labels, ncol)
    else:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _grouped_bars(
    ax, categories: int, series: Mapping[str, np.ndarray], labels: Mapping[str, str] | None = None
) -> None:
    """Bars of several placements side by side per category; series: name -> [categories]."""
    colours = placement_colours(list(series))
    count = len(series)
    width = 0.8 / max(count, 1)
    positions = np.arange(categories)
    for index, (name, values) in enumerate(series.items()):
        offset = (index - (count - 1) / 2) * width
        hatch = _hatch(name)
        ax.bar(
            positions + offset, values, width, label=(labels or {}).get(name, name), color=colours[name],
            hatch=hatch, edgecolor="white" if hatch is None else "#444444", linewidth=0.5,
        )


def _reports_dict(reports) -> dict:
    """Accept a mapping name -> report or a sequence of (name, report) pairs."""
    return dict(reports.items() if isinstance(reports, Mapping) else reports)


# ---------------------------------------------------------------- placement figures


def expert_order(expert_gpu_layer: np.ndarray, gpus_per_node: int) -> tuple[np.ndarray, np.ndarray]:
    """Experts ordered by node, then GPU, then id; and the node boundaries in that order.

    expert_gpu_layer: [E] GPU of each expert (one layer). Returns (order [E], boundaries
    [nodes - 1]: positions in ``order`` where a new node starts, empty nodes included once).
    """
    gpu = np.asarray(expert_gpu_layer)
    order = np.lexsort((np.arange(len(gpu)), gpu))
    nodes = gpu[order] // gpus_per_node
    num_nodes = int(nodes.max()) + 1 if len(nodes) else 0
    boundaries = np.searchsorted(nodes, np.arange(1, num_nodes))
    return order, boundaries


def within_block_share(coactivation, boundaries: Sequence[int], order: np.ndarray | None = None) -> float:
    """Share of co-activation mass inside the diagonal blocks (pairs of experts on one node).

    coactivation: [E, E] dense or scipy sparse; order: [E] row/column order (default identity);
    boundaries: positions where a new block starts in that order.
    """
    matrix = coactivation.toarray() if hasattr(coactivation, "toarray") else np.asarray(coactivation)
    if order is not None:
        matrix = matrix[np.ix_(order, order)]
    edges = [0, *[int(b) for b in boundaries], matrix.shape[0]]
    inside = sum(matrix[a:b, a:b].sum() for a, b in itertools.pairwise(edges))
    total = matrix.sum()
    return float(inside / total) if total else 0.0


@_styled
def coactivation_heatmap(
    coactivation,
    order: np.ndarray | None = None,
    boundaries: Sequence[int] = (),
    ax=None,
    *,
    title: str | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    block_labels: Sequence[str] | None = None,
):
    """Co-activation matrix with rows/columns in placement order and lines at node boundaries.

    coactivation: [E, E] tokens choosing both experts (dense or scipy sparse);
    order: [E] experts in display order (see :func:`expert_order`); boundaries: positions
    where a new node starts. Log colour scale, zero pairs left white. Returns the Figure
    when ``ax`` is None, else the image (for a shared colour bar).
    """
    matrix = coactivation.toarray() if hasattr(coactivation, "toarray") else np.asarray(coactivation)
    experts = matrix.shape[0]
    order = np.arange(experts) if order is None else np.asarray(order)
    shown = matrix[np.ix_(order, order)].astype(float)
    own = ax is None
    fig, ax = _axes(ax, 6.4, 5.4)
    positive = shown[shown > 0]
    top = vmax if vmax is not None else (positive.max() if positive.size else 1.0)
    norm = LogNorm(vmin=1.0, vmax=max(top, 10.0))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white", under="white")
    image = ax.imshow(np.ma.masked_less_equal(shown, 0), cmap=cmap, norm=norm, interpolation="nearest")
    width = 1.2 if len(boundaries) < 8 else 0.8 if len(boundaries) < 16 else 0.5
    for boundary in boundaries:
        for line in (ax.axhline, ax.axvline):
            line(boundary - 0.5, color="#d62728", linewidth=width)
    edges = [0, *[int(b) for b in boundaries], experts]
    centres = [(a + b - 1) / 2 for a, b in itertools.pairwise(edges)]
    labels = list(block_labels) if block_labels is not None else [f"node {n}" for n in range(len(centres))]
    step = tick_step(len(centres), 8)
    kept = range(0, len(centres), step)
    ax.set_xticks([centres[i] for i in kept], labels=[labels[i] for i in kept])
    ax.set_yticks([centres[i] for i in kept], labels=[labels[i] for i in kept])
    if len(kept) > 4:
        ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(length=0)
    ax.set_xlabel("expert (ordered by node, then GPU)")
    ax.set_ylabel("expert (ordered by node, then GPU)")
    if title:
        ax.set_title(title)
    if colorbar:
        bar = fig.colorbar(image, ax=ax, shrink=0.9)
        bar.set_label("tokens choosing both experts")
    return _result(fig, image, own)


@_styled
def expert_gpu_map(
    expert_gpu: np.ndarray,
    gpus_per_node: int,
    ax=None,
    *,
    color_by: str = "node",
    title: str | None = None,
    legend: bool = True,
    first_layer: int = 0,
):
    """Layers x experts image of where each expert sits, coloured by node (or by GPU id).

    expert_gpu: [layers, E] GPU of every expert (-1 = nowhere, drawn white). With
    ``color_by="node"`` each node has one colour (legend); ``"gpu"`` shades GPUs of
    a node from dark to light in the node's colour.
    """
    data = np.asarray(expert_gpu)
    layers, experts = data.shape
    num_gpus = int(data.max()) + 1 if data.size else gpus_per_node
    nodes = -(-num_gpus // gpus_per_node)
    own = ax is None
    fig, ax = _axes(ax, 9.0, 3.6)
    palette = node_palette(nodes)
    if color_by == "node":
        values = np.where(data >= 0, data // gpus_per_node, -1)
        colours = ["white", *palette]
    elif color_by == "gpu":
        values = data
        colours = ["white"]
        for gpu in range(nodes * gpus_per_node):
            base = np.array(to_rgb(palette[gpu // gpus_per_node]))
            shade = 0.55 + 0.45 * (gpu % gpus_per_node) / max(gpus_per_node - 1, 1)
            colours.append(tuple(base * shade))
    else:
        raise ValueError(f"color_by must be 'node' or 'gpu', got {color_by!r}")
    cmap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(-1.5, len(colours) - 1), cmap.N)
    ax.imshow(values, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    _index_ticks(ax.xaxis, experts)
    _index_ticks(ax.yaxis, layers, max_labels=6, first=first_layer)
    ax.set_xlabel("expert id")
    ax.set_ylabel("MoE layer")
    if title:
        ax.set_title(title)
    if legend and nodes <= MAX_LEGEND_NODES:
        handles = [Patch(facecolor=palette[n], label=f"node {n}") for n in range(nodes)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  title="node", ncol=1 if nodes <= 10 else 2)
    elif legend:
        mappable = ScalarMappable(norm=BoundaryNorm(np.arange(-0.5, nodes), nodes), cmap=ListedColormap(palette))
        bar = ax.figure.colorbar(mappable, ax=ax, pad=0.01)
        bar.set_label("node")
        bar.set_ticks(np.arange(0, nodes, tick_step(nodes)))
    return _result(fig, ax, own)


# ---------------------------------------------------------------- replay figures


@_styled
def nic_bytes_per_node(reports, ax=None, *, direction: str = "recv", title: str | None = None, legend: bool = True):
    """Grouped bars: NIC traffic of each node per placement, summed over layers.

    reports: {name: ReplayReport}. Bytes (auto-scaled to kB/MB/GB) when the replays had a
    model, else token copies. direction: "recv" or "sent".
    """
    if direction not in ("recv", "sent"):
        raise ValueError(f"direction must be 'recv' or 'sent', got {direction!r}")
    reports = _reports_dict(reports)
    with_bytes = all(f"nic_bytes_{direction}_per_node" in r.totals for r in reports.values())
    key = f"nic_bytes_{direction}_per_node" if with_bytes else f"nic_{direction}_tokens_per_node"
    series = {name: np.asarray(r.totals[key], dtype=float) for name, r in reports.items()}
    divisor, unit = _scale(np.concatenate(list(series.values())), "bytes" if with_bytes else "tokens")
    series = {name: values / divisor for name, values in series.items()}
    nodes = len(next(iter(series.values())))
    own = ax is None
    fig, ax = _axes(ax, 8.0, 4.2)
    _grouped_bars(ax, nodes, series)
    ax.set_xticks(np.arange(nodes), labels=[f"node {n}" for n in range(nodes)])
    if nodes > MAX_TICK_LABELS:
        _index_ticks(ax.xaxis, nodes)
        ax.set_xlabel("node")
    verb = "received" if direction == "recv" else "sent"
    if with_bytes:
        ax.set_ylabel(f"{unit} {verb}, all layers")
    else:
        ax.set_ylabel(f"token copies {verb}, all layers" + (f" ({unit})" if unit else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title or f"Inter-node traffic {verb} per node (NIC)")
    if legend:
        _legend(ax, own)
    return _result(fig, ax, own)


def balance_is_fixed(reports) -> bool:
    """Whether every placement has the same GPU load in every layer up to GPU order (e.g. one
    expert per GPU and no replicas): then no placement can trade balance for traffic."""
    reports = _reports_dict(reports)
    loads = [np.sort(r.per_layer["gpu_load"], axis=1) for r in reports.values()]
    return len(loads) > 1 and all(load.shape == loads[0].shape and np.array_equal(load, loads[0])
                                  for load in loads[1:])


_ALL_COLOUR = "#333333"
"""The one line standing for every placement when :func:`balance_is_fixed`."""
_NO_FREEDOM = "no balance freedom: every placement has the same GPU loads (e.g. one expert per GPU)"


@_styled
def gpu_peak_per_layer(reports, ax=None, *, title: str | None = None, legend: bool = True, first_layer: int = 0):
    """The busiest GPU's token-expert pairs in each layer, one line per placement.

    This is what sets the pace of expert compute: every layer waits for its busiest GPU,
    whichever GPU that is (summed over layers it is the tables' "GPU peak pairs"). The
    dashed line is the mean per GPU in service, the same for every placement. When
    :func:`balance_is_fixed`, one line stands for all placements.
    """
    reports = _reports_dict(reports)
    series = {name: r.per_layer["gpu_load"].max(axis=1).astype(float) for name, r in reports.items()}
    first = next(iter(reports.values()))
    imbalance = np.asarray(first.per_layer["gpu_load_imbalance"], dtype=float)
    mean = np.divide(series[next(iter(series))], imbalance, out=np.zeros(imbalance.shape), where=imbalance > 0)
    fixed = balance_is_fixed(reports)
    if fixed:
        series = {"every placement (the same peaks)": next(iter(series.values()))}
    divisor, unit = _scale(np.concatenate(list(series.values())), "tokens")
    colours = {name: _ALL_COLOUR for name in series} if fixed else placement_colours(list(series))
    own = ax is None
    fig, ax = _axes(ax, 9.0, 4.2)
    layers = len(mean)
    markers = "os^Dv<>ph"
    for index, (name, values) in enumerate(series.items()):
        ax.plot(np.arange(layers), values / divisor, marker=markers[index % len(markers)], markersize=4,
                linewidth=1.3, color=colours[name], label=name)
    ax.plot(np.arange(layers), mean / divisor, color="black", linestyle="--", linewidth=0.9, label="mean per GPU")
    _index_ticks(ax.xaxis, layers, first=first_layer)
    ax.set_xlim(-0.5, layers - 0.5)
    ax.set_ylim(0, max(float(v.max()) for v in series.values()) / divisor * 1.08 or 1.0)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("busiest GPU's token-expert pairs" + (f" ({unit})" if unit else ""))
    ax.grid(alpha=0.3)
    ax.set_title(title or ("Busiest GPU per layer" + (f"\n{_NO_FREEDOM}" if fixed else "")))
    if legend:
        _legend(ax, own, ncol=min(len(series) + 1, 5))
    return _result(fig, ax, own)


@_styled
def nodes_per_token(reports, ax=None, *, title: str | None = None, legend: bool = True):
    """Grouped bars: share of (token, layer) pairs reaching 1, 2, ... nodes, per placement."""
    reports = _reports_dict(reports)
    series = {}
    for name, r in reports.items():
        histogram = np.asarray(r.totals["nodes_per_token_histogram"], dtype=float)
        series[name] = 100.0 * histogram / histogram.sum() if histogram.sum() else histogram
    stacked = np.stack(list(series.values()))
    used = np.flatnonzero(stacked.sum(axis=0) > 0)
    width = max(int(used[-1]) + 1 if used.size else stacked.shape[1], 2)
    start = 0 if stacked[:, 0].any() else 1
    series = {name: values[:width] for name, values in series.items()}
    series = {name: values[start:] for name, values in series.items()}
    labels = {name: f"{name} (mean {reports[name].totals['nodes_per_token_mean']:.2f})" for name in series}
    own = ax is None
    fig, ax = _axes(ax, 8.0, 4.2)
    _grouped_bars(ax, width - start, series, labels)
    counts = np.arange(start, width)
    ax.set_xticks(np.arange(width - start), labels=[str(c) for c in counts])
    if width - start > MAX_TICK_LABELS:
        step = tick_step(width - start)
        ax.set_xticks(np.arange(0, width - start, step), labels=[str(c) for c in counts[::step]])
    ax.set_xlabel("nodes a token's experts span (in one layer)")
    ax.set_ylabel("share of (token, layer) pairs (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title or "Nodes reached per token")
    if legend:
        _legend(ax, own, ncol=2)
    return _result(fig, ax, own)


@_styled
def internode_per_layer(reports, ax=None, *, title: str | None = None, legend: bool = True, first_layer: int = 0):
    """Inter-node token copies (dedup per node) in each layer, one line per placement."""
    reports = _reports_dict(reports)
    series = {name: r.per_layer["internode_tokens_dedup"].astype(float) for name, r in reports.items()}
    divisor, unit = _scale(np.concatenate(list(series.values())), "tokens")
    colours = placement_colours(list(series))
    own = ax is None
    fig, ax = _axes(ax, 9.0, 4.2)
    layers = len(next(iter(series.values())))
    markers = "os^Dv<>ph"
    for index, (name, values) in enumerate(series.items()):
        ax.plot(np.arange(layers), values / divisor, marker=markers[index % len(markers)], markersize=4,
                linewidth=1.3, color=colours[name], label=name)
    _index_ticks(ax.xaxis, layers, first=first_layer)
    ax.set_xlim(-0.5, layers - 0.5)
    peak = max(float(values.max()) for values in series.values()) / divisor
    ax.set_ylim(0, peak * 1.08 or 1.0)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("inter-node token copies" + (f" ({unit})" if unit else ""))
    ax.grid(alpha=0.3)
    ax.set_title(title or "Inter-node tokens per layer")
    if legend:
        _legend(ax, own, ncol=min(len(series), 5))
    return _result(fig, ax, own)


@_styled
def imbalance_per_layer(reports, ax=None, *, title: str | None = None, legend: bool = True, first_layer: int = 0):
    """Busiest GPU's load over the mean GPU load in each layer, one line per placement (1 = perfect;
    one line for all when :func:`balance_is_fixed`)."""
    reports = _reports_dict(reports)
    series = {name: np.asarray(r.per_layer["gpu_load_imbalance"], dtype=float) for name, r in reports.items()}
    fixed = balance_is_fixed(reports)
    if fixed:
        series = {"every placement (the same loads)": next(iter(series.values()))}
    colours = {name: _ALL_COLOUR for name in series} if fixed else placement_colours(list(series))
    own = ax is None
    fig, ax = _axes(ax, 9.0, 4.2)
    layers = len(next(iter(series.values())))
    markers = "os^Dv<>ph"
    for index, (name, values) in enumerate(series.items()):
        ax.plot(np.arange(layers), values, marker=markers[index % len(markers)], markersize=4,
                linewidth=1.3, color=colours[name], label=name)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.9)
    _index_ticks(ax.xaxis, layers, first=first_layer)
    ax.set_xlim(-0.5, layers - 0.5)
    peak = max(float(values.max()) for values in series.values())
    ax.set_ylim(0, max(peak, 1.0) * 1.08)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("GPU load max / mean")
    ax.grid(alpha=0.3)
    ax.set_title(title or ("GPU load imbalance per layer" + (f"\n{_NO_FREEDOM}" if fixed else "")))
    if legend:
        _legend(ax, own, ncol=min(len(series), 5))
    return _result(fig, ax, own)


# ---------------------------------------------------------------- trade-off


def pareto_front(points) -> np.ndarray:
    """Indices of the non-dominated points when both coordinates are minimised, by ascending x.

    points: [n, 2] (x, y) pairs, e.g. x = GPU peak load or imbalance, y = inter-node tokens.
    A point is dominated when another is no worse in both and better in one; equal
    points are all kept.
    """
    xy = np.asarray(points, dtype=float).reshape(-1, 2)
    kept = []
    for i, (x, y) in enumerate(xy):
        no_worse = (xy[:, 0] <= x) & (xy[:, 1] <= y)
        better = (xy[:, 0] < x) | (xy[:, 1] < y)
        if not np.any(no_worse & better):
            kept.append(i)
    kept = np.asarray(kept, dtype=np.int64)
    return kept[np.lexsort((xy[kept, 1], xy[kept, 0]))] if kept.size else kept


_TRADEOFF_LABELS = {
    "gpu_load_imbalance": ("GPU load imbalance (max/mean per layer, averaged)", None),
    "gpu_peak_load": ("GPU peak load (busiest GPU's pairs per layer, summed)", "tokens"),
    "internode_tokens_dedup": ("inter-node token copies, all layers", "tokens"),
    "intranode_tokens": ("intra-node (NVLink) token copies, all layers", "tokens"),
    "nic_peak_tokens": ("NIC peak (busiest node's copies per layer, summed)", "tokens"),
    "all_to_all_s": ("all-to-all time estimate (s)", None),
}


def _axis_label(key: str) -> tuple[str, bool]:
    """Axis label of a totals key and whether its values are counts (shown with thousands separators)."""
    label, kind = _TRADEOFF_LABELS.get(key, (key, None))
    return label, kind == "tokens"


@_styled
def tradeoff(
    reports, ax=None, *, x: str = "gpu_load_imbalance", y: str = "internode_tokens_dedup", title: str | None = None,
    legend: bool = True,
):
    """Scatter of one total against another per placement, with the Pareto front (lower-left is better).

    x, y: keys of ``ReplayReport.totals`` (default: GPU load imbalance vs inter-node tokens).
    When every placement has the same ``x`` (no balance freedom, e.g. one expert per GPU)
    there is nothing to trade: bars of ``y`` per placement, titled with the shared ``x``.
    """
    reports = _reports_dict(reports)
    names = list(reports)
    raw = np.array([[float(reports[n].totals[x]), float(reports[n].totals[y])] for n in names])
    xs, ys = raw[:, 0], raw[:, 1]
    (x_label, x_counts), (y_label, y_counts) = _axis_label(x), _axis_label(y)
    colours = placement_colours(names)
    own = ax is None
    fig, ax = _axes(ax, 8.0, 4.8)
    if len(names) > 1 and np.ptp(xs) <= 1e-9 * max(abs(float(xs[0])), 1e-12):
        _bars(ax, names, ys, colours, y_label, y_counts)
        shared = f"{xs[0]:,.0f}" if x_counts else f"{xs[0]:.3g}"
        ax.set_title(title or f"{y_label.split(',')[0]} (lower is better)\nno balance freedom: "
                              f"every placement has {x_label.split(' (')[0]} {shared}")
        return _result(fig, ax, own)
    front = pareto_front(raw)
    if len(front) > 1:
        ax.step(xs[front], ys[front], where="post", color="#444444", linestyle="--", linewidth=1.0,
                label="Pareto front")
    markers = "os^Dv<>ph"
    for index, (name, px, py) in enumerate(zip(names, xs, ys)):
        on_front = index in set(front.tolist())
        ax.scatter([px], [py], s=70, color=colours[name], marker=markers[index % len(markers)],
                   edgecolor="black", linewidth=1.4 if on_front else 0.5, zorder=3, label=name)
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        span = np.ptp(values) or abs(values[0]) * 0.1 or 1.0
        setter(values.min() - 0.12 * span, values.max() + 0.12 * span)
    for counts, axis in ((x_counts, ax.xaxis), (y_counts, ax.yaxis)):
        if counts:
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Traffic vs balance (lower-left is better)")
    if legend:
        _legend(ax, own, ncol=min(len(names) + (len(front) > 1), 5))
    return _result(fig, ax, own)


def _bars(ax, names: Sequence[str], values: np.ndarray, colours: Mapping[str, str], label: str,
          counts: bool) -> None:
    """Horizontal bars of one total per placement (first placement on top), values printed."""
    positions = np.arange(len(names))[::-1]
    ax.barh(positions, values, color=[colours[n] for n in names], hatch=None, edgecolor="white")
    ax.set_yticks(positions, labels=[short(n) for n in names])
    for position, value in zip(positions, values):
        ax.annotate(f"{value:,.0f}" if counts else f"{value:.3g}", (value, position), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(0, float(values.max()) * 1.15 or 1.0)
    if counts:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


# ---------------------------------------------------------------- EP sweep


def _solver_label(sweep: Mapping) -> str:
    alpha = sweep.get("alpha")
    return sweep["solver"] if alpha is None else f"{sweep['solver']}, alpha {alpha:g}"


@_styled
def network_cliff(sweep: Mapping, reference: Mapping[int, Mapping[str, float]] | None = None) -> Figure:
    """Two panels over EP size: traffic per step, and all-to-all / expert compute time.

    sweep: :meth:`placer.studies.sweep.SweepResult.to_dict` (``points``: one dict per EP size with
    ``contiguous`` and ``placer`` traffic). reference: EP -> {"internode_gb", "a2a_to_compute"}
    marked as published figures (e.g. :data:`placer.studies.sweep.SEED001_REFERENCE`).
    """
    points = sweep["points"]
    eps = np.array([p["ep"] for p in points])
    colours = placement_colours(["contiguous", "placer"])
    fig = new_figure(11.0, 4.4)
    traffic, ratio = fig.subplots(1, 2)
    # under uniform routing both placements are contiguous's expectation: draw one
    shown = [("contiguous", "contiguous = placer (uniform routing)")] if sweep["routing"] == "uniform" else [
        ("contiguous", "contiguous"), ("placer", f"placer ({_solver_label(sweep)})")]
    for name, label in shown:
        inter = np.array([p[name]["internode_gb"] for p in points])
        intra = np.array([p[name]["intranode_gb"] for p in points])
        marker = "o" if name == "contiguous" else "s"
        traffic.plot(eps, inter, marker=marker, color=colours[name], linewidth=1.6, label=f"{label}, inter-node")
        traffic.plot(eps, intra, marker=marker, color=colours[name], linewidth=1.0, linestyle="--", alpha=0.45,
                     markersize=4, label=f"{label}, intra-node (NVLink)")
        ratio.plot(eps, [p[name]["a2a_to_compute"] for p in points], marker=marker, color=colours[name],
                   linewidth=1.6)
    if reference:
        marked = sorted(reference)
        traffic.plot(marked, [reference[e]["internode_gb"] for e in marked], linestyle="none", marker="X",
                     markersize=9, color="black", label="seed 001 figure (inter-node, a2a/compute)")
        ratio.plot(marked, [reference[e]["a2a_to_compute"] for e in marked], linestyle="none", marker="X",
                   markersize=9, color="black")
        for e in marked:
            ratio.annotate(f"seed {reference[e]['a2a_to_compute']:g}x", (e, reference[e]["a2a_to_compute"]),
                           textcoords="offset points", xytext=(-10, 0), ha="right", va="center", fontsize=8)
    ratio.axhline(1.0, color="#444444", linewidth=0.8, linestyle=":")
    for ax in (traffic, ratio):
        ax.set_xscale("log", base=2)
        ax.set_xticks(eps, labels=[str(e) for e in eps])
        ax.minorticks_off()
        ax.set_xlabel("expert parallelism (GPUs per EP group)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
    traffic.set_ylabel("GB per training step (whole cluster)")
    traffic.set_title("All-to-all traffic per step")
    ratio.set_ylabel("all-to-all time / expert compute time")
    ratio.set_title("All-to-all (busiest NIC / NVLink) over expert compute")
    step = sweep["assumptions"]
    fig.suptitle(f"{sweep['model']['name']} on {sweep['topology']['name']}: {step['tokens_per_step']:,} tokens "
                 f"per step, {sweep['routing']} routing, {step['dispatch']} dispatch")
    handles, labels = traffic.get_legend_handles_labels()
    figure_legend(fig, handles, labels, max_columns=3)
    return fig


_TIMELINE_PANELS = (
    ("internode_copies", "inter-node copies", "tokens"),
    ("gpu_peak", "GPU peak pairs", "tokens"),
    ("experts_moved", "copies moved", "count"),
    ("all_to_all_s", "a2a + migration s", "seconds"),
)


@_styled
def timeline(result, *, title: str | None = None) -> Figure:
    """Policies over time (a :class:`placer.evaluation.timeline.Timeline`): inter-node copies,
    GPU peak, expert copies moved into each window, and all-to-all time plus migration
    (when the replay had a model), one line per policy; window 0 (contiguous) is shaded."""
    panels = [p for p in _TIMELINE_PANELS
              if p[0] != "all_to_all_s" or not np.isnan(result.series(next(iter(result.per_window)), p[0])).any()]
    fig = new_figure(9.0, 2.4 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True)
    colours = dict(zip(result.per_window, _PLACEMENT_COLOURS * 2))
    windows = len(result.windows)
    for ax, (name, label, kind) in zip(np.atleast_1d(axes), panels):
        series = {policy: result.series(policy, name) for policy in result.per_window}
        if name == "all_to_all_s":
            series = {policy: values + np.nan_to_num(result.series(policy, "migration_s"))
                      for policy, values in series.items()}
        divisor, unit = _scale(np.concatenate(list(series.values())), kind)
        for policy, values in series.items():
            ax.plot(np.arange(windows), values / divisor, marker="o", markersize=3, linewidth=1.3,
                    color=colours[policy], label=policy)
        ax.axvspan(-0.5, 0.5, color="#dddddd", alpha=0.6, linewidth=0)
        ax.set_ylabel(label + (f"\n({unit})" if unit and kind != "seconds" else ""))
        ax.grid(alpha=0.3)
    last = np.atleast_1d(axes)[-1]
    _index_ticks(last.xaxis, windows)
    last.set_xlim(-0.5, windows - 0.5)
    last.set_xlabel(f"window ({result.config.get('window_tokens', '?')} tokens; 0 = contiguous, not counted)")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    figure_legend(fig, handles, labels)
    fig.suptitle(title or "Placement policies over time")
    return fig
