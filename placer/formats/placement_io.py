"""Placement files: placer's versioned JSON (read/write) and SGLang's expert-location JSON (read).

The file content depends only on the inputs (no wall times, no dates), so the
same inputs and seed give a byte-identical file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np

from placer import instances
from placer.atomic import write_text_atomic
from placer.checks import check_count, check_type, finite_json
from placer.constraints import check_memory
from placer.errors import InputError
from placer.inputs import MAX_JSON_BYTES, input_path, read_input_text
from placer.placement import BASELINES, Placement
from placer.topology import MAX_EXPERTS, MAX_GPUS, MAX_LAYERS, MAX_NODES, Model, Topology

__all__ = [
    "DEFAULT_TOPOLOGY",
    "check_against",
    "check_phy2log",
    "dumps_placement",
    "placement_document",
    "placement_schema",
    "read_placement",
    "replay_topology",
    "write_placement",
]

#: the topology preset used when nothing states or records the cluster
DEFAULT_TOPOLOGY = "h100-dgx"

FORMAT = "placer-placement"
VERSION = 1
_SIZES = {
    "num_layers": (1, MAX_LAYERS),
    "num_experts": (1, MAX_EXPERTS),
    "num_gpus": (1, MAX_GPUS),
    "num_nodes": (1, MAX_NODES),
    "gpus_per_node": (1, MAX_GPUS),
    "slots_per_gpu": (1, MAX_EXPERTS),
}
"""Integer fields of a placement file and their ranges (JSON Schema's "integer" admits 64.0)."""
METADATA_KEYS = ("topology", "model", "solver", "constraints", "excluded_gpus", "trace")


def placement_schema() -> dict:
    """The JSON Schema of placer's placement file (version 1)."""
    text = resources.files("placer").joinpath("schemas/placement.schema.json").read_text()
    return json.loads(text)


def placement_document(placement: Placement) -> dict:
    """The JSON-ready document of a placement."""
    check_type(placement, "placement", Placement)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "num_layers": placement.num_layers,
        "num_experts": placement.num_experts,
        "num_gpus": placement.num_gpus,
        "num_nodes": placement.num_nodes,
        "gpus_per_node": placement.gpus_per_node,
        "slots_per_gpu": placement.slots_per_gpu,
    }
    doc.update({key: placement.metadata.get(key) for key in METADATA_KEYS})
    doc["phy2log"] = placement.phy2log.tolist()
    return doc


def dumps_placement(placement: Placement) -> str:
    """Serialize with one phy2log row per line (diff-friendly, deterministic)."""
    doc = placement_document(placement)
    rows = doc.pop("phy2log")
    head = json.dumps(finite_json(doc), indent=2, sort_keys=False, allow_nan=False)
    body = ",\n".join("    " + json.dumps(row, separators=(",", ":")) for row in rows)
    return head[:-2] + ',\n  "phy2log": [\n' + body + "\n  ]\n}\n"


def write_placement(placement: Placement, path: str | Path) -> None:
    """Write placer's placement JSON atomically."""
    write_text_atomic(path, dumps_placement(placement))


def _load_json(path: Path) -> object:
    text = read_input_text(path, "placement JSON", MAX_JSON_BYTES)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise InputError(path, None, f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise InputError(path, None, "not valid JSON (nested too deeply)") from None


def _no_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _rectangular(path: Path, field: str, rows: object) -> np.ndarray:
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and r for r in rows):
        raise InputError(path, field, "expected a non-empty list of non-empty lists of expert ids")
    if len({len(r) for r in rows}) != 1:
        raise InputError(path, field, f"rows differ in length ({sorted({len(r) for r in rows})})")
    if len(rows) > MAX_LAYERS or len(rows[0]) > MAX_GPUS * MAX_EXPERTS:
        raise InputError(path, field, f"{len(rows):,} x {len(rows[0]):,} slots exceed placer's limits")
    if not all(type(v) is int and -(1 << 62) < v < 1 << 62 for r in rows for v in r):
        raise InputError(path, field, "expected integer expert ids (-1 for an empty slot)")
    return np.asarray(rows, dtype=np.int64)


