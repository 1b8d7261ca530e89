"""HTML / Markdown placement reports and the plot functions behind them (need matplotlib)."""

from __future__ import annotations

import base64
import io
import re
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "matplotlib", reason="matplotlib is not installed: plots and reports need the extra `pip install placer[plots]`"
)

from matplotlib.figure import Figure

from placer import instances
from placer.bundled import sample_trace
from placer.errors import InputError
from placer.evaluation.replay import evaluate
from placer.placement import BASELINES, baseline, from_expert_gpu
from placer.presentation import plots
from placer.presentation import report as report_module
from placer.presentation.report import (
    FIGURE_NAMES,
    ReportData,
    ReportFigure,
    reference_placement,
    save_report,
    summary_rows,
    write_markdown_report,
    write_report,
)
from placer.topology import Model, Topology
from placer.trace import TraceSource, save_trace, validate_arrays
from placer.workflow import with_baselines

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TINY_TOPOLOGY = Topology("tiny", nodes=2, gpus_per_node=2, gpu_memory_bytes=1e9, gpu_flops=60.0,
                         nvlink_bandwidth=100.0, nic_bandwidth=5.0, latency_s=0.5)
TINY_MODEL = Model("tiny", num_experts=8, top_k=2, hidden_size=10, moe_intermediate_size=1, num_moe_layers=3)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless ``data`` starts like a PNG."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def tiny_trace():
    rng = np.random.default_rng(3)
    ids = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(3)]) for _ in range(200)])
    return validate_arrays("tiny", {"topk_ids": ids, "num_experts": np.int64(8)})


@pytest.fixture(scope="module")
def tiny_reports(tiny_trace):
    """Replays of the tiny trace under two baselines and a shuffled placement, with and without a model."""
    shuffled = from_expert_gpu(np.array([[3, 0, 2, 1, 0, 1, 2, 3]] * 3), 4, 2)
    placements = {
        "contiguous": baseline("contiguous", 3, 8, 4, 2),
        "round-robin": baseline("round-robin", 3, 8, 4, 2),
        "mine": shuffled,
    }
    with_model = {n: evaluate(tiny_trace, p, TINY_TOPOLOGY, TINY_MODEL) for n, p in placements.items()}
    tokens_only = {n: evaluate(tiny_trace, p, TINY_TOPOLOGY) for n, p in placements.items()}
    return with_model, tokens_only


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    """HTML report of the embedded sample's held-out half: a shuffled placement against the baselines, 4 x 8."""
    test = TraceSource(sample_trace("test"))
    topology = instances.load_topology("h100-dgx").resized(4, 8)
    model = instances.load_model("deepseek-v2-lite")
    rng = np.random.default_rng(7)
    shuffled = np.stack([rng.permutation(np.repeat(np.arange(32), 2)) for _ in range(test.num_layers)])
    mine = from_expert_gpu(shuffled, 32, 8, metadata={"solver": {"name": "shuffled"}})
    out = tmp_path_factory.mktemp("report")
    page = write_report(test, {"mine <b>": mine}, topology, model, out, title="Sample report")
    expected = {
        name: evaluate(test, placement, topology, model).totals
        for name, placement in [("mine <b>", mine), ("contiguous", baseline("contiguous", 26, 64, 32, 8))]
    }
    return page, expected


# ---------------------------------------------------------------- the report


