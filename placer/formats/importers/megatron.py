"""Importer for Megatron-Core router traces (``--moe-routing-trace-path``).

Follows NVIDIA/Megatron-LM ``megatron/core/transformer/moe/router_trace.py`` (read at
059f0f5c; the issue's findings at d98e8a64):
each rank writes ``router_trace_rank{r}.jsonl``, one JSON object per line and
per (step, layer)::

    {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 3, "rank": 0,
     "num_tokens": 2, "topk": 2, "top_indices": [[12, 45], [7, 3]]}

``step``, ``layer``, ``rank``, ``num_tokens``, ``topk`` and ``top_indices`` are
required; ``stage``, ``block`` and sidecar fields (``hs_offset``, ...) are
optional. Choices where upstream leaves the layout open:

- Multi-token-prediction records (``"block": "mtp"`` or an ``mtp_idx``) are
  skipped: they route the same tokens through extra heads, not decoder layers.
  Routing replay tags them ``decoder`` and numbers them 1, 2, ... after each step's
  decoder layers; with ``layer_numbers`` that tail is dropped too (``_drop_mtp_tails``).
- ``layer`` is the index in the module name ``decoder.layers.{i}``: 0-based, dense
  layers counted, and *local to the pipeline stage* (each stage's module list
  starts at 0). The trace's layer axis is the sorted distinct global layers, kept
  as ``Trace.layer_ids`` (dense layers have no records).
- ``layer_numbers``: the same format with ``layer`` = ``TransformerLayer.layer_number``
  (1-based and global, the pipeline stage's offset included), as Megatron's inference
  writes it with ``--moe-enable-routing-replay`` (``RouterTracer.record_indices`` called
  from ``text_generation_controller.py`` at d98e8a64; also the hook's fallback for a
  router whose module name does not parse). Nothing in a record says which numbering
  wrote it: with a ``model`` whose MoE layers are the recorded ones minus 1, the
  default import is refused with a hint.
- Pipeline parallelism: the records do not say which stage wrote them, so pass
  ``pipeline_layers`` (decoder layers per stage, e.g. ``[13, 13]``). Megatron's
  default rank order puts the pipeline outermost: with W ranks and P stages, rank
  r is stage ``r // (W / P)`` and its layer ``i`` is global ``sum(pipeline_layers[:stage])
  + i``; the ranks ``r mod (W / P)`` of every stage saw the same tokens and are joined
  layer-wise. Without ``pipeline_layers`` and with a ``model`` whose MoE layers
  do not match the recorded ones, the import is refused.
- Activation recompute fires the router hook twice for the same micro-batch:
  a record identical to an earlier one of the same step, rank and layer is dropped
  (and counted in the notes) rather than doubling tokens.
- Tokens join step by step in ascending step order and, within a step, rank by
  rank (rank-major); ``src_rank`` is the record's ``rank``.
- A layer with several records in one step and rank (training micro-batches)
  has them concatenated in file order; every layer of that step and rank must
  show the same sequence of token counts.
- Every rank of a stage must trace every layer of the stage, and ranks that
  route the same tokens (tensor parallelism without sequence parallelism)
  repeat them: import one rank's file in that case.
- The expert count is not recorded: pass ``num_experts`` (or a model) or it is
  the largest id + 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.imported import Imported
from placer.formats.importers.steps import StepGroup, rank_files, stack_groups
from placer.formats.layers import check_model_layers
from placer.inputs import open_input
from placer.progress import ProgressFn, track
from placer.topology import Model
from placer.trace import MAX_EXPERTS, MAX_RANK

__all__ = ["megatron_files", "read_megatron"]

_RANK_FILE = re.compile(r"router_trace_rank(\d+)\.jsonl")
_INT_FIELDS = ("step", "layer", "rank", "num_tokens", "topk")
#: exclusive upper bounds of the integer fields (ranks index per-GPU arrays)
_INT_LIMITS = {"step": 1 << 62, "layer": 1 << 31, "rank": MAX_RANK, "num_tokens": 1 << 31, "topk": MAX_EXPERTS}
#: longest record line read (a 16k-token, top-8 record is about 0.5 MB)
MAX_LINE_BYTES = 64 << 20


def megatron_files(directory: Path) -> list[Path]:
    """``router_trace_rank{r}.jsonl`` files of a directory in rank order (empty if none)."""
    return list(rank_files(directory, _RANK_FILE).values())


def _top_indices(path: Path, where: str, value: object, num_tokens: int, topk: int) -> np.ndarray:
    """``top_indices`` as a ``[num_tokens, topk]`` integer array."""
    field = f"{where}: top_indices"
    if not isinstance(value, list):
        raise InputError(path, field, "expected a list of per-token expert-id lists")
    if num_tokens == 0 and not value:
        return np.empty((0, topk), dtype=np.int64)
    try:
        ids = np.asarray(value)
    except ValueError:
        raise InputError(path, field, "rows of different lengths (expected num_tokens x topk)") from None
    if ids.dtype.kind not in "iu":
        raise InputError(path, field, "expected integer expert ids")
    if ids.shape != (num_tokens, topk):
        raise InputError(
            path, field, f"shape {ids.shape} does not match num_tokens={num_tokens} x topk={topk}"
        )
    return ids


def _records(path: Path) -> Iterator[tuple[str, int, int, int, np.ndarray]]:
    """(line label, step, rank, layer, ids [tokens, k]) for each decoder record of one file."""
    try:
        with open_input(path, "Megatron router trace (.jsonl)") as handle:
            for number, line in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
                if len(line) > MAX_LINE_BYTES:
                    raise InputError(path, f"line {number}", f"longer than {MAX_LINE_BYTES:,} bytes")
                if not line.strip():
                    continue
                where = f"line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(
                        path, where, f"not valid JSON ({err.msg} at column {err.colno})"
                    ) from None
                except RecursionError:
                    raise InputError(path, where, "not valid JSON (nested too deeply)") from None
                if not isinstance(record, dict):
                    raise InputError(path, where, "expected a JSON object")
                if record.get("block", "decoder") != "decoder" or "mtp_idx" in record:
                    continue
                for name in _INT_FIELDS:
                    got = record.get(name)
                    if type(got) is not int or not 0 <= got < _INT_LIMITS[name]:
                        raise InputError(
                            path, f"{where}: {name}",
                            f"expected a non-negative integer, got {got!r} (at most {_INT_LIMITS[name] - 1:,})",
                        )
                step, layer, rank, num_tokens, topk = (record[name] for name in _INT_FIELDS)
                ids = _top_indices(path, where, record.get("top_indices"), num_tokens, topk)
                yield where, step, rank, layer, ids
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, None, f"unreadable ({err})") from None


_Record = tuple[Path, str, int, int, int, np.ndarray]


def _drop_mtp_tails(records: list[_Record]) -> tuple[list[_Record], int]:
    """Records without the multi-token-prediction routers' tails, and how many were dropped.

    Megatron's inference routing replay writes one record per router and step in the
    order the routers were built, tagged ``decoder``: the decoder's layers by ascending
    ``layer_number``, then the MTP layers, numbered 1, 2, ... (``multi_token_prediction.py``
    builds them with their own numbering). So a (file, step, rank) whose layers form two
    ascending runs, the second 1, 2, ..., D and unlike the first, ends in D MTP records;
    runs of the same layers (micro-batches) and recompute's reversed order are kept.
    """
    positions: dict[tuple[Path, int, int], list[int]] = {}
    for index, (path, _, step, rank, _, _) in enumerate(records):
        positions.setdefault((path, step, rank), []).append(index)
    dropped: set[int] = set()
    for indices in positions.values():
        layers = [records[i][4] for i in indices]
        starts = [0] + [n for n in range(1, len(layers)) if layers[n] <= layers[n - 1]]
        if len(starts) != 2:
            continue
        first, tail = layers[:starts[1]], layers[starts[1]:]
        if tail == list(range(1, len(tail) + 1)) and set(tail) != set(first):
            dropped.update(indices[starts[1]:])
    return [record for index, record in enumerate(records) if index not in dropped], len(dropped)


def _stages(label: Path, ranks: list[int], pipeline_layers: Sequence[int] | None) -> tuple[int, list[int]]:
    """(ranks per stage, first global layer of each stage); one stage without pipeline_layers."""
    if not pipeline_layers:
        return max(ranks) + 1, [0]
    if any(type(n) is not int or n <= 0 for n in pipeline_layers):
        raise InputError(None, "pipeline_layers", f"expected positive layer counts, got {list(pipeline_layers)}")
    world, stages = max(ranks) + 1, len(pipeline_layers)
    if world % stages or len(ranks) != world:
        raise InputError(label, "rank", f"ranks {ranks[0]}..{ranks[-1]} ({len(ranks)} files) do not split into "
                         f"{stages} pipeline stages of equal size (every rank's file is needed)")
    offsets = [sum(pipeline_layers[:stage]) for stage in range(stages)]
    return world // stages, offsets


def read_megatron(source: str | Path | Sequence[str | Path], num_experts: int | None = None,
                  progress: ProgressFn | None = None, pipeline_layers: Sequence[int] | None = None,
                  model: Model | None = None, layer_numbers: bool = False) -> Imported:
    """Read a Megatron router-trace directory, one ``.jsonl`` file, or a list of them.

    progress: reports files read (:mod:`placer.progress`). pipeline_layers: decoder
    layers per pipeline stage (see the module docstring). model: checks the MoE layers.
    layer_numbers: records number layers 1-based and globally (see the module docstring).

    Returns a trace ``[tokens, layers, k]`` with ``src_rank`` and ``layer_ids``; see the
    module docstring for the token and layer order.
    """
    if layer_numbers and pipeline_layers:
        raise InputError(None, "pipeline_layers", "layer numbers are global already: pass one or the other")
    if isinstance(source, (str, Path)):
        label = Path(source)
        files = megatron_files(label) if label.is_dir() else [label]
        if not files:
            raise InputError(
                label, None, "no router_trace_rank<R>.jsonl files (not a Megatron trace directory)"
            )
    else:
        files = [Path(p) for p in source]
        if not files:
            raise InputError(None, "files", "no Megatron trace files given")
        label = files[0].parent
    records: list[_Record] = []
    rank_file: dict[int, Path] = {}
    for path in track(files, "reading Megatron files", len(files), progress):
        for where, step, rank, layer, ids in _records(path):
            owner = rank_file.setdefault(rank, path)
            if owner != path:
                raise InputError(path, f"{where}: rank", f"rank {rank} also appears in {owner}")
            records.append((path, where, step, rank, layer, ids))
    if not records:
        raise InputError(label, None, "holds no routing records")
    untailed, mtp_dropped = _drop_mtp_tails(records)
    if model is not None and not layer_numbers and not pipeline_layers and \
            sorted({record[4] for record in untailed}) == list(range(model.first_dense_layers + 1,
                                                                    model.num_hidden_layers + 1)):
        raise InputError(label, "records' layer", f"layers {model.first_dense_layers + 1}.."
                         f"{model.num_hidden_layers} are model {model.name}'s MoE layers + 1: 1-based layer "
                         "numbers, as Megatron's inference routing replay records them: read them as such "
                         "(layer_numbers; --layer-numbers on the command line)")
    if layer_numbers:
        records = untailed
        lowest = min(records, key=lambda record: record[4])
        if lowest[4] < 1:
            raise InputError(lowest[0], f"{lowest[1]}: layer", "0 is not a layer number (they start at 1): "
                             "these records number layers from 0")
        records = [(path, where, step, rank, layer - 1, ids) for path, where, step, rank, layer, ids in records]
    per_stage, offsets = _stages(label, sorted(rank_file), pipeline_layers)
    groups: dict[tuple[int, int], StepGroup] = {}
    repeats = 0
    for path, where, step, rank, layer, ids in records:
        stage, position = divmod(rank, per_stage)
        if pipeline_layers and layer >= pipeline_layers[stage]:
            raise InputError(path, f"{where}: layer", f"stage-local layer {layer} but pipeline stage {stage} "
                             f"(rank {rank}) has {pipeline_layers[stage]} layers")
        group = groups.setdefault((step, position), StepGroup(path, f"step {step}", position))
        parts = group.parts.setdefault(offsets[stage] + layer, [])
        if any(part.shape == ids.shape and (part == ids).all() for part in parts):
            repeats += 1  # activation recompute: the same micro-batch routed again
            continue
        parts.append(ids)
    experts = num_experts or (model.num_experts if model is not None else None)
    trace = stack_groups(str(label), [groups[key] for key in sorted(groups)], experts)
    check_model_layers(str(label), "records' layer", trace.layer_ids, model)
    recompute = (f"dropped {repeats} records repeating an earlier record of the same step, rank and layer "
                 "(activation recompute)")
    notes = [recompute] if repeats else []
    if pipeline_layers:
        notes.append(f"mapped stage-local layers of {len(pipeline_layers)} pipeline stages to global layers")
    if layer_numbers:
        notes.append("read layer numbers (1-based) as decoder-layer indices: number - 1")
    if layer_numbers and mtp_dropped:
        notes.append(f"dropped {mtp_dropped} records of multi-token-prediction routers (numbered 1, 2, ... "
                     "after each step's decoder layers)")
    return Imported(trace, None, notes)
