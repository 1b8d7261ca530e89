"""Every file of the hostile corpus (tests/hostile) gives one line naming it, exit code 2, no traceback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
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


# ---------------------------------------------------------------- data loss, storage, memory


def test_atomic_output_refuses_special_targets_cleans_stale_temporaries_and_reports_full_disks(
        tmp_path, monkeypatch):
    from placer import atomic
    from placer.errors import InputError

    target = tmp_path / "p.json"
    target.write_text("old")
    dead = tmp_path / ".p.json.999999999.abc.tmp"  # left by a writer killed with -9 (no such pid)
    alive = tmp_path / f".p.json.{os.getpid()}.xyz.tmp"  # a concurrent writer still running
    dead.write_text("stale")
    alive.write_text("in progress")
    atomic.write_text_atomic(target, "new")
    assert target.read_text() == "new" and not dead.exists() and alive.exists()
    long_name = tmp_path / ("n" * 255)  # the longest name a file system allows
    atomic.write_text_atomic(long_name, "x")
    assert long_name.read_text() == "x"

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match="No space left on device") as info:
        atomic.write_text_atomic(target, "newer")
    assert "\n" not in str(info.value) and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, alive.name, long_name.name])


def test_synth_overwrite_keeps_the_old_set_until_the_new_one_is_complete(tmp_path, monkeypatch):
    from placer.errors import InputError
    from placer.studies import synth
    from placer.trace import MANIFEST, TraceSource, trace_digest

    params = synth.preset("esft")
    out = tmp_path / "sh"
    synth.write_trace(params, 3000, out, shard_tokens=1000)
    (out / "README").write_text("mine")
    digest = trace_digest(TraceSource(out))
    real_save, calls = synth.save_trace, []

    def interrupted_save(trace, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(trace, path)

    monkeypatch.setattr(synth, "save_trace", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        synth.write_trace(params, 6000, out, seed=1, shard_tokens=1000, overwrite=True)
    monkeypatch.undo()
    assert trace_digest(TraceSource(out)) == digest  # the old set, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sh"]  # no staging folder left
    synth.write_trace(params, 6000, out, seed=1, shard_tokens=1000, overwrite=True)
    assert TraceSource(out).num_tokens == 6000 and (out / "README").read_text() == "mine"
    (out / "shard-00002.npz").unlink()  # a shard lost afterwards: the manifest notices
    with pytest.raises(InputError, match="incomplete shard set"):
        TraceSource(out)
    assert (out / MANIFEST).exists()


def test_placement_depends_on_tokens_not_on_their_storage(tmp_path, monkeypatch, cli):
    """The same tokens as one .npz or as shards cut anywhere give the same placement (summaries
    run over fixed token blocks; a small block size makes this trace span several)."""
    from placer.trace import load_trace, save_trace, validate_arrays

    monkeypatch.setattr("placer.trace.BLOCK_TOKENS", 700)
    whole = load_trace(SAMPLE)
    (tmp_path / "sh").mkdir()
    for index, (lo, hi) in enumerate([(0, 123), (123, 1500), (1500, whole.num_tokens)]):
        part = validate_arrays("p", {"topk_ids": whole.topk_ids[lo:hi]}, whole.num_experts)
        save_trace(part, tmp_path / "sh" / f"{index}.npz")
    docs = []
    for trace in (SAMPLE, tmp_path / "sh"):
        out = tmp_path / f"p{len(docs)}.json"
        result = cli("place", "--trace", trace, "--solver", "spectral", "--max-nets", "40", "--out", out)
        assert result.code == 0, result.err
        docs.append(json.loads(out.read_text()))
    assert docs[0]["phy2log"] == docs[1]["phy2log"]
    assert docs[0]["trace"]["sha256"] == docs[1]["trace"]["sha256"]


def _zip_with_member(path: Path, name: str, size: int, ids: np.ndarray | None) -> None:
    """An .npz holding ``ids`` as topk_ids (if given) and a member ``name`` of ``size`` zero
    bytes, written in pieces (never whole in memory)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if ids is not None:
            buffer = io.BytesIO()
            np.save(buffer, ids)
            archive.writestr("topk_ids.npy", buffer.getvalue())
        with archive.open(name, "w", force_zip64=True) as member:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (size,)})
            member.write(header.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                member.write(chunk)


def test_npz_members_are_read_lazily_and_bombs_refused(tmp_path):
    """A 256 MiB member placer ignores is never decompressed; a topk_ids member that inflates
    ~1000x is refused before it is read (both bounded to a few MB of Python allocations)."""
    from placer.errors import InputError
    from placer.trace import load_trace

    ids = np.array([[[0, 1]], [[2, 3]]], dtype=np.int16)
    _zip_with_member(tmp_path / "extra.npz", "ignored.npy", 256 << 20, ids)
    _zip_with_member(tmp_path / "bomb.npz", "topk_ids.npy", 256 << 20, None)
    tracemalloc.start()
    try:
        assert load_trace(tmp_path / "extra.npz").num_tokens == 2
        with pytest.raises(InputError, match="decompression bomb"):
            load_trace(tmp_path / "bomb.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak
