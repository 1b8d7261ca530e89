"""What a person reads: tables at 80 columns with every digit, the closing sentence, help, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import placer.cli as cli_module
from placer.bundled import sample_trace

TRAIN, TEST = str(sample_trace("train")), str(sample_trace("test"))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def narrow(monkeypatch):
    """The CLI's console at 80 columns, as when piped with COLUMNS=80."""
    monkeypatch.setattr(cli_module, "console", Console(width=80, highlight=False))


def assert_readable(text: str, numbers) -> None:
    """Lines within 80 columns, no ellipsis, every number printed whole."""
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\u2026" not in text and "None" not in text
    missing = [n for n in numbers if not re.search(rf"(?<![\d,.]){re.escape(n)}(?![\d,])", text)]
    assert not missing, f"numbers not printed whole: {missing}"


def shown_numbers(totals: dict) -> list[str]:
    """How the tables print a replay's counts and times."""
    numbers = [f"{totals[key]:,}" for key in ("internode_tokens_dedup", "nic_peak_tokens", "gpu_peak_load")]
    numbers.append(f"{totals['gpu_load_imbalance']:.3f}")
    if totals.get("all_to_all_s") is not None:
        numbers += [f"{totals['all_to_all_s'] * 1e3:,.3f}", f"{totals['compute_s'] * 1e3:,.3f}"]
    return numbers


def row(text: str, label: str) -> list[float]:
    """The numbers of one row of a printed table (thousands separators dropped)."""
    line = next(line for line in text.splitlines() if line.startswith(label + " "))
    return [float(cell.replace(",", "")) for cell in line[len(label):].split()]


def test_demo_piped_with_columns_80_shows_every_digit_and_a_computed_verdict():
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO)}
    text = subprocess.run([sys.executable, "-m", "placer", "demo", "-q"], capture_output=True, text=True,
                          env=env, check=True, cwd=REPO).stdout
    assert_readable(text, [])
    assert "GPU peak pairs:" in text and "a2a ms:" in text, "a glossary of the rows"
    header = next(line for line in text.splitlines() if line.lstrip().startswith("contiguous"))
    assert header.split() == ["contiguous", "round-robin", "random", "placer", "spectral"]
    parts = []
    for label, fewer, what in (("inter-node copies", "fewer", "inter-node copies"),
                               ("busiest NIC copies", "less", "on the busiest NIC"),
                               ("GPU peak pairs", "less", "load on the busiest GPU")):
        values = row(text, label)
        assert len(values) == 4 and all(v == int(v) and v > 0 for v in values), "whole counts in every column"
        parts.append(f"{round(100 * (1 - values[3] / values[0]))}% {fewer} {what}")
    a2a = row(text, "a2a ms")
    sentence = " ".join(text.split()[-40:])
    assert f"placer spectral: {', '.join(parts)}, " in sentence, "the closing sentence is computed from the figures"
    time_saved = int(re.search(r"(\d+)% less estimated all-to-all time than contiguous\.$", sentence).group(1))
    assert abs(time_saved - 100 * (1 - a2a[3] / a2a[0])) <= 1


def test_place_evaluate_ends_with_the_verdict_and_names_no_gap(tmp_path, cli, narrow):
    args = ("place", "--trace", TRAIN, "--solver", "round-robin", "--nodes", "4", "--model", "deepseek-v2-lite",
            "--evaluate", TEST, "-q")
    facts = cli(*args, "--out", tmp_path / "a.json", "--json").json()["evaluation"]
    result = cli(*args, "--out", tmp_path / "b.json")
    assert result.code == 0, result.err
    assert_readable(result.out, [n for totals in facts.values() for n in shown_numbers(totals)])
    ours, ref = facts["placer round-robin"]["internode_tokens_dedup"], facts["contiguous"]["internode_tokens_dedup"]
    change = round(100 * (1 - ours / ref))
    words = f"{abs(change)}% {'fewer' if change > 0 else 'more'} inter-node copies" if change else "as many"
    assert f"placer round-robin: {words}" in " ".join(result.out.split())


