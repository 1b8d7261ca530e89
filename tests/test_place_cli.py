"""`placer place` end to end on the embedded sample: files, formats, determinism, held-out replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import invoke

from placer import load_model
from placer.bundled import sample_trace
from placer.formats.placement_io import read_placement

TRAIN, TEST = str(sample_trace("train")), str(sample_trace("test"))


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    """Spectral placements of the sample with 1 and 2 worker processes."""
    folder = tmp_path_factory.mktemp("place")
    outputs = {}
    for workers in (1, 2):
        out = folder / f"w{workers}.json"
        code = invoke("place", "--trace", TRAIN, "--solver", "spectral", "--out", out, "--workers", workers)
        assert code == 0
        outputs[workers] = out
    return outputs


def test_same_inputs_give_byte_identical_files_for_any_workers(placed):
    assert placed[1].read_bytes() == placed[2].read_bytes()


def test_placement_file_carries_solver_facts_and_validates(placed, cli):
    doc = json.loads(placed[1].read_text())
    assert doc["solver"]["name"] == "spectral" and "gap" in doc["solver"]
    assert doc["trace"]["tokens"] == 4112 and len(doc["trace"]["sha256"]) == 64
    assert "wall" not in json.dumps(doc)
    result = cli("validate", placed[1], "--nodes", "4", "--model", "deepseek-v2-lite", "--json")
    assert result.code == 0, result.err


def test_heldout_replay_beats_contiguous(tmp_path, cli):
    result = cli("place", "--trace", TRAIN, "--solver", "spectral", "--out", tmp_path / "p.json",
                 "--evaluate", TEST, "--json")
    assert result.code == 0, result.err
    evaluation = result.json()["evaluation"]
    assert set(evaluation) == {"contiguous", "round-robin", "random", "placer spectral"}
    ratio = evaluation["placer spectral"]["internode_tokens_dedup"] / evaluation["contiguous"]["internode_tokens_dedup"]
    assert ratio < 0.8


def test_sglang_format_has_one_key_and_dense_rows(tmp_path, cli):
    out = tmp_path / "sglang.json"
    result = cli("place", "--trace", TRAIN, "--solver", "contiguous", "--model", "deepseek-v2-lite",
                 "--out", out, "--format", "sglang")
    assert result.code == 0, result.err
    doc = json.loads(out.read_text())
    assert list(doc) == ["physical_to_logical_map"] and len(doc["physical_to_logical_map"]) == 27
    back = read_placement(out, num_gpus=32, gpus_per_node=8, model=load_model("deepseek-v2-lite"))
    assert back.num_layers == 26


def test_out_may_not_overwrite_the_trace(tmp_path, cli):
    trace = tmp_path / "t.npz"
    original = Path(TRAIN).read_bytes()
    trace.write_bytes(original)
    result = cli("place", "--trace", trace, "--solver", "contiguous", "--out", trace)
    assert result.code == 2 and "would overwrite the input" in result.err
    assert trace.read_bytes() == original


def test_infeasible_balance_is_explained(tmp_path, cli):
    result = cli("place", "--trace", TRAIN, "--solver", "spectral", "--balance", "0", "--nodes", "8",
                 "--out", tmp_path / "p.json")
    assert result.code == 2 and "balance" in result.err
    assert not (tmp_path / "p.json").exists()


def test_current_placement_reduces_moves(tmp_path, cli):
    assert cli("place", "--trace", TRAIN, "--solver", "contiguous", "--out", tmp_path / "now.json").code == 0
    result = cli("place", "--trace", TRAIN, "--solver", "spectral", "--out", tmp_path / "next.json",
                 "--current", tmp_path / "now.json", "--model", "deepseek-v2-lite", "--json")
    assert result.code == 0, result.err
    moves = result.json()["solve"]["moves"]
    assert moves["experts_moved"] < moves["without_relabel"]
    assert moves["bytes_moved"] == moves["experts_moved"] * load_model("deepseek-v2-lite").expert_param_bytes


def test_slots_respect_gpu_memory(tmp_path, cli):
    # DeepSeek-V2-Lite experts: 3 x 2048 x 1408 x 2 bytes x 26 layers = 450 MB per slot; 80 GB GPUs.
    too_small = cli("place", "--trace", TRAIN, "--solver", "spectral", "--model", "deepseek-v2-lite",
                    "--nodes", "1", "--gpus-per-node", "1", "--memory-reserve", "0.8", "--out", tmp_path / "p.json")
    assert too_small.code == 2 and "GB of GPU memory is free for experts" in too_small.err
    filled = cli("place", "--trace", TRAIN, "--solver", "eplb", "--model", "deepseek-v2-lite",
                 "--slots-per-gpu", "memory", "--memory-reserve", "0.95", "--out", tmp_path / "m.json")
    assert filled.code == 0, filled.err
    placement = read_placement(tmp_path / "m.json")
    assert placement.slots_per_gpu == 8  # floor(4 GB / 450 MB)
    bad = cli("place", "--trace", TRAIN, "--slots-per-gpu", "lots", "--out", tmp_path / "x.json")
    assert bad.code == 2 and "positive integer or 'memory'" in bad.err


def test_max_nets_option(tmp_path, cli):
    out = tmp_path / "capped.json"
    result = cli("place", "--trace", TRAIN, "--solver", "spectral", "--out", out, "--max-nets", "50")
    assert result.code == 0 and "streaming cap kept at most 50" in result.out
    assert cli("place", "--trace", TRAIN, "--solver", "spectral", "--out", tmp_path / "all.json",
               "--max-nets", "all").code == 0
    bad = cli("place", "--trace", TRAIN, "--out", tmp_path / "x.json", "--max-nets", "-3")
    assert bad.code == 2 and "--max-nets" in bad.err + bad.out and "Traceback" not in bad.err


@pytest.mark.parametrize("flags, problem_fields, solver", [
    ([], {}, "spectral"),
    (["--slots-per-gpu", "3", "--exclude-gpus", "5"], {"slots_per_gpu": 3, "exclude_gpus": (5,)}, "spectral"),
    (["--max-nodes", "3", "--max-nodes-coverage", "0.6"], {"max_nodes": 3, "max_nodes_coverage": 0.6}, "spectral"),
    ([], {}, "eplb"),
    ([], {}, "round-robin"),
])
def test_python_api_and_cli_write_the_same_file(cli, tmp_path, flags, problem_fields, solver):
    """placer.place() and `placer place` are one workflow: byte-identical placement files."""
    import placer

    trace = sample_trace("train")
    by_cli = tmp_path / "cli.json"
    result = cli("place", "--trace", trace, "--nodes", "4", "--solver", solver, "--time-limit", "5",
                 "--out", by_cli, "--quiet", *flags)
    assert result.code == 0, result.err
    topology = placer.load_topology("h100-dgx").resized(4, 8)
    placed = placer.place(trace, placer.PlacementProblem(topology, **problem_fields),
                          placer.SolverSettings(solver, time_limit=5))
    by_api = tmp_path / "api.json"
    placer.write_placement(placed.placement, by_api)
    assert by_api.read_bytes() == by_cli.read_bytes()
    assert json.loads(by_api.read_text())["model"]["name"] == "deepseek-v2-lite"


def test_replicas_packed_and_replayed_under_the_lp_rule(tmp_path, cli):
    out = tmp_path / "lp.json"
    result = cli("place", "--trace", TRAIN, "--solver", "spectral", "--out", out, "--slots-per-gpu", "3",
                 "--rule", "lp", "--lp-batch", "512", "--evaluate", TEST, "--json")
    assert result.code == 0, result.err
    assert any("lp rule" in line for line in result.json()["solve"]["messages"])
    replay = cli("evaluate", "--trace", TEST, "--placement", out, "--rule", "lp", "--lp-batch", "512", "--json")
    assert replay.code == 0, replay.err
    bad = cli("place", "--trace", TRAIN, "--solver", "spectral", "--out", tmp_path / "bad.json", "--lp-batch", "0")
    assert bad.code == 2 and "--lp-batch" in bad.err and len(bad.err.strip().splitlines()) == 1


def test_alpha_flag_reaches_the_solver_and_is_recorded(tmp_path, cli):
    objective = {}
    for alpha in (None, "0"):
        out = tmp_path / f"a{alpha}.json"
        flags = () if alpha is None else ("--alpha", alpha)
        result = cli("place", "--trace", TRAIN, "--solver", "spectral", "--out", out, *flags)
        assert result.code == 0, result.err
        doc = json.loads(out.read_text())
        assert doc["solver"].get("alpha") == (None if alpha is None else 0.0)
        objective[alpha] = doc["solver"]["objective"]
    assert objective["0"] < objective[None]  # the default (2 at 4 nodes) buys NIC balance with cut
    for solver, alpha in (("spectral", "-1"), ("eplb", "0"), ("contiguous", "1")):
        result = cli("place", "--trace", TRAIN, "--solver", solver, "--out", tmp_path / "bad.json", "--alpha", alpha)
        assert result.code != 0 and "--alpha" in result.err and not (tmp_path / "bad.json").exists(), solver
