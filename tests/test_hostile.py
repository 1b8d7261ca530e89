"""Every file of the hostile corpus (tests/hostile) gives one line naming it, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from placer.bundled import sample_trace

CORPUS = Path(__file__).resolve().parent / "hostile"
CASES = sorted(p for folder in (CORPUS, CORPUS / "fuzz") for p in folder.iterdir() if "__" in p.name)
SAMPLE = str(sample_trace("test"))


def command(path: Path, out: Path) -> list[str]:
    kind = path.name.split("__")[0]
    if kind == "stats":
        return ["stats", str(path)]
    if kind == "import-esft":
        return ["import", "esft", str(path), "--out", str(out)]
    if kind == "place":
        return ["place", "--trace", str(path), "--solver", "eplb", "--out", str(out)]
    if kind == "evaluate":
        return ["evaluate", "--trace", SAMPLE, "--placement", str(path), "--nodes", "1"]
    if kind == "topology":
        return ["evaluate", "--trace", SAMPLE, "--placement", "contiguous", "--topology", str(path)]
    if path.stem.endswith("cannot_fit"):
        return ["place", "--trace", SAMPLE, "--solver", "eplb", "--model", str(path), "--out", str(out)]
    return ["evaluate", "--trace", SAMPLE, "--placement", "contiguous", "--model", str(path)]


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_hostile_input_is_refused_clearly(path, tmp_path, cli):
    if path.suffix == ".pt":
        pytest.importorskip("torch", reason="SGLang dumps need the sglang extra (torch)")
    result = cli(*command(path, tmp_path / "out.json"))
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and result.err.count("\n") == 1, result.err
    named = path.name if not path.stem.endswith("cannot_fit") else "huge"
    assert named in result.err, result.err
    assert not (tmp_path / "out.json").exists()


def test_corpus_covers_every_input_kind():
    kinds = {p.name.split("__")[0] for p in CASES}
    suffixes = {p.suffix for p in CASES}
    assert kinds == {"stats", "place", "evaluate", "topology", "model", "import-esft"}
    assert {".npz", ".npy", ".jsonl", ".pt", ".json", ".toml", ""} <= suffixes
