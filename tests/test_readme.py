"""The README runs as written: its set-up block is what .ci/run executes, and its tour and
Python snippet run (in a scratch folder beside the repository's traces)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(name: str) -> str:
    """The fenced code between ``<!-- name -->`` and ``<!-- /name -->``."""
    found = re.search(rf"<!-- {name} -->\n```\w*\n(.*?)```\n<!-- /{name} -->", README, re.S)
    assert found, f"README.md has no {name} block"
    return found.group(1)


def lines(name: str) -> list[str]:
    return [line for line in block(name).splitlines() if line.strip()]


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A folder laid out like the repository root (traces/ and ../shared where present)."""
    work = tmp_path / "repo"
    work.mkdir()
    (work / "traces").symlink_to(ROOT / "traces")
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    return work


def run(command: list[str] | str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "200"}
    shell = isinstance(command, str)
    return subprocess.run(command, cwd=cwd, env=env, shell=shell, capture_output=True, text=True, timeout=600,
                          executable="/bin/bash" if shell else None)


def test_setup_block_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- setup -->" in ci and "bash -c" in ci
    setup = lines("setup")
    assert setup[0].startswith("python3 -m venv .venv") and "placer demo" in setup[0]
    assert "pytest" in setup[-1]


def test_tour_runs_as_written(scratch):
    for command in lines("tour"):
        done = run(command, scratch)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    assert (scratch / "p.json").is_file() and (scratch / "expert_location.json").is_file()
    assert len(list((scratch / "shards").glob("*.npz"))) == 4


def test_tour_on_the_real_traces_runs_as_written(scratch):
    if not SHARED.is_dir():
        pytest.skip(f"real ESFT traces not found at {SHARED} (../shared beside the repo)")
    for command in lines("tour-shared"):
        done = run(command, scratch)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"


def test_python_snippet_runs_as_written(scratch):
    done = run([sys.executable, "-c", block("python")], scratch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (scratch / "p-python.json").is_file()
    report, replay = done.stdout.splitlines()[-2:]
    assert report.startswith("solver spectral")
    internode, gpu_peak = map(int, replay.split())
    assert internode > 0 and gpu_peak > 0


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