def test_report_writes_a_self_contained_page_and_the_pngs(sample_report):
    page, _ = sample_report
    assert page.name == "index.html"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(embedded) == len(FIGURE_NAMES)
    assert not re.search(r'src="(?!data:)', text), "every image must be embedded"
    for name, encoded in zip(FIGURE_NAMES, embedded):
        png = (page.parent / f"{name}.png").read_bytes()
        assert base64.b64decode(encoded) == png, f"{name}.png differs from the embedded copy"
        width, height = png_size(png)
        assert 600 <= width <= 2500 and 300 <= height <= 2500, (name, width, height)
        assert 10_000 < len(png) < 2_000_000, (name, len(png))
    leftovers = [p.name for p in page.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "atomic writes left temporary files behind"


def test_report_names_every_placement_and_shows_the_evaluator_numbers(sample_report):
    page, expected = sample_report
    text = page.read_text(encoding="utf-8")
    assert "<title>Sample report</title>" in text
    assert "mine &lt;b&gt;" in text and "mine <b>" not in text, "names are HTML-escaped"
    for name in BASELINES:
        assert f"<th>{name}</th>" in text
    mine, contiguous = expected["mine <b>"], expected["contiguous"]
    for totals in (mine, contiguous):
        assert f"{totals['internode_tokens_dedup']:,}" in text
        assert f"{totals['nic_peak_tokens']:,}" in text
        assert f"{totals['gpu_peak_load']:,}" in text
        assert f"{totals['gpu_load_imbalance']:.3f}" in text
        assert f"{totals['all_to_all_s'] * 1e3:.3f}" in text
    ratio = mine["internode_tokens_dedup"] / contiguous["internode_tokens_dedup"]
    assert f"{ratio:.3f}" in text
    assert "x contiguous" in text
    for fact in ("deepseek-v2-lite", "h100-dgx: 4 nodes x 8 GPUs", "4,110 tokens x 26 MoE layers", "normal"):
        assert fact in text, fact
    assert "solver shuffled" in text


def test_markdown_report_references_the_pngs(tiny_reports, tiny_trace, tmp_path, monkeypatch):
    """save_report / render_markdown on hand-made report data (no figures rendered but one)."""
    _, tokens_only = tiny_reports
    fig = plots.new_figure(2, 1)
    fig.add_subplot().plot([0, 1])
    png = io.BytesIO()
    plots.save_png(fig, png)
    data = ReportData(
        title="tiny | report",
        results=list(tokens_only.items()),
        reference="contiguous",
        config={"trace": "tiny", "model": "none (token counts only)"},
        placements_info=[(name, "baseline") for name in tokens_only],
        figures=[ReportFigure(name, name.title(), f"How to read {name}.", png.getvalue()) for name in FIGURE_NAMES],
    )
    page = save_report(data, tmp_path / "md", "md")
    assert page.name == "report.md"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# tiny | report\n")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == [f"{name}.png" for name in FIGURE_NAMES]
    for link in links:
        assert (page.parent / link).read_bytes() == png.getvalue()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| placement | inter-node | x contiguous |")
    totals = tokens_only["mine"].totals
    assert f"| mine | {totals['internode_tokens_dedup']:,} |" in text
    assert "a2a" not in rows[0], "no a2a columns without a model"
    assert not (page.parent / "index.html").exists()

    # write_markdown_report is write_report(format="md"): same page from the same data
    monkeypatch.setattr(report_module, "build_report", lambda *args, **kwargs: data)
    again = write_markdown_report(tiny_trace, {}, TINY_TOPOLOGY, None, tmp_path / "md2")
    assert again.name == "report.md" and again.read_text(encoding="utf-8") == text


def test_baselines_are_added_once_and_ratios_are_against_contiguous(tiny_reports):
    same_as_round_robin = baseline("round-robin", 3, 8, 4, 2)
    given = {"mine": same_as_round_robin, "contiguous": baseline("contiguous", 3, 8, 4, 2)}
    entries = with_baselines(given, BASELINES, 3, 8, TINY_TOPOLOGY)
    assert [name for name, _ in entries] == ["random", "mine", "contiguous"]
    assert reference_placement(entries, 3, 8, TINY_TOPOLOGY) == "contiguous"
    renamed = [("a", baseline("random", 3, 8, 4, 2)), ("b", baseline("contiguous", 3, 8, 4, 2))]
    assert reference_placement(renamed, 3, 8, TINY_TOPOLOGY) == "b"
    assert reference_placement(renamed[:1], 3, 8, TINY_TOPOLOGY) == "a"

    _, tokens_only = tiny_reports
    header, rows = summary_rows(list(tokens_only.items()), "contiguous")
    assert header[:3] == ["placement", "inter-node", "x contiguous"]
    by_name = {row[0]: row for row in rows}
    mine, contiguous = tokens_only["mine"].totals, tokens_only["contiguous"].totals
    assert by_name["contiguous"][2] == "1.000"
    assert by_name["mine"][2] == f"{mine['internode_tokens_dedup'] / contiguous['internode_tokens_dedup']:.3f}"
    assert not any("a2a" in name or "compute" in name for name in header), "no time columns without a model"


def test_report_refuses_bad_requests_and_never_overwrites_inputs(tiny_trace, tmp_path):
    mine = {"mine": baseline("random", 3, 8, 4, 2)}
    with pytest.raises(InputError, match="format"):
        write_report(tiny_trace, mine, TINY_TOPOLOGY, None, tmp_path / "a", format="pdf")
    with pytest.raises(InputError, match="nothing to report"):
        write_report(tiny_trace, {}, TINY_TOPOLOGY, None, tmp_path / "a", baselines=())
    with pytest.raises(InputError, match="layer"):
        write_report(tiny_trace, mine, TINY_TOPOLOGY, None, tmp_path / "a", layer=3)
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    with pytest.raises(InputError, match="not a directory"):
        write_report(tiny_trace, mine, TINY_TOPOLOGY, None, a_file)
    # A trace that happens to sit where the report would go is left alone.
    out = tmp_path / "out"
    out.mkdir()
    save_trace(tiny_trace, out / "index.html")
    before = (out / "index.html").read_bytes()
    with pytest.raises(InputError, match="overwrite the input"):
        write_report(out / "index.html", mine, TINY_TOPOLOGY, None, out)
    assert (out / "index.html").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]


