"""Engine formats through the CLI: imports, counts-only placement, clear refusals."""

from __future__ import annotations

import numpy as np

from placer.bundled import sample_trace
from placer.trace import load_trace

TRACE = load_trace(sample_trace("train"))
LOADS = np.stack([np.bincount(TRACE.topk_ids[:, layer].ravel(), minlength=64) for layer in range(26)])


def test_import_vllm_then_stats(tmp_path, cli):
    np.save(tmp_path / "req.npy", TRACE.topk_ids[:50].astype(np.int16))
    result = cli("import", "vllm", tmp_path / "req.npy", "--out", tmp_path / "t.npz", "--json")
    assert result.code == 0, result.err
    assert result.json()["tokens"] == 50
    assert np.array_equal(load_trace(tmp_path / "t.npz").topk_ids, TRACE.topk_ids[:50])
    stats = cli("stats", tmp_path / "req.npy", "--json")
    assert stats.code == 0 and stats.json()["tokens"] == 50


def test_import_refuses_the_wrong_output_kind(tmp_path, cli):
    np.save(tmp_path / "req.npy", TRACE.topk_ids[:50].astype(np.int16))
    result = cli("import", "vllm", tmp_path / "req.npy", "--out", tmp_path / "t.npy")
    assert result.code == 2 and "write a .npz file" in result.err


def test_counts_place_with_eplb_only(tmp_path, cli):
    np.save(tmp_path / "counts.npy", LOADS)
    ok = cli("place", "--trace", tmp_path / "counts.npy", "--solver", "eplb", "--slots-per-gpu", "3",
             "--out", tmp_path / "e.json", "--evaluate", sample_trace("test"), "--json")
    assert ok.code == 0, ok.err
    evaluation = ok.json()["evaluation"]
    assert evaluation["placer eplb"]["gpu_peak_load"] < evaluation["contiguous"]["gpu_peak_load"]
    refused = cli("place", "--trace", tmp_path / "counts.npy", "--solver", "spectral", "--out", tmp_path / "s.json")
    assert refused.code == 2 and "carry no co-activation" in refused.err
    replay = cli("evaluate", "--trace", tmp_path / "counts.npy", "--placement", "contiguous")
    assert replay.code == 2 and "expert counts only" in replay.err


def test_every_export_format_is_written(tmp_path, cli):
    for fmt in ("placer", "sglang", "trtllm", "eplb", "permutation"):
        out = tmp_path / f"p.{fmt}"
        result = cli("place", "--trace", sample_trace("train"), "--solver", "round-robin",
                     "--model", "deepseek-v2-lite", "--out", out, "--format", fmt)
        assert result.code == 0, (fmt, result.err)
        assert out.stat().st_size > 0
