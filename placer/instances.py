"""Preset and user instance files: TOML descriptions of clusters and MoE models.

A topology file holds one ``[topology]`` table, a model file one ``[model]`` table
(see ``instances/`` for annotated examples). Every check of an untrusted file lives
here and fails with an :class:`InputError` naming the file and the offending key.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path

import tomllib

from placer.errors import InputError
from placer.inputs import MAX_TOML_BYTES, read_input_text
from placer.topology import Model, Topology

SUFFIX = ".toml"


@dataclass(frozen=True)
class _Key:
    """One key of an instance table: the dataclass field it fills and what it accepts.

    ``bound`` is ``"positive"`` (> 0), ``"nonnegative"`` (>= 0) or ``None`` (strings).
    A key with ``field=None`` is documentation only and is not passed on.
    """

    field: str | None
    kind: type
    bound: str | None = None
    required: bool = True


_TOPOLOGY_KEYS: dict[str, _Key] = {
    "name": _Key("name", str),
    "description": _Key(None, str, required=False),
    "nodes": _Key("nodes", int, "positive"),
    "gpus_per_node": _Key("gpus_per_node", int, "positive"),
    "gpu_memory_bytes": _Key("gpu_memory_bytes", float, "positive"),
    "gpu_flops": _Key("gpu_flops", float, "positive"),
    "nvlink_bytes_per_s": _Key("nvlink_bandwidth", float, "positive"),
    "nic_bytes_per_s": _Key("nic_bandwidth", float, "positive"),
    "latency_s": _Key("latency_s", float, "nonnegative"),
}

_MODEL_KEYS: dict[str, _Key] = {
    "name": _Key("name", str),
    "description": _Key(None, str, required=False),
    "num_experts": _Key("num_experts", int, "positive"),
    "top_k": _Key("top_k", int, "positive"),
    "hidden_size": _Key("hidden_size", int, "positive"),
    "moe_intermediate_size": _Key("moe_intermediate_size", int, "positive"),
    "num_moe_layers": _Key("num_moe_layers", int, "positive"),
    "first_dense_layers": _Key("first_dense_layers", int, "nonnegative", required=False),
    "dispatch_bytes_per_element": _Key(
        "dispatch_bytes_per_element", float, "positive", required=False
    ),
    "combine_bytes_per_element": _Key(
        "combine_bytes_per_element", float, "positive", required=False
    ),
    "expert_param_bytes": _Key("expert_param_bytes", float, "nonnegative", required=False),
    "num_groups": _Key("num_groups", int, "nonnegative", required=False),
    "groups_per_token": _Key("groups_per_token", int, "nonnegative", required=False),
}

def instances_dir() -> Path:
    """The folder holding ``topologies/`` and ``models/``.

    The copy bundled into a wheel (``placer/_bundled/instances``) if present, else the
    repository's ``instances/`` beside the package (editable installs, checkouts).
    """
    bundled = Path(__file__).resolve().parent / "_bundled" / "instances"
    return bundled if bundled.is_dir() else Path(__file__).resolve().parents[1] / "instances"


def list_presets() -> dict[str, list[str]]:
    """Preset names (file stems), sorted: ``{"topologies": [...], "models": [...]}``."""
    root = instances_dir()
    return {
        kind: sorted(p.stem for p in (root / kind).glob(f"*{SUFFIX}"))
        for kind in ("topologies", "models")
    }


def load_topology(name_or_path: str) -> Topology:
    """A :class:`Topology` from a preset name (``h100-dgx``) or a path to a ``.toml`` file."""
    path = _resolve("topologies", "topology", name_or_path)
    values = _parse_table(path, "topology", _TOPOLOGY_KEYS)
    return _build(Topology, values, path, "topology", _TOPOLOGY_KEYS)


def load_model(name_or_path: str) -> Model:
    """A :class:`Model` from a preset name (``deepseek-v3``) or a path to a ``.toml`` file."""
    path = _resolve("models", "model", name_or_path)
    values = _parse_table(path, "model", _MODEL_KEYS)
    _check_model(values, path)
    return _build(Model, values, path, "model", _MODEL_KEYS)


def _build(kind: type, values: dict, path: Path, table: str, keys: dict[str, _Key]) -> object:
    """``kind(**values)``, its range checks reported against the file's key."""
    try:
        return kind(**values)
    except InputError as err:
        key = next((name for name, spec in keys.items() if spec.field == err.field), err.field)
        raise InputError(path, f"{table}.{key}", err.message) from None


def match_model(num_experts: int, top_k: int) -> Model | None:
    """The only preset model with ``num_experts`` experts and top-``top_k`` routing, else None."""
    found = [
        model
        for model in map(load_model, list_presets()["models"])
        if (model.num_experts, model.top_k) == (num_experts, top_k)
    ]
    return found[0] if len(found) == 1 else None