def check_phy2log(path: str | Path | None, field: str, phy2log: np.ndarray, num_experts: int) -> None:
    """Every slot holds -1 or an id < num_experts; every expert sits in at least one slot per layer."""
    if phy2log.min() < -1:
        raise InputError(path, field, f"slot holds {int(phy2log.min())}; expected an expert id or -1")
    if phy2log.max() >= num_experts:
        raise InputError(path, field, f"expert id {int(phy2log.max())} >= num_experts {num_experts}")
    if num_experts > phy2log.shape[1]:
        raise InputError(
            path,
            field,
            f"{num_experts:,} experts (largest id + 1 or declared) cannot all sit "
            f"in {phy2log.shape[1]:,} slots per layer",
        )
    for layer, row in enumerate(phy2log):
        counts = np.bincount(row[row >= 0], minlength=num_experts)
        if (counts == 0).any():
            raise InputError(path, field, f"layer {layer}: expert {int(np.argmin(counts))} is in no slot")


def _read_native(path: Path, doc: dict) -> Placement:
    if doc.get("version") != VERSION:
        raise InputError(
            path, "version", f"{doc.get('version')!r} is not supported; this placer reads version {VERSION}"
        )
    try:  # the small fields first (cheap); phy2log's entries are checked by _rectangular
        jsonschema.validate({**doc, "phy2log": [[0]]} if "phy2log" in doc else doc, placement_schema())
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise InputError(path, where, err.message) from None
    for name, (low, high) in _SIZES.items():
        if name in doc and (type(doc[name]) is not int or not low <= doc[name] <= high):
            raise InputError(path, name, f"expected an integer {low}..{high:,}, got {doc[name]!r}")
    gpus, slots, gpn = doc["num_gpus"], doc["slots_per_gpu"], doc["gpus_per_node"]
    if doc.get("num_nodes") is not None and doc["num_nodes"] * gpn != gpus:
        raise InputError(path, "num_nodes", f"{doc['num_nodes']} nodes x {gpn} GPUs per node != num_gpus {gpus}")
    if gpus * slots > MAX_GPUS * MAX_EXPERTS:
        raise InputError(path, "slots_per_gpu", f"{gpus:,} GPUs x {slots:,} slots exceed placer's limits")
    if any(type(gpu) is not int for gpu in doc.get("excluded_gpus") or []):
        raise InputError(path, "excluded_gpus", "expected integer GPU ids")
    phy2log = _rectangular(path, "phy2log", doc["phy2log"])
    if phy2log.shape != (doc["num_layers"], gpus * slots):
        raise InputError(
            path,
            "phy2log",
            f"shape {phy2log.shape}; expected num_layers x num_gpus*slots_per_gpu = "
            f"({doc['num_layers']}, {gpus * slots})",
        )
    if gpus % gpn:
        raise InputError(path, "gpus_per_node", f"{gpn} does not divide num_gpus {gpus}")
    check_phy2log(path, "phy2log", phy2log, doc["num_experts"])
    dead = doc.get("excluded_gpus") or []
    if any(gpu >= gpus for gpu in dead):
        raise InputError(path, "excluded_gpus", f"GPU {max(dead)} is not among the {gpus} GPUs")
    busy = [gpu for gpu in dead if (phy2log.reshape(len(phy2log), gpus, slots)[:, gpu] >= 0).any()]
    if busy:
        raise InputError(path, "excluded_gpus", f"GPU {busy[0]} is out of service but holds experts")
    metadata = {key: doc[key] for key in METADATA_KEYS if doc.get(key) is not None}
    return Placement(phy2log, doc["num_experts"], gpn, slots, metadata)


