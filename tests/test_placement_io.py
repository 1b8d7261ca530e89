"""Placement files: round trip, schema, SGLang input, and clear rejections."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from placer.bundled import sample_trace
from placer.errors import InputError
from placer.formats.placement_io import (
    check_topology,
    dumps_placement,
    placement_schema,
    read_placement,
    write_placement,
)
from placer.instances import load_model, load_topology
from placer.placement import baseline, contiguous_gpus


def test_round_trip_and_schema(tmp_path):
    placement = baseline("random", 3, 10, 4, 2)
    write_placement(placement, tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    jsonschema.validate(doc, placement_schema())
    back = read_placement(tmp_path / "p.json")
    assert np.array_equal(back.phy2log, placement.phy2log)
    assert dumps_placement(back) == dumps_placement(placement)


def test_uneven_counts_contiguous_blocks():
    assert np.bincount(contiguous_gpus(60, 8)).tolist() == [8, 8, 8, 8, 7, 7, 7, 7]
    placement = baseline("contiguous", 1, 60, 8, 8)
    assert placement.slots_per_gpu == 8 and (placement.phy2log == -1).sum() == 4


def test_sglang_file_drops_dense_rows(tmp_path):
    model = load_model("deepseek-v2-lite")  # 1 dense layer + 26 MoE layers, 64 experts
    rows = [list(range(64))] * 27
    (tmp_path / "s.json").write_text(json.dumps({"physical_to_logical_map": rows}))
    placement = read_placement(tmp_path / "s.json", num_gpus=8, gpus_per_node=8, model=model)
    assert placement.num_layers == 26 and placement.slots_per_gpu == 8
    assert placement.expert_gpu()[0, 9] == 1


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"physical_to_logical_map": [[0, 2, 2, 3]]}, "layer 0: expert 1 is in no slot"),
        ({"physical_to_logical_map": [[0, 1, 2]]}, "3 slots per layer do not divide evenly over 2 GPUs"),
        ({"physical_to_logical_map": [[0, 1], [0]]}, "rows differ in length"),
        ({"physical_to_logical_map": [[0, "x"]]}, "expected integer expert ids"),
        ({"format": "placer-placement", "version": 2}, "version: 2 is not supported"),
        ({"something": 1}, "unrecognised placement file"),
    ],
)
def test_bad_files_are_rejected_clearly(tmp_path, doc, expected):
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=expected):
        read_placement(tmp_path / "bad.json", num_gpus=2, gpus_per_node=2)


def test_missing_expert_in_native_file(tmp_path):
    doc = json.loads(dumps_placement(baseline("contiguous", 1, 4, 2, 2)))
    doc["phy2log"][0][3] = -1
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="expert 3 is in no slot"):
        read_placement(tmp_path / "p.json")


def test_invalid_json_names_line(tmp_path):
    (tmp_path / "p.json").write_text('{"format": \n')
    with pytest.raises(InputError, match="not valid JSON \\(line 2"):
        read_placement(tmp_path / "p.json")


def test_cli_validate_and_evaluate_a_file(tmp_path, cli):
    write_placement(baseline("round-robin", 26, 64, 32, 8), tmp_path / "rr.json")
    result = cli("validate", tmp_path / "rr.json", "--nodes", "4", "--model", "deepseek-v2-lite", "--json")
    assert result.code == 0, result.err
    assert result.json()["valid"] is True
    wrong = cli("validate", tmp_path / "rr.json", "--nodes", "2")
    assert wrong.code == 2 and "num_gpus" in wrong.err
    both = cli("evaluate", "--trace", sample_trace("test"), "--placement", tmp_path / "rr.json",
               "--placement", "round-robin", "--nodes", "4", "--json")
    assert both.code == 0, both.err
    results = both.json()["results"]
    assert results["rr.json"]["internode_tokens_dedup"] == results["round-robin"]["internode_tokens_dedup"]


def test_replicas_are_read_back(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"physical_to_logical_map": [[0, 1, 1, 2]]}))
    placement = read_placement(tmp_path / "r.json", num_gpus=2, gpus_per_node=2)
    assert placement.expert_copies().tolist() == [[1, 2, 1]]


def test_schema_command_prints_the_schema_with_or_without_json(cli):
    plain, flagged = cli("schema"), cli("schema", "--json")
    assert plain.code == flagged.code == 0
    assert plain.json() == flagged.json() == placement_schema()


def test_a_placement_for_another_shape_names_the_file_and_the_fitting_flags():
    placement = baseline("contiguous", 2, 64, 64, 8)
    topology = load_topology("h100-dgx").resized(4, 8)
    with pytest.raises(InputError, match=r"^p\.json: num_gpus: placement is for 8 nodes x 8 GPUs, .* has 4 x 8; "
                                         r".*\(--nodes 8\)$"):
        check_topology("p.json", placement, topology)
    with pytest.raises(InputError, match=r"\(--nodes 16 --gpus-per-node 4\)$"):
        check_topology("p.json", baseline("contiguous", 2, 64, 64, 4), topology)
    check_topology("p.json", baseline("contiguous", 2, 64, 32, 8), topology)


# ---------------------------------------------------------------- the cluster to replay on


def _sglang_map(path, gpus: int, slots: int) -> str:
    rows = [list(range(gpus * slots))]  # 64 experts on gpus x slots
    path.write_text(json.dumps({"physical_to_logical_map": rows}))
    return str(path)


def test_replay_topology_rule(tmp_path):
    from placer.formats.placement_io import replay_topology
    from placer.instances import load_topology

    dgx = load_topology("h100-dgx")
    solved = replace_topology(baseline("random", 1, 64, 64, 8), dgx.resized(8, 8))
    write_placement(solved, tmp_path / "p.json")
    sglang = _sglang_map(tmp_path / "s.json", 64, 1)
    # a placer file records its cluster: replayed on it unless one is stated
    assert replay_topology([str(tmp_path / "p.json")]).num_gpus == 64
    assert replay_topology([str(tmp_path / "p.json")], nodes=4).num_gpus == 32  # stated wins
    # an SGLang map records none: never the default silently
    with pytest.raises(InputError, match="records no cluster"):
        replay_topology([sglang])
    with pytest.raises(InputError, match="records no cluster"):
        replay_topology([sglang], nodes=8)
    assert replay_topology([sglang], nodes=8, gpus_per_node=8).num_gpus == 64
    assert replay_topology([sglang], topology="h100-dgx").num_gpus == dgx.num_gpus
    assert replay_topology(["contiguous"]) == dgx
    other = replace_topology(baseline("random", 1, 64, 32, 8), dgx.resized(4, 8))
    write_placement(other, tmp_path / "q.json")
    with pytest.raises(InputError, match="record different clusters"):
        replay_topology([str(tmp_path / "p.json"), str(tmp_path / "q.json")])


def replace_topology(placement, topology):
    from dataclasses import replace

    return replace(placement, metadata={**placement.metadata, "topology": topology.to_dict()})


def test_cli_refuses_an_sglang_map_on_an_unstated_cluster(tmp_path, cli):
    trace = tmp_path / "t.npz"
    from conftest import random_trace

    from placer.trace import save_trace

    save_trace(random_trace(200, 1, 64, 3, 1), trace)  # top-3: matches no model preset
    sglang = _sglang_map(tmp_path / "s.json", 64, 1)
    for args in (("validate", sglang), ("evaluate", "--trace", trace, "--placement", sglang)):
        silent = cli(*args)
        assert silent.code == 2 and "records no cluster" in silent.err
    stated = cli("validate", sglang, "--nodes", "8", "--gpus-per-node", "8", "--json")
    assert stated.code == 2 and "--model" in stated.err  # the map records no expert count either
    wrong = cli("evaluate", "--trace", trace, "--placement", sglang, "--nodes", "4", "--gpus-per-node", "8", "--json")
    assert wrong.code == 0 and wrong.json()["config"]["nodes"] == 4  # stated explicitly: used


def test_sglang_map_rows_must_match_the_model(tmp_path):
    model = load_model("deepseek-v2-lite")
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"physical_to_logical_map": [list(range(64))] * 20}))
    with pytest.raises(InputError, match="20 rows; model deepseek-v2-lite has 27 decoder layers"):
        read_placement(path, 8, 8, model)


def test_a_recorded_topology_is_checked(tmp_path):
    from placer.formats.placement_io import replay_topology
    from placer.instances import load_topology

    bad = replace_topology(baseline("random", 1, 16, 8, 8), load_topology("h100-dgx"))
    bad.metadata["topology"]["nodes"] = "1"
    write_placement(bad, tmp_path / "p.json")
    with pytest.raises(InputError, match="topology.nodes: expected a positive integer, got '1'"):
        replay_topology([str(tmp_path / "p.json")])
