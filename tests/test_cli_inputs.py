"""Engine formats through the CLI: imports, counts-only placement, clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from placer.bundled import sample_trace
from placer.instances import instances_dir
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
    ok = cli(
        "place",
        "--trace",
        tmp_path / "counts.npy",
        "--solver",
        "eplb",
        "--slots-per-gpu",
        "3",
        "--out",
        tmp_path / "e.json",
        "--evaluate",
        sample_trace("test"),
        "--json",
    )
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
        result = cli(
            "place",
            "--trace",
            sample_trace("train"),
            "--solver",
            "round-robin",
            "--model",
            "deepseek-v2-lite",
            "--out",
            out,
            "--format",
            fmt,
        )
        assert result.code == 0, (fmt, result.err)
        assert out.stat().st_size > 0


# ---------------------------------------------------------------- the CLI boundary (issue 14)

SAMPLE = str(sample_trace("train"))


def one_line_refusal(result, *fragments: str) -> None:
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and result.err.count("\n") == 1, result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


def test_out_may_not_be_any_input(tmp_path, cli):
    """--out naming --current, --model, --topology, --evaluate or a file inside the --trace folder."""
    first = cli("place", "--trace", SAMPLE, "--solver", "contiguous", "--out", tmp_path / "cur.json")
    assert first.code == 0, first.err
    kept = (tmp_path / "cur.json").read_bytes()
    shutil.copy(Path(instances_dir()) / "models" / "deepseek-v2-lite.toml", tmp_path / "m.toml")
    shutil.copy(Path(instances_dir()) / "topologies" / "h100-dgx.toml", tmp_path / "t.toml")
    (tmp_path / "sh").mkdir()
    shutil.copy(SAMPLE, tmp_path / "sh" / "a.npz")
    cases = {
        "cur.json": ["--current", tmp_path / "cur.json"],
        "m.toml": ["--model", tmp_path / "m.toml"],
        "t.toml": ["--topology", tmp_path / "t.toml"],
        "sh/z.npz": ["--trace", tmp_path / "sh"],
        "h.npz": ["--evaluate", tmp_path / "sh" / "a.npz"],
    }
    for out, extra in cases.items():
        args = ["place", "--solver", "contiguous", "--out", tmp_path / out, *extra]
        if "--trace" not in extra:
            args += ["--trace", SAMPLE]
        if out == "h.npz":
            args[args.index("--out") + 1] = tmp_path / "sh" / "a.npz"
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        one_line_refusal(cli(*args), "would overwrite the input")
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before, out
    assert (tmp_path / "cur.json").read_bytes() == kept


def test_every_input_is_checked_before_work_or_write(tmp_path, cli):
    (tmp_path / "keep.json").write_text("keep")
    result = cli(
        "place",
        "--trace",
        SAMPLE,
        "--solver",
        "auto",
        "--evaluate",
        tmp_path / "typo.npz",
        "--out",
        tmp_path / "keep.json",
    )
    one_line_refusal(result, "typo.npz")
    assert (tmp_path / "keep.json").read_text() == "keep"
    other = tmp_path / "other.npz"
    np.savez(other, topk_ids=TRACE.topk_ids[:20, :3])  # 3 layers, the placement has 26
    one_line_refusal(
        cli("place", "--trace", SAMPLE, "--solver", "auto", "--evaluate", other, "--out", tmp_path / "keep.json"),
        "other.npz",
        "--evaluate",
        "3 layers",
    )
    assert (tmp_path / "keep.json").read_text() == "keep"


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--balance", "nan"], "--balance"),
        (["--balance", "-1"], "--balance"),
        (["--balance", "inf"], "--balance"),
        (["--time-limit", "inf"], "--time-limit"),
        (["--time-limit", "nan"], "--time-limit"),
        (["--time-limit", "0"], "--time-limit"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**64)], "--seed"),
        (["--workers", "0"], "--workers"),
        (["--nodes", "1000000"], "--nodes"),
        (["--nodes", "²"], "--nodes"),
        (["--gpus-per-node", "0"], "--gpus-per-node"),
        (["--slots-per-gpu", "²"], "--slots-per-gpu"),
        (["--slots-per-gpu", "100000000"], "--slots-per-gpu"),
        (["--max-nets", "²"], "--max-nets"),
        (["--max-nodes", "0"], "--max-nodes"),
        (["--max-nodes-coverage", "nan", "--max-nodes", "2"], "--max-nodes-coverage"),
        (["--memory-reserve", "nan"], "--memory-reserve"),
        (["--exclude-gpus", "1,x"], "--exclude-gpus"),
        (["--trace", ""], "--trace"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_numbers_and_usage_are_one_line(flags, named, tmp_path, cli):
    args = ["place", "--solver", "spectral", "--out", tmp_path / "p.json", *flags]
    if "--trace" not in flags:
        args += ["--trace", SAMPLE]
    one_line_refusal(cli(*args), named)
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    "args, named",
    [
        (["calc", "--dispatch-bytes", "-1"], "--dispatch-bytes"),
        (["calc", "--combine-bytes", "nan"], "--combine-bytes"),
        (["evaluate", "--trace", SAMPLE, "--placement", "contiguous", "--max-nodes", "0"], "--max-nodes"),
        (["evaluate", "--trace", SAMPLE, "--placement", "contiguous", "--nodes", "-3"], "--nodes"),
        (["stats"], "trace"),
        (["evaluate", "--trace", SAMPLE, "--placement", ""], "empty path"),
        (["report", "--trace", SAMPLE, "--placement", "contiguous", "--out", ""], "--out"),
        (["synth", "--preset", "esft", "--tokens", str(10**15), "--out", "never.npz"], "--tokens"),
        (["synth", "--preset", "deepseek-v3", "--tokens", str(10**8), "--out", "never.npz"], "2 GiB"),
        (["synth", "--preset", "esft", "--tokens", "100", "--shard-tokens", "0", "--out", "never"], "--shard-tokens"),
        (["nonsense-command"], "nonsense-command"),
    ],
)
def test_other_commands_refuse_bad_numbers_on_one_line(args, named, cli):
    one_line_refusal(cli(*args), named)


def test_validate_needs_the_model_to_check_an_sglang_map(tmp_path, cli):
    rows = [list(range(63)) + [0]] * 26  # expert 63 is never placed; 64 slots on 8 GPUs
    (tmp_path / "s.json").write_text(json.dumps({"physical_to_logical_map": rows}))
    one_line_refusal(cli("validate", tmp_path / "s.json", "--nodes", "1", "--gpus-per-node", "8"), "--model")
    one_line_refusal(
        cli("validate", tmp_path / "s.json", "--nodes", "1", "--gpus-per-node", "8", "--model", "deepseek-v2-lite"),
        "expert 63 is in no slot",
    )
    replay = cli(
        "evaluate", "--trace", SAMPLE, "--placement", tmp_path / "s.json", "--nodes", "1", "--gpus-per-node", "8"
    )
    one_line_refusal(replay, "expert 63 is in no slot")


def test_json_output_is_strict_json(capsys):
    from placer.cli import _print_json

    _print_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_a_one_shard_folder_is_a_trace_everywhere(tmp_path, cli):
    (tmp_path / "one").mkdir()
    shutil.copy(SAMPLE, tmp_path / "one" / "only.npz")
    assert cli("stats", tmp_path / "one").code == 0
    placed = cli("place", "--trace", tmp_path / "one", "--solver", "contiguous", "--out", tmp_path / "p.json")
    assert placed.code == 0, placed.err
    replay = cli("evaluate", "--trace", tmp_path / "one", "--placement", tmp_path / "p.json")
    assert replay.code == 0, replay.err
