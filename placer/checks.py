"""Checks of scalar arguments at the library boundary: exact types, finite values, ranges.

Every public function checks its numeric arguments here before any work, so NaN, infinity,
a float where a count belongs or an out-of-range value is one :class:`InputError` naming
the argument, never a traceback later or a silently wrong result.
"""

from __future__ import annotations

import math
import numbers

from placer.errors import InputError

__all__ = ["check_choice", "check_count", "check_real", "check_type", "finite_json"]


def check_count(value: object, field: str, low: int = 0, high: int | None = None,
                source: str | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool or float) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(source, field, f"expected an integer, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bound = f"{low:,}..{high:,}" if high is not None else f">= {low:,}"
        raise InputError(source, field, f"expected an integer {bound}, got {number:,}")
    return number


def check_choice(value: object, field: str, choices: tuple[str, ...], source: str | None = None) -> str:
    """``value`` if it is one of ``choices``, else :class:`InputError` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(source, field, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def check_real(value: object, field: str, low: float = -math.inf, high: float = math.inf,
               *, low_open: bool = False, source: str | None = None) -> float:
    """``value`` as a ``float`` if it is a finite real number in ``[low, high]`` (``(low, high]``
    with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(source, field, f"expected a finite number, got {value!r}")
    number = float(value)
    if number < low or (low_open and number == low) or number > high:
        left = "(" if low_open else "["
        raise InputError(source, field, f"expected a number in {left}{low:g}, {high:g}], got {number:g}")
    return number


def finite_json(obj: object) -> object:
    """``obj`` (JSON-ready dicts, lists and scalars) with every non-finite float (NaN, infinity)
    replaced by None, so ``json.dumps(..., allow_nan=False)`` writes strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(value) for value in obj]
    return obj


def check_type(value: object, field: str, kind: type | tuple[type, ...], optional: bool = False) -> None:
    """``value`` is an instance of ``kind`` (or None when ``optional``), else :class:`InputError`
    naming ``field`` (``kind``'s name says what was expected)."""
    if (optional and value is None) or isinstance(value, kind):
        return
    kinds = kind if isinstance(kind, tuple) else (kind,)
    expected = " or ".join(k.__name__ for k in kinds) + (" or None" if optional else "")
    raise InputError(None, field, f"expected a {expected}, got {type(value).__name__}")
