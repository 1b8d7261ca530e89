"""Preset instance files load; every kind of bad instance file fails with a precise InputError."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from placer import instances
from placer.errors import InputError
from placer.instances import (
    instances_dir,
    list_presets,
    load_model,
    load_topology,
    match_model,
)
from placer.topology import Model, Topology

REQUIRED_TOPOLOGIES = {"h100-dgx", "h800-deepep", "gb200-nvl72", "h100-512"}
REQUIRED_MODELS = {
    "deepseek-v3",
    "deepseek-v2-lite",
    "mixtral-8x7b",
    "qwen3-235b-a22b",
    "kimi-k2",
    "seed001",
}

TOPOLOGY = {
    "name": "test",
    "description": "a test cluster",
    "nodes": 2,
    "gpus_per_node": 8,
    "gpu_memory_bytes": 80e9,
    "gpu_flops": 989e12,
    "nvlink_bytes_per_s": 450e9,
    "nic_bytes_per_s": 50e9,
    "latency_s": 5e-6,
}

MODEL = {
    "name": "test",
    "num_experts": 64,
    "top_k": 4,
    "hidden_size": 1024,
    "moe_intermediate_size": 512,
    "num_moe_layers": 4,
    "num_groups": 8,
    "groups_per_token": 2,
}


def toml_text(table: str, values: dict) -> str:
    """A one-table TOML document; values are numbers, booleans or strings."""

    def literal(value: object) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return json.dumps(value) if isinstance(value, str) else repr(value)

    return f"[{table}]\n" + "".join(f"{key} = {literal(v)}\n" for key, v in values.items())


def write(tmp_path: Path, text: str | bytes, name: str = "instance.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def expect_error(load: Callable, arg: str | Path, field: str | None, fragment: str) -> InputError:
    """``load(arg)`` raises one-line InputError naming the file (if any) and ``field``."""
    with pytest.raises(InputError) as info:
        load(str(arg))
    err, text = info.value, str(info.value)
    assert err.field == field
    assert fragment in text
    assert "\n" not in text
    if field is not None:
        assert field in text
    if isinstance(arg, Path):
        assert err.source == str(arg)
        assert text.startswith(str(arg))
    return err


# ---- presets ---------------------------------------------------------------------------


def test_instances_dir_is_the_repository_folder() -> None:
    assert instances_dir() == Path(__file__).resolve().parents[1] / "instances"


def test_required_presets_exist() -> None:
    presets = list_presets()
    assert REQUIRED_TOPOLOGIES <= set(presets["topologies"])
    assert REQUIRED_MODELS <= set(presets["models"])


@pytest.mark.parametrize("name", sorted(list_presets()["topologies"]))
def test_every_topology_preset_loads(name: str) -> None:
    topology = load_topology(name)
    assert isinstance(topology, Topology)
    assert topology.name == name
    assert load_topology(str(instances_dir() / "topologies" / f"{name}.toml")) == topology


@pytest.mark.parametrize("name", sorted(list_presets()["models"]))
def test_every_model_preset_loads(name: str) -> None:
    model = load_model(name)
    assert isinstance(model, Model)
    assert model.name == name
    assert load_model(str(instances_dir() / "models" / f"{name}.toml")) == model


def test_table_keys_cover_every_dataclass_field() -> None:
    for keys, cls in ((instances._TOPOLOGY_KEYS, Topology), (instances._MODEL_KEYS, Model)):
        assert {k.field for k in keys.values()} - {None} == {f.name for f in fields(cls)}


def test_preset_figures() -> None:
    v3 = load_model("deepseek-v3")
    assert (v3.num_experts, v3.top_k, v3.hidden_size, v3.moe_intermediate_size) == (
        256,
        8,
        7168,
        2048,
    )
    assert (v3.num_moe_layers, v3.first_dense_layers, v3.num_hidden_layers) == (58, 3, 61)
    assert (v3.num_groups, v3.groups_per_token) == (8, 4)
    assert (v3.dispatch_bytes_per_element, v3.combine_bytes_per_element) == (1.0, 2.0)
    assert v3.expert_param_bytes == 3 * 7168 * 2048
    kimi = load_model("kimi-k2")
    assert (kimi.num_experts, kimi.num_moe_layers, kimi.num_hidden_layers) == (384, 60, 61)
    lite = load_model("deepseek-v2-lite")
    assert (lite.num_experts, lite.top_k, lite.num_moe_layers, lite.num_groups) == (64, 6, 26, 0)
    assert lite.expert_param_bytes == 3 * 2048 * 1408 * 2
    dgx, big = load_topology("h100-dgx"), load_topology("h100-512")
    assert (dgx.num_gpus, big.num_gpus) == (32, 512)
    assert big.resized(nodes=dgx.nodes) == Topology(**{**dgx.to_dict(), "name": big.name})
    assert load_topology("gb200-nvl72").gpus_per_node == 72


def test_match_model() -> None:
    assert match_model(256, 8).name == "deepseek-v3"
    assert match_model(64, 6).name == "deepseek-v2-lite"
    assert match_model(64, 2).name == "seed001"
    assert match_model(64, 3) is None


def test_optional_model_keys_take_dataclass_defaults(tmp_path: Path) -> None:
    values = {k: v for k, v in MODEL.items() if k not in ("num_groups", "groups_per_token")}
    model = load_model(str(write(tmp_path, toml_text("model", values))))
    assert model == Model(**values)


def test_integers_are_accepted_for_float_keys(tmp_path: Path) -> None:
    path = write(tmp_path, toml_text("topology", {**TOPOLOGY, "gpu_flops": 10**15, "latency_s": 0}))
    topology = load_topology(str(path))
    assert topology.gpu_flops == 1e15 and isinstance(topology.gpu_flops, float)
    assert topology.latency_s == 0.0


# ---- locating and reading files ----------------------------------------------------------


def test_unknown_preset_lists_the_available_ones() -> None:
    err = expect_error(load_topology, "h100-dgxx", "topology", "unknown preset 'h100-dgxx'")
    assert err.source is None
    assert all(name in str(err) for name in REQUIRED_TOPOLOGIES)
    err = expect_error(load_model, "deepseek-v4", "model", "unknown preset")
    assert "deepseek-v3" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    expect_error(load_topology, tmp_path / "absent.toml", None, "no such file")


def test_wrong_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, toml_text("topology", TOPOLOGY), "cluster.json")
    expect_error(load_topology, path, None, "expected a .toml file, got .json")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "folder.toml"
    path.mkdir()
    expect_error(load_model, path, None, "got a directory")


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "[topology\nname = 'x'\n")
    expect_error(load_topology, path, None, "bad TOML syntax")


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"[model]\nname = '\xff\xfe'\n")
    expect_error(load_model, path, None, "not UTF-8")


def test_missing_table(tmp_path: Path) -> None:
    expect_error(load_topology, write(tmp_path, "# nothing\n"), "topology", "missing table")


def test_wrong_table(tmp_path: Path) -> None:
    path = write(tmp_path, toml_text("model", MODEL))
    expect_error(load_topology, path, "model", "expected only a [topology] table")


def test_table_is_not_a_table(tmp_path: Path) -> None:
    expect_error(load_model, write(tmp_path, "model = 3\n"), "model", "expected a [model] table")


# ---- keys and values -----------------------------------------------------------------------


def test_missing_key(tmp_path: Path) -> None:
    values = {k: v for k, v in TOPOLOGY.items() if k != "nic_bytes_per_s"}
    path = write(tmp_path, toml_text("topology", values))
    expect_error(load_topology, path, "topology.nic_bytes_per_s", "missing required key")


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, toml_text("topology", {**TOPOLOGY, "gpus_per_nod": 8}))
    expect_error(load_topology, path, "topology.gpus_per_nod", "did you mean 'gpus_per_node'?")
    path = write(tmp_path, toml_text("model", {**MODEL, "num_expert": 8}))
    expect_error(load_model, path, "model.num_expert", "did you mean 'num_experts'?")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("nodes", "4", "expected a positive integer, got a string '4'"),
        ("nodes", 4.0, "expected a positive integer, got float 4.0"),
        ("gpus_per_node", True, "expected a positive integer, got a boolean True"),
        ("gpu_flops", "fast", "expected a positive number, got a string 'fast'"),
        ("latency_s", "5us", "expected a non-negative number"),
        ("name", 7, "expected a non-empty string, got int 7"),
        ("name", " ", "expected a non-empty string"),
        ("description", 1.5, "expected a non-empty string"),
        ("nodes", 0, "expected a positive integer, got 0"),
        ("gpus_per_node", 0, "expected a positive integer, got 0"),
        ("nodes", -2, "expected a positive integer, got -2"),
        ("gpu_memory_bytes", 0, "expected a positive number, got 0"),
        ("gpu_memory_bytes", -80e9, "expected a positive number"),
        ("gpu_flops", 0.0, "expected a positive number, got 0.0"),
        ("nvlink_bytes_per_s", -1.0, "expected a positive number"),
        ("nic_bytes_per_s", 0, "expected a positive number"),
        ("latency_s", -1e-6, "expected a non-negative number, got -1e-06"),
    ],
)
def test_bad_topology_value(tmp_path: Path, key: str, value: object, fragment: str) -> None:
    path = write(tmp_path, toml_text("topology", {**TOPOLOGY, key: value}))
    expect_error(load_topology, path, f"topology.{key}", fragment)


def test_non_finite_number(tmp_path: Path) -> None:
    path = write(tmp_path, toml_text("topology", TOPOLOGY).replace("989000000000000.0", "inf"))
    expect_error(load_topology, path, "topology.gpu_flops", "expected a finite number, got inf")
    path = write(tmp_path, toml_text("topology", TOPOLOGY).replace("5e-06", "nan"))
    expect_error(load_topology, path, "topology.latency_s", "expected a finite number")


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"num_experts": 0}, "model.num_experts", "expected a positive integer, got 0"),
        ({"top_k": 0}, "model.top_k", "expected a positive integer"),
        ({"hidden_size": -1}, "model.hidden_size", "expected a positive integer"),
        ({"moe_intermediate_size": 1.5}, "model.moe_intermediate_size", "expected a positive"),
        ({"num_moe_layers": 0}, "model.num_moe_layers", "expected a positive integer"),
        ({"first_dense_layers": -1}, "model.first_dense_layers", "expected a non-negative"),
        ({"dispatch_bytes_per_element": 0}, "model.dispatch_bytes_per_element", "positive"),
        ({"combine_bytes_per_element": -2.0}, "model.combine_bytes_per_element", "positive"),
        ({"expert_param_bytes": -1}, "model.expert_param_bytes", "expected a non-negative"),
        ({"num_groups": -8}, "model.num_groups", "expected a non-negative integer"),
        ({"top_k": 65}, "model.top_k", "expected top_k <= num_experts (64), got 65"),
        ({"num_groups": 6}, "model.num_groups", "expected a divisor of num_experts (64), got 6"),
        ({"groups_per_token": 9}, "model.groups_per_token", "expected 1..num_groups (8)"),
        ({"groups_per_token": 0}, "model.groups_per_token", "expected 1..num_groups (8)"),
        (
            {"num_groups": 0, "groups_per_token": 2},
            "model.groups_per_token",
            "expected 0 when num_groups is 0, got 2",
        ),
        (
            {"top_k": 17},
            "model.top_k",
            "expected top_k <= groups_per_token x experts per group (16), got 17",
        ),
    ],
)
def test_bad_model_value(tmp_path: Path, changes: dict, field: str, fragment: str) -> None:
    path = write(tmp_path, toml_text("model", {**MODEL, **changes}))
    expect_error(load_model, path, field, fragment)
