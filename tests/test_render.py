"""Tables fit 80 columns without losing a digit; the closing sentence and calc's units come from the figures."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from placer import instances
from placer.bundled import sample_trace
from placer.evaluation import calc
from placer.evaluation.replay import evaluate
from placer.placement import BASELINES, baseline, from_expert_gpu
from placer.presentation import render
from placer.stats import trace_stats
from placer.studies import sweep
from placer.trace import TraceSource


def shown(renderable, width: int = 80) -> str:
    """What ``renderable`` prints on a ``width``-column console without a terminal."""
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()


def assert_fits(text: str, cells, width: int = 80) -> None:
    """Every line within ``width``, no ellipsis, and every cell printed whole."""
    assert max(len(line) for line in text.splitlines()) <= width
    assert "\u2026" not in text and "..." not in text
    missing = [cell for cell in cells if not re.search(rf"(?<!\S){re.escape(cell)}(?!\S)", text)]
    assert not missing, f"cells not printed whole: {missing}"


def cells(figures: render.Figures) -> list[str]:
    return [cell for _, row in figures.rows for cell in row]


@pytest.fixture(scope="module")
def replays():
    """The sample's held-out half replayed on 4 x 8 (deepseek-v2-lite) under the baselines and a shuffle."""
    test = TraceSource(sample_trace("test"))
    topology = instances.load_topology("h100-dgx").resized(4, 8)
    model = instances.load_model("deepseek-v2-lite")
    rng = np.random.default_rng(3)
    shuffled = np.stack([rng.permutation(np.repeat(np.arange(32), 2)) for _ in range(test.num_layers)])
    placements = [(name, baseline(name, test.num_layers, 64, 32, 8)) for name in BASELINES]
    placements.append(("placer spectral", from_expert_gpu(shuffled, 32, 8)))
    with_model = [(name, evaluate(test, p, topology, model, max_nodes=2)) for name, p in placements]
    tokens_only = [(name, evaluate(test, p, topology)) for name, p in placements]
    return with_model, tokens_only


@pytest.mark.parametrize("which", ["with_model", "tokens_only"])
def test_comparison_fits_80_columns_with_every_digit(replays, which):
    results = replays[0] if which == "with_model" else replays[1]
    figures = render.comparison_table(results, "a title long enough to wrap " * 4)
    text = shown(figures)
    assert_fits(text, cells(figures))
    assert str(results[-1][1].totals["internode_tokens_dedup"]) not in text  # printed with separators
    assert f"{results[-1][1].totals['internode_tokens_dedup']:,}" in text
    assert ("a2a ms" in text) == (which == "with_model"), "time rows only with a model"
    assert "None" not in text


def test_many_placements_split_into_tables_that_fit(replays):
    results = [(f"placement-file-{i}.json", report) for i in range(9) for _, report in replays[0][:1]]
    figures = render.comparison(results)
    text = shown(figures)
    assert_fits(text, [*cells(figures), *(name for name, _ in results)])
    assert text.count("inter-node copies") >= 2, "split into several tables, each with its labels"


def test_wide_console_keeps_one_table(replays):
    figures = render.comparison(replays[0])
    tables, _ = figures.tables(Console(width=200), 200)
    assert len(tables) == 1


def test_verdict_is_computed_from_the_figures(replays):
    results = replays[0]
    ours, ref = results[-1][1].totals, results[0][1].totals
    sentence = render.verdict(results, results[-1][0], results[0][0])
    inter = round(100 * (1 - ours["internode_tokens_dedup"] / ref["internode_tokens_dedup"]))
    assert sentence.startswith(f"{results[-1][0]}: ")
    assert sentence.endswith(f"than {results[0][0]}.")
    expected = f"{abs(inter)}% {'fewer' if inter > 0 else 'more'} inter-node copies"
    assert expected in sentence if inter else "as many inter-node copies" in sentence
    # other figures, other sentence: halve our inter-node copies, match the NIC peak
    fake = {"internode_tokens_dedup": 500, "nic_peak_tokens": 70, "gpu_peak_load": 130, "all_to_all_s": None}
    base = {"internode_tokens_dedup": 1000, "nic_peak_tokens": 70, "gpu_peak_load": 100, "all_to_all_s": None}
    pair = [("ref", SimpleNamespace(totals=base)), ("mine", SimpleNamespace(totals=fake))]
    assert render.verdict(pair, "mine", "ref") == (
        "mine: 50% fewer inter-node copies, the same on the busiest NIC, 30% more load on the busiest GPU than ref."
    )


def test_stats_table_fits_80_columns():
    stats = trace_stats(TraceSource(sample_trace("train"))).to_dict()
    figures = render.stats_table(stats)
    text = shown(figures)
    assert_fits(text, cells(figures))
    assert len(figures.rows) == stats["layers"] + 1


def test_sweep_table_fits_80_columns():
    result = sweep.run_sweep(instances.load_model("deepseek-v3"), instances.load_topology("h100-dgx"), None, None,
                             eps=[1, 8, 16, 32], step=sweep.StepModel())
    figures = render.sweep_table(result)
    text = shown(figures)
    assert_fits(text, cells(figures))
    assert f"{result.points[-1].contiguous.intranode_gb:,.1f}" in text


def test_calc_prints_units_and_human_numbers():
    model, topology = instances.load_model("deepseek-v3"), instances.load_topology("h100-dgx")
    volume = calc.all_to_all_volume(model, 256, 4096, 8, None, None)
    text = shown(render.calc_figures(volume))
    assert_fits(text, cells(render.calc_figures(volume)))
    remote = volume.remote_vectors
    assert f"{remote:,.0f}" in text and "token vectors" in text
    assert f"{volume.combine_bytes / 1e6:.0f} MB" in text
    assert "None" not in text and "e+" not in text and "at most" not in text and " ms " not in text
    timed = calc.all_to_all_volume(model, 256, 4096, 8, 4, topology)
    text = shown(render.calc_figures(timed))
    assert "at most 4 nodes" in text and f"{timed.all_to_all_time_s * 1e3:,.3f} ms" in text


@pytest.mark.parametrize("count, expected", [
    (7168, "7.17 kB"), (999, "999 B"), (4.679e8, "468 MB"), (4.071e10, "40.7 GB"), (999.8e6, "1 GB"), (0, "0 B"),
])
def test_human_bytes(count, expected):
    assert render.human_bytes(count) == expected