# ---------------------------------------------------------------- plot functions on hand-made data


def test_expert_order_groups_experts_by_node_then_gpu():
    order, boundaries = plots.expert_order(np.array([3, 0, 2, 1]), gpus_per_node=2)
    assert order.tolist() == [1, 3, 2, 0]
    assert boundaries.tolist() == [2]
    # an empty node still gets its boundary
    order, boundaries = plots.expert_order(np.array([0, 0, 5, 5]), gpus_per_node=2)
    assert boundaries.tolist() == [2, 2]


def test_within_block_share():
    matrix = np.array([[0, 4, 1, 0], [4, 0, 0, 1], [1, 0, 0, 2], [0, 1, 2, 0]])
    assert plots.within_block_share(matrix, [2]) == pytest.approx(12 / 16)
    assert plots.within_block_share(matrix, [2], order=np.array([0, 2, 1, 3])) == pytest.approx(4 / 16)


def test_pareto_front_keeps_the_non_dominated_points_by_x():
    points = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3), (5, 1)]
    assert plots.pareto_front(points).tolist() == [0, 1, 4, 3]
    assert plots.pareto_front(np.empty((0, 2))).tolist() == []


def test_tick_step_labels_every_kth_index():
    assert plots.tick_step(64) == 8
    assert plots.tick_step(8) == 1
    assert plots.tick_step(26, 6) == 5
    assert -(-1000 // plots.tick_step(1000)) <= plots.MAX_TICK_LABELS


def test_short_names_keep_both_ends():
    assert plots.short("abc") == "abc"
    cut = plots.short("a-very-long-placement-name-from-some-file.json", 20)
    assert len(cut) == 20 and cut.startswith("a-very") and cut.endswith(".json")


def test_heatmap_and_expert_map_on_tiny_data():
    coactivation = np.array([[0, 5, 0, 1], [5, 0, 2, 0], [0, 2, 0, 9], [1, 0, 9, 0]])
    order, boundaries = plots.expert_order(np.array([0, 2, 1, 3]), 2)
    fig = plots.coactivation_heatmap(coactivation, order, boundaries, title="tiny")
    assert isinstance(fig, Figure)
    heat_ax = fig.axes[0]
    assert heat_ax.get_title() == "tiny"
    assert [t.get_text() for t in heat_ax.get_xticklabels()] == ["node 0", "node 1"]
    assert fig.axes[1].get_ylabel() == "tokens choosing both experts"

    fig = plots.expert_gpu_map(np.array([[0, 1, 2, 3], [3, 2, 1, 0]]), gpus_per_node=2)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("expert id", "MoE layer")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["node 0", "node 1"]
    fig = plots.expert_gpu_map(np.array([[0, 1, 2, 3]]), gpus_per_node=2, color_by="gpu", legend=False)
    with pytest.raises(ValueError, match="color_by"):
        plots.expert_gpu_map(np.array([[0, 1]]), 2, color_by="rack")


def test_replay_plots_on_tiny_reports(tiny_reports, tmp_path):
    with_model, tokens_only = tiny_reports
    fig = plots.nic_bytes_per_node(with_model)
    assert re.match(r"(bytes|kB|MB|GB|TB) received", fig.axes[0].get_ylabel())
    fig = plots.nic_bytes_per_node(tokens_only, direction="sent")
    assert fig.axes[0].get_ylabel().startswith("token copies sent")
    with pytest.raises(ValueError, match="direction"):
        plots.nic_bytes_per_node(tokens_only, direction="both")

    fig = plots.gpu_peak_per_layer(tokens_only)
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("busiest GPU's token-expert pairs")
    assert [line.get_label() for line in ax.get_lines()][:3] == ["contiguous", "round-robin", "mine"]

    fig = plots.nodes_per_token(tokens_only)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "share of (token, layer) pairs (%)"
    heights = np.array([[bar.get_height() for bar in container] for container in ax.containers])
    assert heights.sum(axis=1) == pytest.approx(100.0)

    for draw in (plots.internode_per_layer, plots.imbalance_per_layer, plots.tradeoff):
        assert isinstance(draw(with_model), Figure)

    # drawing on a caller's axes returns what was drawn on, and the figure saves as PNG
    fig = plots.new_figure(6, 3)
    ax = fig.add_subplot()
    assert plots.gpu_peak_per_layer(list(tokens_only.items()), ax, legend=False) is ax
    plots.save_png(fig, tmp_path / "load.png")
    width, height = png_size((tmp_path / "load.png").read_bytes())
    assert (width, height) == (720, 360)


def test_cli_report_writes_page_and_figures(tmp_path, cli):
    result = cli("report", "--trace", sample_trace("test"), "--placement", "round-robin",
                 "--out", tmp_path / "r", "--json")
    assert result.code == 0, result.err
    doc = result.json()
    assert Path(doc["out"]).name == "index.html" and all(Path(f).stat().st_size > 1000 for f in doc["figures"])


def test_gpu_figure_plots_per_layer_peaks_and_says_when_there_is_no_balance_freedom(tiny_trace, tiny_reports):
    with_model, _ = tiny_reports
    ax = plots.gpu_peak_per_layer(with_model).axes[0]
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    for name, report in with_model.items():
        np.testing.assert_allclose(lines[name], report.per_layer["gpu_load"].max(axis=1))
    mean = with_model["contiguous"].per_layer["gpu_load"].mean(axis=1)
    np.testing.assert_allclose(lines["mean per GPU"], mean)
    assert not plots.balance_is_fixed(with_model)

    one_per_gpu = replace(TINY_TOPOLOGY, nodes=4)  # 8 experts on 8 GPUs: every placement has the same loads
    reports = {name: evaluate(tiny_trace, baseline(name, 3, 8, 8, 2), one_per_gpu) for name in BASELINES}
    assert plots.balance_is_fixed(reports)
    for draw in (plots.gpu_peak_per_layer, plots.imbalance_per_layer):
        ax = draw(reports).axes[0]
        assert "no balance freedom" in ax.get_title()
        assert len([line for line in ax.get_lines() if line.get_label().startswith("every placement")]) == 1
    ax = plots.tradeoff(reports).axes[0]
    assert "no balance freedom" in ax.get_title() and len(ax.patches) == len(BASELINES)
    assert [p.get_width() for p in ax.patches] == [reports[n].totals["internode_tokens_dedup"] for n in BASELINES]
