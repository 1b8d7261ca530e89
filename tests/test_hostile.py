"""Every file of the hostile corpus (tests/hostile) gives one line naming it, exit code 2, no traceback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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


# ---------------------------------------------------------------- special files (made per run)


def _fifo(folder: Path, name: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _shards_with_fifo(folder: Path) -> Path:
    shards = folder / "shards"
    shards.mkdir()
    shutil.copy(SAMPLE, shards / "000.npz")
    _fifo(shards, "001.npz")
    return shards


SPECIAL = {  # name -> (command given the scratch folder, what the one line must name)
    "trace-fifo": (lambda d: ["stats", _fifo(d, "t.npz")], "FIFO"),
    "trace-dev-zero": (lambda d: ["stats", "/dev/zero"], "/dev/zero"),
    "trace-empty-path": (lambda d: ["stats", ""], "empty path"),
    "shard-fifo": (lambda d: ["stats", _shards_with_fifo(d)], "FIFO"),
    "megatron-fifo": (lambda d: ["stats", _fifo(d, "router_trace_rank0.jsonl")], "FIFO"),
    "vllm-fifo": (lambda d: ["stats", _fifo(d, "r.npy")], "FIFO"),
    "esft-fifo": (lambda d: ["import", "esft", (_fifo(d, "e/intent/expert_weights_1.txt"), d / "e")[1],
                             "--out", d / "o.npz"], "FIFO"),
    "placement-fifo": (lambda d: ["evaluate", "--trace", SAMPLE, "--placement", _fifo(d, "p.json")], "FIFO"),
    "placement-folder": (lambda d: ["evaluate", "--trace", SAMPLE, "--placement", d], "directory"),
    "placement-dev-zero": (lambda d: ["validate", "/dev/zero"], "device"),
    "topology-fifo": (lambda d: ["evaluate", "--trace", SAMPLE, "--placement", "contiguous",
                                 "--topology", _fifo(d, "t.toml")], "FIFO"),
    "model-fifo": (lambda d: ["evaluate", "--trace", SAMPLE, "--placement", "contiguous",
                              "--model", _fifo(d, "m.toml")], "FIFO"),
    "current-fifo": (lambda d: ["place", "--trace", SAMPLE, "--solver", "contiguous", "--current",
                                _fifo(d, "c.json"), "--out", d / "p.json"], "FIFO"),
    "heldout-fifo": (lambda d: ["place", "--trace", SAMPLE, "--solver", "contiguous", "--evaluate",
                                _fifo(d, "h.npz"), "--out", d / "p.json"], "FIFO"),
    "out-device": (lambda d: ["place", "--trace", SAMPLE, "--solver", "contiguous", "--out", "/dev/null"],
                   "/dev/null"),
    "out-folder": (lambda d: ["place", "--trace", SAMPLE, "--solver", "contiguous", "--out", d], "directory"),
    "out-fifo": (lambda d: ["place", "--trace", SAMPLE, "--solver", "contiguous", "--out",
                            _fifo(d, "o.json")], "FIFO"),
    "out-under-a-file": (lambda d: ["place", "--trace", SAMPLE, "--solver", "contiguous", "--out",
                                    d / "p.json" / "x.json"], "cannot write"),
}


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail (not hang) if the block runs longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"hostile input not answered within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_special_files_are_refused_without_hanging(name, tmp_path, cli):
    """FIFOs, devices and folders where a regular file is expected (inputs and outputs): one
    line, exit 2, within 10 s, nothing written."""
    make, named = SPECIAL[name]
    if name == "out-under-a-file":
        (tmp_path / "p.json").write_text("keep")
    args = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with _deadline(10):
        result = cli(*args)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and result.err.count("\n") == 1, result.err
    assert named in result.err, result.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if name == "out-under-a-file":
        assert (tmp_path / "p.json").read_text() == "keep"