@pytest.mark.parametrize("model", [None, "deepseek-v2-lite"])
def test_evaluate_fits_80_columns_names_its_reference_and_json_carries_what_it_used(tmp_path, cli, narrow, model):
    placed = tmp_path / "p.json"
    assert cli("place", "--trace", TRAIN, "--solver", "random", "--nodes", "4", "--out", placed, "-q").code == 0
    args = ["evaluate", "--trace", TEST, "--placement", "round-robin", "--placement", placed, "--nodes", "4", "-q",
            *(["--model", model] if model else [])]
    doc = cli(*args, "--json").json()
    assert doc["topology"]["nodes"] == 4 and doc["model"]["name"] == "deepseek-v2-lite"  # matched when not given
    result = cli(*args)
    assert result.code == 0, result.err
    assert_readable(result.out, [n for totals in doc["results"].values() for n in shown_numbers(totals)])
    assert "ratios against round-robin, the first --placement" in " ".join(result.out.split())
    assert "a2a ms" in result.out and ("model: deepseek-v2-lite" in result.out)


def test_stats_sweep_and_calc_fit_80_columns(cli, narrow):
    stats = cli("stats", TRAIN, "--json").json()
    text = cli("stats", TRAIN).out
    assert_readable(text, [f"{value:.3f}" for value in stats["per_layer"]["load_skew"]])

    args = ("sweep", "--model", "deepseek-v3", "--topology", "h100-dgx", "--ep", "1,16,32")
    points = cli(*args, "--json").json()["points"]
    text = cli(*args).out
    assert_readable(text, [f"{p[side][key]:,.1f}" for p in points for side in ("contiguous", "placer")
                           for key in ("internode_gb", "intranode_gb")])

    volume = cli("calc", "--topology", "h100-dgx", "--json").json()
    text = cli("calc", "--topology", "h100-dgx").out
    assert_readable(text, [f"{volume['remote_vectors']:,.0f}", f"{volume['combine_bytes'] / 1e6:.0f} MB"])
    assert "token vectors" in text and " ms " in text and "e+" not in text and "_" not in text


def test_sweep_without_matplotlib_prints_the_table_and_says_how_to_get_the_figure(tmp_path, cli, narrow,
                                                                                 monkeypatch):
    import placer.presentation

    monkeypatch.setitem(sys.modules, "placer.presentation.plots", None)  # import fails as without matplotlib
    monkeypatch.delattr(placer.presentation, "plots", raising=False)
    result = cli("sweep", "--model", "deepseek-v3", "--topology", "h100-dgx", "--ep", "8,16", "--out", tmp_path)
    assert result.code == 0, result.err
    assert "a2a/cmp" in result.out and (tmp_path / "sweep.json").exists() and not (tmp_path / "sweep.png").exists()
    assert "pip install 'placer[plots]'" in result.err and "Traceback" not in result.err


def test_help_is_plain_and_fits_80_columns(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    texts = {name: cli(name, "--help").out for name in ("synth", "validate", "stats", "place", "evaluate", "calc")}
    for name, text in texts.items():
        assert max(len(line) for line in text.splitlines()) <= 80, name
        assert "<bool>" not in text, name
    assert "a .toml with [synth]" in " ".join(texts["synth"].split())
    assert "placer[dask]" in texts["stats"] and "solve" not in texts["stats"]
    assert "trace" not in texts["validate"].lower()
    assert "--json true" not in texts["place"]


def test_errors_name_the_file_and_what_fits(tmp_path, cli):
    placed = tmp_path / "p.json"
    assert cli("place", "--trace", TRAIN, "--solver", "contiguous", "--nodes", "8", "--out", placed, "-q").code == 0
    result = cli("evaluate", "--trace", TEST, "--placement", placed, "--nodes", "4")
    assert result.code == 2
    assert str(placed) in result.err and "8 nodes x 8 GPUs" in result.err and "--nodes 8" in result.err
