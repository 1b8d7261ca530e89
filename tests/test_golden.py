"""Golden placements: sha256 of every case's phy2log, kept byte-identical across refactors.

A change that alters placements on purpose regenerates the hashes in the same commit:
``PLACER_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`` (then review the diff).
``auto`` compares Mt-KaHyPar's partition among its candidates when it is installed, so its
cases have a second hash (key suffix ``+mtkahypar``); regenerate both: once with
``PLACER_NO_MTKAHYPAR=1`` set and once without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from placer.solvers import mtk

HERE = Path(__file__).parent / "golden"
SAMPLE = Path(__file__).parents[1] / "traces" / "sample" / "esft-intent-train.npz"
GROUPED = HERE / "dsv2lite-4groups.toml"
HASHES = HERE / "placements.json"

#: case name -> CLI flags of ``placer place`` (the trace and output are added)
CASES: dict[str, list[str]] = {
    "spectral-4x8-s1": ["--solver", "spectral", "--nodes", "4"],
    "spectral-8x8-s1": ["--solver", "spectral", "--nodes", "8"],
    "spectral-4x8-s3": ["--solver", "spectral", "--nodes", "4", "--slots-per-gpu", "3"],
    "spectral-8x8-s2": ["--solver", "spectral", "--nodes", "8", "--slots-per-gpu", "2"],
    "auto-4x8-s1": ["--solver", "auto", "--nodes", "4", "--time-limit", "2"],
    "auto-8x8-s2": ["--solver", "auto", "--nodes", "8", "--slots-per-gpu", "2", "--time-limit", "2"],
    "eplb-4x8-s2": ["--solver", "eplb", "--nodes", "4", "--slots-per-gpu", "2"],
    "eplb-8x8-s1": ["--solver", "eplb", "--nodes", "8"],
    "spectral-4x8-exclude": ["--solver", "spectral", "--nodes", "4", "--exclude-gpus", "5,17"],
    "spectral-8x8-s2-exclude": ["--solver", "spectral", "--nodes", "8", "--slots-per-gpu", "2",
                                "--exclude-gpus", "3"],
    "eplb-4x8-s3-exclude": ["--solver", "eplb", "--nodes", "4", "--slots-per-gpu", "3",
                            "--exclude-gpus", "5"],
    "spectral-4x8-groups": ["--solver", "spectral", "--nodes", "4", "--keep-groups",
                            "--model", str(GROUPED)],
    "auto-4x8-s2-groups": ["--solver", "auto", "--nodes", "4", "--slots-per-gpu", "2",
                           "--keep-groups", "--model", str(GROUPED), "--time-limit", "2"],
    "eplb-4x8-s2-groups": ["--solver", "eplb", "--nodes", "4", "--slots-per-gpu", "2",
                           "--model", str(GROUPED)],
    "spectral-4x8-maxnodes": ["--solver", "spectral", "--nodes", "4", "--max-nodes", "3",
                              "--max-nodes-coverage", "0.9"],
    "spectral-8x8-maxnodes": ["--solver", "spectral", "--nodes", "8", "--max-nodes", "3",
                              "--max-nodes-coverage", "0.6"],
}


def phy2log_digest(path: Path) -> str:
    """sha256 of a placement file's phy2log as little-endian int64, row-major."""
    rows = json.loads(path.read_text())["phy2log"]
    return hashlib.sha256(np.asarray(rows, dtype="<i8").tobytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_placement_matches_golden(case, cli, tmp_path):
    out = tmp_path / "p.json"
    result = cli("place", "--trace", SAMPLE, "--out", out, "--quiet", *CASES[case])
    assert result.code == 0, result.err
    digest = phy2log_digest(out)
    case += "+mtkahypar" if case.startswith("auto") and mtk.installed() else ""
    golden = json.loads(HASHES.read_text()) if HASHES.exists() else {}
    if os.environ.get("PLACER_UPDATE_GOLDEN"):
        golden[case] = digest
        HASHES.write_text(json.dumps(dict(sorted(golden.items())), indent=1) + "\n")
    assert golden.get(case) == digest, f"{case}: placement changed (golden {golden.get(case)})"
