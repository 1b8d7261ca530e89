"""Mt-KaHyPar's km1 partition: a start for ``auto``'s node search (optional: used when the
``mtkahypar`` package is installed, ``pip install 'mtkahypar>=1.5'``; the benchmarks' peer).

One thread and a fixed seed. Only the deterministic presets make a partition depend on its
inputs alone (measured with Mt-KaHyPar 1.7: QUALITY on one thread with a fixed seed returned
a different partition in about 1 call in 4), so ``auto`` starts from :data:`START_PRESET`;
the benchmarks' peers run QUALITY / HIGHEST_QUALITY as users would. Setting the
environment variable ``PLACER_NO_MTKAHYPAR`` (to anything but empty) hides an installed
Mt-KaHyPar, e.g. to reproduce ``auto`` placements made without it.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["START_PRESET", "create_hypergraph", "installed", "km1_parts", "library"]

#: preset of ``auto``'s start (falls back to DETERMINISTIC where the Mt-KaHyPar release lacks it)
START_PRESET = "DETERMINISTIC_QUALITY"


def installed() -> bool:
    """Whether Mt-KaHyPar can be imported (and is not hidden by ``PLACER_NO_MTKAHYPAR``)."""
    if os.environ.get("PLACER_NO_MTKAHYPAR"):
        return False
    try:
        import mtkahypar  # noqa: F401
    except ImportError:
        return False
    return True


def library():
    """Mt-KaHyPar initialised once per process with one thread. Raises ImportError when absent."""
    import mtkahypar

    if not hasattr(library, "instance"):
        library.instance = mtkahypar.initialize(1, False)
    return library.instance


def create_hypergraph(context, nets: np.ndarray, weights: np.ndarray, num_experts: int):
    """A Mt-KaHyPar hypergraph of unit-weight experts and weighted nets.

    nets: [n, k] expert ids, -1 padding; weights: [n] positive integers (tokens per net).
    """
    edges = [row[row >= 0].tolist() for row in nets]
    return library().create_hypergraph(context, int(num_experts), len(edges), edges, [1] * int(num_experts),
                                       np.asarray(weights, dtype=np.int64).tolist())


def km1_parts(nets: np.ndarray, weights: np.ndarray, num_experts: int, parts: int, preset: str = "QUALITY",
              seed: int = 0) -> np.ndarray:
    """Block of every expert [num_experts] minimising the weighted km1 (connectivity - 1) with
    at most ceil(E / parts) experts per block (epsilon 0).

    nets: [n, k] expert ids, -1 padding; weights: [n] positive integers; preset: a
    ``mtkahypar.PresetType`` name (:data:`START_PRESET` falls back to DETERMINISTIC where
    absent). Raises ImportError when Mt-KaHyPar is not installed.
    """
    import mtkahypar

    lib = library()
    mtkahypar.set_seed(int(seed))
    fallback = mtkahypar.PresetType.DETERMINISTIC if preset == START_PRESET else None
    context = lib.context_from_preset(getattr(mtkahypar.PresetType, preset, fallback))
    context.set_partitioning_parameters(int(parts), 0.0, mtkahypar.Objective.KM1)
    context.logging = False
    blocks = create_hypergraph(context, nets, weights, num_experts).partition(context)
    return np.array([blocks.block_id(e) for e in range(num_experts)], dtype=np.int64)
