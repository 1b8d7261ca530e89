"""Joining per-(step, rank, layer) routing records into one trace.

Megatron and TensorRT-LLM both log one ``[tokens, k]`` block of expert ids per
step (iteration), rank and layer. Within one step and rank every layer saw the
same tokens in the same order, so the blocks of that group stack layer-wise;
groups then join token-wise in the order given, each token tagged with its rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from placer.errors import InputError
from placer.trace import Trace, validate_arrays


@dataclass
class StepGroup:
    """The records of one step on one rank.

    source: the file the records came from (named in errors).
    label: the step as the format names it, e.g. ``"step 3"``.
    parts: layer id -> ``[tokens_i, k]`` id blocks in record order (several when
        a layer ran more than once in the step, e.g. once per micro-batch).
    """

    source: Path
    label: str
    rank: int
    parts: dict[int, list[np.ndarray]] = field(default_factory=dict)


def stack_groups(source: str, groups: list[StepGroup], num_experts: int | None) -> Trace:
    """One trace: each group's layers side by side (layer axis = sorted layer ids, kept as the
    trace's ``layer_ids``), groups in order.

    Every group must hold every layer, the same block sizes in every layer, and
    one top-k throughout. ``src_rank`` is each token's group rank.
    """
    if not groups:
        raise InputError(source, None, "holds no routing records")
    layers = sorted(set().union(*(group.parts for group in groups)))
    top_k = next(iter(groups[0].parts.values()))[0].shape[1]
    blocks, ranks = [], []
    for group in groups:
        missing = sorted(set(layers) - set(group.parts))
        if missing:
            raise InputError(
                group.source, group.label,
                f"rank {group.rank} has no records for layers {missing} "
                f"(every step must cover layers {layers})",
            )
        sizes = {layer: [len(part) for part in group.parts[layer]] for layer in layers}
        for layer in layers:
            where = f"{group.label}, layer {layer}"
            if sizes[layer] != sizes[layers[0]]:
                raise InputError(
                    group.source, where,
                    f"token counts {sizes[layer]} differ from layer {layers[0]}'s {sizes[layers[0]]} "
                    "(tokens of one step and rank must align across layers)",
                )
            widths = {part.shape[1] for part in group.parts[layer]}
            if widths != {top_k}:
                raise InputError(group.source, where, f"top-k {sorted(widths)} differs from {top_k}")
        block = np.stack([np.concatenate(group.parts[layer]) for layer in layers], axis=1)
        blocks.append(block)
        ranks.append(np.full(len(block), group.rank, dtype=np.int64))
    arrays = {"topk_ids": np.concatenate(blocks), "src_rank": np.concatenate(ranks),
              "layer_ids": np.asarray(layers, dtype=np.int64)}
    return validate_arrays(source, arrays, num_experts)
