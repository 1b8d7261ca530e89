"""Importer for the ESFT expert-score traces (DeepSeek-V2-Lite layout).

A task directory holds ``expert_weights_<L>.txt`` for L = 1..layers (MoE layer
L-1), one line per sequence, the same sequence order in every file. A line is
``ids<TAB><TAB>weights``: T*k tab-separated expert ids (token-major), then the
matching T*k router probabilities.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.formats.importers.steps import rank_files
from placer.inputs import MAX_TEXT_BYTES, read_input_text
from placer.progress import ProgressFn, track
from placer.trace import Trace, concatenate, validate_arrays

ESFT_TASKS = ("intent", "law", "summary", "translation")
ESFT_TOP_K = 6
ESFT_NUM_EXPERTS = 64
_LAYER_FILE = re.compile(r"expert_weights_(\d+)\.txt")


def _layer_files(task_dir: Path) -> list[Path]:
    found = rank_files(task_dir, _LAYER_FILE, "layer")
    if not found:
        raise InputError(task_dir, None, "no expert_weights_<L>.txt files (not an ESFT task directory)")
    for expected, layer in enumerate(found, 1):
        if layer != expected:
            raise InputError(task_dir, f"expert_weights_{expected}.txt", "missing (layers must run 1..L)")
    return list(found.values())


def _parse_line(path: Path, number: int, line: str, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """One sequence: ids [T, k] and weights [T, k]."""
    ids_text, sep, weights_text = line.rstrip("\n").partition("\t\t")
    field = f"line {number}"
    if not sep:
        raise InputError(path, field, "expected 'ids<TAB><TAB>weights'")
    try:
        ids = np.array(ids_text.split("\t"), dtype=np.int64)
        weights = np.array(weights_text.split("\t"), dtype=np.float32)
    except (ValueError, OverflowError) as err:
        raise InputError(path, field, f"non-numeric or out-of-range entry ({err})") from None
    if ids.size != weights.size or ids.size % top_k:
        raise InputError(
            path, field, f"{ids.size} ids and {weights.size} weights; expected equal counts, a multiple of k={top_k}"
        )
    return ids.reshape(-1, top_k), weights.reshape(-1, top_k)


def read_esft_task(task_dir: str | Path, top_k: int = ESFT_TOP_K, progress: ProgressFn | None = None) -> Trace:
    """Read one ESFT task directory into a trace with weights and sequence boundaries.

    progress: reports layer files read (:mod:`placer.progress`).
    """
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise InputError(task_dir, None, "not a directory")
    per_layer_ids, per_layer_weights = [], []
    seq_lens: list[int] | None = None
    files = _layer_files(task_dir)
    for path in track(files, f"reading {task_dir.name}", len(files), progress):
        lines = read_input_text(path, "ESFT expert-weights text", MAX_TEXT_BYTES).splitlines()
        parsed = [_parse_line(path, n + 1, line, top_k) for n, line in enumerate(lines) if line.strip()]
        if not parsed:
            raise InputError(path, None, "holds no sequences")
        lens = [ids.shape[0] for ids, _ in parsed]
        if seq_lens is None:
            seq_lens = lens
        elif lens != seq_lens:
            raise InputError(path, "sequences", "sequence lengths differ from expert_weights_1.txt")
        per_layer_ids.append(np.concatenate([ids for ids, _ in parsed]))
        per_layer_weights.append(np.concatenate([w for _, w in parsed]))
    if not seq_lens:
        raise InputError(task_dir, None, "holds no sequences")
    return validate_arrays(
        str(task_dir),
        {
            "topk_ids": np.stack(per_layer_ids, axis=1),
            "topk_weights": np.stack(per_layer_weights, axis=1),
            "seq_lens": np.asarray(seq_lens, dtype=np.int64),
        },
        num_experts=ESFT_NUM_EXPERTS,
    )


def split_half(trace: Trace) -> tuple[Trace, Trace]:
    """Cut at the first sequence boundary at or after half the tokens: (before, after)."""
    assert trace.seq_lens is not None
    ends = np.cumsum(trace.seq_lens)
    cut = int(np.searchsorted(ends, trace.num_tokens / 2, side="left")) + 1
    if cut >= len(ends):
        raise InputError(None, "seq_lens", "cannot split: the last sequence holds the trace's second half")
    return trace.sequence_slice(0, cut), trace.sequence_slice(cut, len(trace.seq_lens))


def import_esft(
    root: str | Path, task: str | None = None, split: bool = False, progress: ProgressFn | None = None
) -> Trace | tuple[Trace, Trace]:
    """Import ESFT tasks pooled in the order intent, law, summary, translation.

    task: keep only this task. split: return (train, test), each task cut by
    :func:`split_half` before pooling. progress: reports layer files read per task.
    """
    root = Path(root)
    if task is not None and task not in ESFT_TASKS:
        raise InputError(root, "task", f"unknown task {task!r}; expected one of {', '.join(ESFT_TASKS)}")
    if not root.is_dir():
        raise InputError(root, None, "not a directory")
    names = [task] if task else [name for name in ESFT_TASKS if (root / name).is_dir()]
    if not names:
        raise InputError(root, None, f"holds none of the task directories {', '.join(ESFT_TASKS)}")
    traces = [read_esft_task(root / name, progress=progress) for name in names]
    if not split:
        return concatenate(traces)
    halves = [split_half(trace) for trace in traces]
    return concatenate([h[0] for h in halves]), concatenate([h[1] for h in halves])
