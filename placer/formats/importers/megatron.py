"""Importer for Megatron-Core router traces (``--moe-routing-trace-path``).

Follows NVIDIA/Megatron-LM ``megatron/core/transformer/moe/router_trace.py``:
each rank writes ``router_trace_rank{r}.jsonl``, one JSON object per line and
per (step, layer)::

    {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 3, "rank": 0,
     "num_tokens": 2, "topk": 2, "top_indices": [[12, 45], [7, 3]]}

``step``, ``layer``, ``rank``, ``num_tokens``, ``topk`` and ``top_indices`` are
required; ``stage``, ``block`` and sidecar fields (``hs_offset``, ...) are
optional. Choices where upstream leaves the layout open:

- Multi-token-prediction records (``"block": "mtp"`` or an ``mtp_idx``) are
  skipped: they route the same tokens through extra heads, not decoder layers.
- The trace's layer axis is the sorted distinct ``layer`` values (dense layers
  have no records, so MoE layer ``i`` is the ``i``-th smallest traced layer).
- Tokens join step by step in ascending step order and, within a step, rank by
  rank (rank-major); ``src_rank`` is the record's ``rank``.
- A layer with several records in one step and rank (training micro-batches)
  has them concatenated in file order; every layer of that step and rank must
  show the same sequence of token counts.
- Every rank must trace every layer (no pipeline parallelism), and ranks that
  route the same tokens (tensor parallelism without sequence parallelism)
  repeat them: import one rank's file in that case.
- The expert count is not recorded: pass ``num_experts`` or it is the largest
  id + 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.steps import StepGroup, rank_files, stack_groups
from placer.inputs import open_input
from placer.progress import ProgressFn, track
from placer.trace import MAX_EXPERTS, MAX_RANK, Trace

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
                            f"expected an integer 0..{_INT_LIMITS[name] - 1:,}, got {got!r}",
                        )
                step, layer, rank, num_tokens, topk = (record[name] for name in _INT_FIELDS)
                ids = _top_indices(path, where, record.get("top_indices"), num_tokens, topk)
                yield where, step, rank, layer, ids
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, None, f"unreadable ({err})") from None


def read_megatron(source: str | Path | Sequence[str | Path], num_experts: int | None = None,
                  progress: ProgressFn | None = None) -> Trace:
    """Read a Megatron router-trace directory, one ``.jsonl`` file, or a list of them.

    progress: reports files read (:mod:`placer.progress`).

    Returns a trace ``[tokens, layers, k]`` with ``src_rank``; see the module
    docstring for the token and layer order.
    """
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
    groups: dict[tuple[int, int], StepGroup] = {}
    rank_file: dict[int, Path] = {}
    for path in track(files, "reading Megatron files", len(files), progress):
        for where, step, rank, layer, ids in _records(path):
            owner = rank_file.setdefault(rank, path)
            if owner != path:
                raise InputError(path, f"{where}: rank", f"rank {rank} also appears in {owner}")
            group = groups.setdefault((step, rank), StepGroup(path, f"step {step}", rank))
            group.parts.setdefault(layer, []).append(ids)
    return stack_groups(str(label), [groups[key] for key in sorted(groups)], num_experts)
