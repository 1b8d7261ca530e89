"""Progress: library callbacks, rich bars on a (forced) terminal, silence when piped or --quiet."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from placer import load_topology
from placer.bundled import sample_trace
from placer.evaluation.replay import evaluate
from placer.graph import LAYER_RUN
from placer.placement import baseline
from placer.progress import TerminalProgress, prefixed, terminal_progress, track
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import solve
from placer.trace import TraceSource

SAMPLE = str(sample_trace("test"))


class Recorder:
    """A fake progress callback: every (stage, done, total) call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.calls.append((stage, done, total))

    def stages(self) -> dict[str, list[int]]:
        seen: dict[str, list[int]] = {}
        for stage, done, total in self.calls:
            seen.setdefault(stage, []).append(done)
            assert 0 <= done <= total
        return seen


def test_track_reports_each_item_after_it_is_used():
    record = Recorder()
    assert list(track("abc", "s", 5, record, start=2)) == ["a", "b", "c"]
    assert record.calls == [("s", 2, 5), ("s", 3, 5), ("s", 4, 5), ("s", 5, 5)]
    assert list(track("ab", "s", 2, None)) == ["a", "b"]
    assert prefixed(None, "x: ") is None
    prefixed(record, "x: ")("t", 1, 2)
    assert record.calls[-1] == ("x: t", 1, 2)


def test_place_and_evaluate_report_every_stage_to_a_callback():
    trace = TraceSource(SAMPLE)
    topology = load_topology("h100-dgx").resized(2, 8)
    record = Recorder()
    placement, _ = solve(
        trace, PlacementProblem(topology), SolverSettings(solver="spectral", time_limit=1, progress=record)
    )
    evaluate(trace, placement, topology, progress=prefixed(record, "p: "))
    stages = record.stages()
    layers = trace.num_layers
    # layers are summarised in runs of at most graph.LAYER_RUN consecutive layers
    summarised = stages["summarising trace"]
    steps = np.diff(summarised)
    assert summarised[0] == 0 and summarised[-1] == layers and (steps > 0).all() and (steps <= LAYER_RUN).all()
    assert stages["solving layers"] == list(range(layers + 1))
    assert stages["p: replaying trace"] == list(range(layers + 1))


def test_terminal_bars_draw_on_a_forced_terminal_and_nowhere_else():
    forced = io.StringIO()
    with terminal_progress(False, Console(file=forced, force_terminal=True, width=100)) as bars:
        assert isinstance(bars, TerminalProgress)
        evaluate(
            TraceSource(SAMPLE),
            baseline("contiguous", 26, 64, 16, 8),
            load_topology("h100-dgx").resized(2, 8),
            progress=bars,
        )
    assert "replaying trace" in forced.getvalue() and "26/26" in forced.getvalue()
    piped = io.StringIO()
    with terminal_progress(False, Console(file=piped)) as bars:
        assert bars is None
    with terminal_progress(True, Console(file=forced, force_terminal=True)) as bars:
        assert bars is None
    assert piped.getvalue() == ""


@pytest.fixture
def no_forced_terminal(monkeypatch):
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def test_piped_cli_prints_no_progress(cli, tmp_path, no_forced_terminal):
    result = cli(
        "place",
        "--trace",
        SAMPLE,
        "--nodes",
        "2",
        "--solver",
        "spectral",
        "--time-limit",
        "1",
        "--out",
        tmp_path / "p.json",
        "--evaluate",
        SAMPLE,
        "--json",
    )
    assert result.code == 0, result.err
    assert result.err == ""
    assert json.loads(result.out)["interrupted"] is False


@pytest.mark.parametrize(
    "command",
    [
        ["stats", SAMPLE, "--json"],
        ["evaluate", "--trace", SAMPLE, "--placement", "contiguous", "--placement", "random", "--nodes", "2", "--json"],
    ],
)
def test_cli_on_a_terminal_draws_bars_on_stderr_unless_quiet(cli, monkeypatch, command):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats stderr as a terminal
    shown = cli(*command)
    assert shown.code == 0, shown.err
    json.loads(shown.out)  # stdout stays pure JSON
    assert "summarising trace" in shown.err or "replaying trace" in shown.err
    quiet = cli(*command, "--quiet")
    assert quiet.code == 0 and quiet.err == ""
    assert json.loads(quiet.out) == json.loads(shown.out)