def _resolve(kind: str, table: str, name_or_path: str) -> Path:
    """The file a preset name or path refers to; unknown bare names list the presets."""
    presets = list_presets()[kind]
    if name_or_path in presets:
        return instances_dir() / kind / f"{name_or_path}{SUFFIX}"
    path = Path(name_or_path)
    if path.suffix or "/" in name_or_path or "\\" in name_or_path or path.exists():
        if path.suffix != SUFFIX:
            got = path.suffix or "no suffix"
            raise InputError(path, None, f"expected a {SUFFIX} file, got {got}")
        return path
    raise InputError(
        None,
        table,
        f"unknown preset {name_or_path!r}; expected one of {', '.join(presets) or '(none)'}"
        f" or a path to a {SUFFIX} file",
    )


def _read_toml(path: Path) -> dict:
    """The parsed TOML document at ``path``."""
    text = read_input_text(path, "TOML", MAX_TOML_BYTES)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(path, None, f"bad TOML syntax: {err}") from None
    except RecursionError:
        raise InputError(path, None, "bad TOML: nested too deeply") from None


def _parse_table(path: Path, table: str, keys: dict[str, _Key]) -> dict:
    """Dataclass keyword arguments from the ``[table]`` of ``path``, every value checked."""
    document = _read_toml(path)
    extra = sorted(set(document) - {table})
    if extra:
        raise InputError(
            path, extra[0], f"unknown top-level entry; expected only a [{table}] table"
        )
    if table not in document:
        raise InputError(path, table, f"missing table; expected a [{table}] table")
    body = document[table]
    if not isinstance(body, dict):
        raise InputError(path, table, f"expected a [{table}] table, got {_type_name(body)}")
    for key in body:
        if key not in keys:
            raise InputError(path, f"{table}.{key}", f"unknown key{_did_you_mean(key, keys)}")
    values = {}
    for key, spec in keys.items():
        if key not in body:
            if spec.required:
                raise InputError(path, f"{table}.{key}", "missing required key")
            continue
        value = _check_value(body[key], spec, path, f"{table}.{key}")
        if spec.field is not None:
            values[spec.field] = value
    return values


def _check_value(value: object, spec: _Key, path: Path, name: str) -> str | int | float:
    """``value`` if it has the type and sign ``spec`` asks for (ints widened to float)."""
    if spec.kind is str:
        if not isinstance(value, str) or not value.strip():
            raise InputError(path, name, f"expected a non-empty string, got {_show(value)}")
        return value
    noun = "integer" if spec.kind is int else "number"
    if isinstance(value, bool) or not isinstance(value, int if spec.kind is int else (int, float)):
        raise InputError(path, name, f"expected {_article(spec.bound)} {noun}, got {_show(value)}")
    if not math.isfinite(value):
        raise InputError(path, name, f"expected a finite {noun}, got {value}")
    if (spec.bound == "positive" and value <= 0) or (spec.bound == "nonnegative" and value < 0):
        raise InputError(path, name, f"expected {_article(spec.bound)} {noun}, got {value}")
    return spec.kind(value)


def _check_model(values: dict, path: Path) -> None:
    """Cross-key consistency of a model: routing width and expert groups."""
    experts, top_k = values["num_experts"], values["top_k"]
    groups, per_token = values.get("num_groups", 0), values.get("groups_per_token", 0)
    if top_k > experts:
        raise InputError(
            path, "model.top_k", f"expected top_k <= num_experts ({experts}), got {top_k}"
        )
    if groups == 0:
        if per_token != 0:
            raise InputError(
                path, "model.groups_per_token", f"expected 0 when num_groups is 0, got {per_token}"
            )
        return
    if experts % groups:
        raise InputError(
            path, "model.num_groups", f"expected a divisor of num_experts ({experts}), got {groups}"
        )
    if not 1 <= per_token <= groups:
        raise InputError(
            path,
            "model.groups_per_token",
            f"expected 1..num_groups ({groups}) when num_groups > 0, got {per_token}",
        )
    reachable = per_token * (experts // groups)
    if top_k > reachable:
        raise InputError(
            path,
            "model.top_k",
            f"expected top_k <= groups_per_token x experts per group ({reachable}), got {top_k}",
        )


def _did_you_mean(key: str, keys: dict[str, _Key]) -> str:
    close = difflib.get_close_matches(key, list(keys), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; expected one of {', '.join(keys)}"


def _article(bound: str | None) -> str:
    return {"positive": "a positive", "nonnegative": "a non-negative"}.get(bound or "", "a")


def _type_name(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _show(value: object) -> str:
    return f"{_type_name(value)} {value!r}"
