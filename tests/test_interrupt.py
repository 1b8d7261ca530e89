"""Ctrl-C: the parallel map keeps finished results, place() keeps the best so far, and a real
SIGINT to ``placer place`` exits 130 with one line and either no file or a marked placement."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from placer import cli as cli_module
from placer import load_topology
from placer.bundled import sample_trace
from placer.formats.placement_io import read_placement
from placer.parallel import Interrupted, interruptible_map
from placer.request import PlacementProblem, SolverSettings
from placer.solvers import api, solve
from placer.trace import TraceSource

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(sample_trace("train"))


def _stop_at_three(x: int) -> int:
    if x == 3:
        raise KeyboardInterrupt
    return x * x


def test_interruptible_map_returns_what_finished_before_ctrl_c():
    assert interruptible_map(_stop_at_three, [0, 1, 2]) == [0, 1, 4]
    with pytest.raises(Interrupted) as stop:
        interruptible_map(_stop_at_three, [0, 1, 2, 3, 4])
    assert stop.value.results == [0, 1, 4, None, None]
    assert isinstance(stop.value, KeyboardInterrupt)


def _compiled_code_stops_at_two(x: int) -> int:
    """What numba raises when Ctrl-C lands inside a compiled function."""
    if x == 2:
        raise SystemError("CPUDispatcher(...) returned a result with an exception set") from KeyboardInterrupt()
    if x == 3:
        raise SystemError("a real bug")
    return x


def test_interruptible_map_treats_ctrl_c_inside_compiled_code_as_ctrl_c():
    with pytest.raises(Interrupted) as stop:
        interruptible_map(_compiled_code_stops_at_two, [0, 1, 2])
    assert stop.value.results == [0, 1, None]
    with pytest.raises(SystemError, match="a real bug"):
        interruptible_map(_compiled_code_stops_at_two, [0, 1, 3])


@pytest.fixture
def ctrl_c_on_layer_5(monkeypatch):
    solve = api.solve_layer

    def solve_or_stop(problem, opts):
        if problem.layer == 5:
            raise KeyboardInterrupt
        return solve(problem, opts)

    monkeypatch.setattr(api, "solve_layer", solve_or_stop)


def test_place_keeps_solved_layers_and_stands_in_for_the_rest(ctrl_c_on_layer_5):
    trace = TraceSource(TRAIN)
    topology = load_topology("h100-dgx").resized(4, 8)
    placement, report = solve(trace, PlacementProblem(topology), SolverSettings(solver="spectral", on_interrupt="best"))
    assert report.interrupted
    statuses = [layer.status for layer in report.layers]
    assert statuses[:5] == ["feasible"] * 5 and set(statuses[5:]) == {"interrupted"}
    facts = placement.metadata["solver"]["interrupted"]
    assert facts["layers_solved"] == 5 and facts["layers_unsolved"] == list(range(5, trace.num_layers))
    assert report.to_dict()["interrupted"]["layers_solved"] == 5 and "INTERRUPTED" in report.summary()
    for row in placement.phy2log:  # every expert placed once, GPUs within their slots
        assert sorted(row[row >= 0].tolist()) == list(range(trace.num_experts))
    assert all(0 <= layer.bound <= layer.objective for layer in report.layers)


def test_place_propagates_ctrl_c_unless_asked_or_when_limits_cannot_be_kept(ctrl_c_on_layer_5):
    trace = TraceSource(TRAIN)
    topology = load_topology("h100-dgx").resized(4, 8)
    with pytest.raises(KeyboardInterrupt):
        solve(trace, PlacementProblem(topology), SolverSettings(solver="spectral"))
    with pytest.raises(KeyboardInterrupt):
        solve(trace, PlacementProblem(topology, balance=2.0), SolverSettings(solver="spectral", on_interrupt="best"))


def _interrupt(tmp_path: Path, workers: int, delay: float, sig: int = signal.SIGINT, group: bool = True
               ) -> tuple[subprocess.CompletedProcess, Path]:
    """Start ``placer place`` (several seconds of CP-SAT work), Ctrl-C it as a terminal would
    (``sig`` to the process group), or send ``sig`` to the main process only (``group=False``)."""
    out = tmp_path / "p.json"
    command = [sys.executable, "-m", "placer", "place", "--trace", TRAIN, "--nodes", "4", "--solver", "ilp",
               "--time-limit", "120", "--workers", str(workers), "--out", str(out), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a terminal's Ctrl-C reaches a process whose SIGINT is not ignored; a suite started in the
    # background of a non-interactive shell inherits SIG_IGN, so restore the default first
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    assert proc.poll() is None, "placer finished before it could be interrupted"
    if group:
        os.killpg(proc.pid, sig)  # the whole process group, workers included
    else:
        os.kill(proc.pid, sig)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), out


@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_exits_143_with_one_line_and_no_worker_tracebacks(tmp_path, group):
    result, out = _interrupt(tmp_path, 2, delay=6.0, sig=signal.SIGTERM, group=group)
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == "placer: terminated (SIGTERM); no output was written\n"
    assert list(tmp_path.iterdir()) == []  # neither output nor temporaries


@pytest.mark.parametrize("workers", [1, 2])
def test_real_sigint_exits_130_with_one_line_and_an_honest_file(tmp_path, workers):
    result, out = _interrupt(tmp_path, workers, delay=8.0)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("placer: interrupted")
    assert [p.name for p in tmp_path.iterdir() if p.name != "p.json"] == []  # no temporary files
    if not out.exists():  # interrupted before any placement existed
        assert "no output was written" in result.stderr and result.stdout == ""
        return
    doc = json.loads(result.stdout)
    assert doc["interrupted"] is True and doc["out"] == str(out)
    facts = doc["solve"]["interrupted"]
    assert facts["layers_solved"] + len(facts["layers_unsolved"]) == 26
    assert str(out) in result.stderr and "best placement so far" in result.stderr
    placement = read_placement(out)
    assert placement.metadata["solver"]["interrupted"]["layers_unsolved"] == facts["layers_unsolved"]
    assert all(np.array_equal(np.sort(row), np.arange(64)) for row in placement.phy2log)


def test_ctrl_c_before_any_placement_says_so_on_one_line(cli, monkeypatch, tmp_path):
    """Ctrl-C while the trace is read: typer would exit 130 silently; placer says what happened."""
    def interrupted_read(path: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module.workflow, "open_routing", interrupted_read)
    result = cli("place", "--trace", TRAIN, "--nodes", "4", "--out", tmp_path / "p.json")
    assert result.code == 130
    assert result.err == "placer: interrupted; no output was written\n"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_after_a_write_names_what_was_written(cli, monkeypatch, tmp_path):
    """Ctrl-C during place --evaluate's replay: the placement is already written, and the one
    line says so (not "no output was written")."""
    def interrupted_replay(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module.workflow, "compare", interrupted_replay)
    out = tmp_path / "p.json"
    result = cli("place", "--trace", TRAIN, "--solver", "contiguous", "--evaluate", sample_trace("test"),
                 "--out", out)
    assert result.code == 130
    assert result.err == f"placer: interrupted; wrote {out} before stopping\n"
    assert read_placement(out).num_layers == 26
