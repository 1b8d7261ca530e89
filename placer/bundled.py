"""Files shipped with placer: instance presets and the sample trace.

A wheel carries them under ``placer/_bundled/``; an editable install reads the
repository's ``instances/`` and ``traces/`` folders directly.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def bundled_path(*parts: str) -> Path:
    """Path of a shipped file or folder, e.g. ``bundled_path("traces", "sample")``."""
    inside = _PACKAGE.joinpath("_bundled", *parts)
    return inside if inside.exists() else _PACKAGE.parent.joinpath(*parts)


def sample_trace(split: str) -> Path:
    """The embedded ESFT sample (task ``intent``), ``split`` = "train" or "test"."""
    return bundled_path("traces", "sample", f"esft-intent-{split}.npz")