def _read_sglang(
    path: Path, doc: dict, num_gpus: int, gpus_per_node: int, model: Model | None, num_experts: int | None
) -> Placement:
    if set(doc) != {"physical_to_logical_map"}:
        extra = sorted(set(doc) - {"physical_to_logical_map"})
        raise InputError(path, extra[0], "unexpected key in an SGLang expert-location file")
    field = "physical_to_logical_map"
    phy2log = _rectangular(path, field, doc[field])
    if model is not None:
        if phy2log.shape[0] not in (model.num_hidden_layers, model.num_moe_layers):
            raise InputError(
                path,
                field,
                f"{phy2log.shape[0]} rows; model {model.name} has {model.num_hidden_layers} "
                f"decoder layers (SGLang's rows) of which {model.num_moe_layers} are MoE layers",
            )
        if phy2log.shape[0] == model.num_hidden_layers:
            phy2log = phy2log[model.first_dense_layers :]
    slots = phy2log.shape[1]
    if slots % num_gpus:
        raise InputError(path, field, f"{slots} slots per layer do not divide evenly over {num_gpus} GPUs")
    if model is not None and num_experts is not None and model.num_experts != num_experts:
        raise InputError(path, "num_experts", f"the model has {model.num_experts} experts, the trace {num_experts}")
    num_experts = model.num_experts if model is not None else num_experts or int(phy2log.max()) + 1
    check_phy2log(path, field, phy2log, num_experts)
    metadata = {"solver": {"name": f"sglang:{path.name}"}}
    if model is not None:  # its dense layers come first: SGLang's static dispatch draws for them too
        metadata["model"] = model.to_dict()
    return Placement(phy2log, num_experts, gpus_per_node, slots // num_gpus, metadata)


def read_placement(
    path: str | Path,
    num_gpus: int | None = None,
    gpus_per_node: int | None = None,
    model: Model | None = None,
    num_experts: int | None = None,
) -> Placement:
    """Read placer's placement JSON or SGLang's ``{"physical_to_logical_map": ...}``.

    num_gpus, gpus_per_node: required for SGLang files, which do not store them.
    model: lets SGLang files drop leading dense-layer rows and fixes the expert count.
    num_experts: the expert count an SGLang file must place (from the trace); without it or
    a model, an SGLang file's count is its largest id + 1 (a never-placed last expert cannot
    be detected).
    """
    path = input_path(path, "placement")
    for name, value, high in (
        ("num_gpus", num_gpus, MAX_GPUS),
        ("gpus_per_node", gpus_per_node, MAX_GPUS),
        ("num_experts", num_experts, MAX_EXPERTS),
    ):
        if value is not None:
            check_count(value, name, 1, high)
    doc = _load_json(path)
    if isinstance(doc, dict) and "physical_to_logical_map" in doc:
        if num_gpus is None or gpus_per_node is None:
            raise InputError(path, None, "an SGLang file records no GPU count: give the topology it was made for")
        return _read_sglang(path, doc, num_gpus, gpus_per_node, model, num_experts)
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        return _read_native(path, doc)
    raise InputError(
        path,
        "format",
        f'unrecognised placement file: expected "format": "{FORMAT}" or SGLang\'s physical_to_logical_map',
    )


def check_topology(path: str | Path, placement: Placement, topology: Topology) -> None:
    """Raise InputError naming ``path`` unless the placement has the topology's nodes and GPUs
    per node, saying which node count (and GPUs per node) would fit."""
    if placement.num_gpus == topology.num_gpus and placement.gpus_per_node == topology.gpus_per_node:
        return
    fix = f"--nodes {placement.num_nodes}" + (
        f" --gpus-per-node {placement.gpus_per_node}" if placement.gpus_per_node != topology.gpus_per_node else ""
    )
    raise InputError(
        path,
        "num_gpus",
        f"placement is for {placement.num_nodes} nodes x {placement.gpus_per_node} GPUs, the topology "
        f"{topology.name} has {topology.nodes} x {topology.gpus_per_node}; give the placement's shape ({fix})",
    )


def check_against(path: str | Path, placement: Placement, topology: Topology, model: Model | None) -> dict:
    """Check a placement fits a topology (GPU count, node size, memory); return its facts."""
    check_topology(path, placement, topology)
    facts: dict = {
        "layers": placement.num_layers,
        "experts": placement.num_experts,
        "gpus": placement.num_gpus,
        "nodes": placement.num_nodes,
        "slots_per_gpu": placement.slots_per_gpu,
        "max_experts_per_gpu": int(placement.gpu_expert_counts().max()),
    }
    if model is not None:
        if model.num_experts != placement.num_experts:
            raise InputError(
                path, "num_experts", f"{placement.num_experts}; model {model.name} has {model.num_experts}"
            )
        if model.num_moe_layers != placement.num_layers:
            raise InputError(
                path, "num_layers", f"{placement.num_layers}; model {model.name} has {model.num_moe_layers} MoE layers"
            )
        facts["expert_bytes_per_gpu"] = check_memory(
            str(path), "phy2log", facts["max_experts_per_gpu"], placement.num_layers, topology, model
        )
    return facts


def _recorded_cluster(path: Path) -> Topology | None:
    """The cluster a placement file records: placer JSON -> its topology (its ``topology``
    metadata, else the default preset's hardware resized to its node shape); SGLang's map
    records none -> None."""
    doc = _load_json(path)
    if isinstance(doc, dict) and "physical_to_logical_map" in doc:
        return None
    if not (isinstance(doc, dict) and doc.get("format") == FORMAT):
        return read_placement(path, 1, 1)  # raises the unrecognised-format error
    recorded = doc.get("topology")
    if isinstance(recorded, dict):
        names = {f.name for f in fields(Topology)}
        if set(recorded) != names:
            raise InputError(path, "topology", f"expected the keys {sorted(names)}")
        for key, value in recorded.items():
            whole = key in ("nodes", "gpus_per_node")
            may_be_zero = key == "latency_s"  # as the topology presets allow
            if key != "name" and (
                type(value) not in ((int,) if whole else (int, float)) or value < 0 or (value == 0 and not may_be_zero)
            ):
                raise InputError(
                    path, f"topology.{key}", f"expected a positive {'integer' if whole else 'number'}, got {value!r}"
                )
        return Topology(**recorded)
    nodes, per_node = doc.get("num_nodes"), doc.get("gpus_per_node")
    if type(nodes) is not int or type(per_node) is not int or nodes <= 0 or per_node <= 0:
        raise InputError(path, "num_nodes", "expected positive num_nodes and gpus_per_node")
    return instances.load_topology(DEFAULT_TOPOLOGY).resized(nodes, per_node)


def replay_topology(
    specs: Sequence[str], topology: str | None = None, nodes: int | None = None, gpus_per_node: int | None = None
) -> Topology:
    """The cluster to replay or validate placements on.

    specs: placement files or baseline names. The rule: an explicit ``topology`` (preset
    or .toml), ``nodes`` or ``gpus_per_node`` wins (resizing the stated preset, else the
    files' recorded cluster, else the default); otherwise the cluster the placer files
    record (they must agree); a file that records none (an SGLang map) needs the cluster
    stated (``topology``, or both ``nodes`` and ``gpus_per_node``), never the default
    silently. Only baselines: the default preset.
    """
    for option, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value is not None and value <= 0:
            raise InputError(None, option, f"expected a positive count, got {value}")
    files = [input_path(spec, "placement") for spec in specs if spec not in BASELINES]
    recorded = {str(path): _recorded_cluster(path) for path in files}
    unrecorded = [name for name, cluster in recorded.items() if cluster is None]
    known = {cluster for cluster in recorded.values() if cluster is not None}
    if unrecorded and topology is None and (nodes is None or gpus_per_node is None):
        raise InputError(
            unrecorded[0],
            None,
            "records no cluster (an SGLang map): state it with --topology, or --nodes and --gpus-per-node",
        )
    if topology is None and nodes is None and gpus_per_node is None:
        if len(known) > 1:
            shapes = sorted(f"{c.nodes}x{c.gpus_per_node}" for c in known)
            raise InputError(
                None,
                "--topology",
                f"the placement files record different clusters ({', '.join(shapes)}): state the one to replay on",
            )
        return known.pop() if known else instances.load_topology(DEFAULT_TOPOLOGY)
    if topology is not None:
        base = instances.load_topology(topology)
    elif len(known) == 1:
        base = next(iter(known))
    else:
        base = instances.load_topology(DEFAULT_TOPOLOGY)
    return base.resized(nodes, gpus_per_node)
