"""A process-parallel map that reports progress and survives Ctrl-C.

:func:`interruptible_map` applies a function to every item, in worker processes
when asked, and returns the results in item order. Workers ignore SIGINT (a
terminal's Ctrl-C reaches the whole process group), so only the parent reacts:
it terminates the workers and raises :class:`Interrupted`, a KeyboardInterrupt
carrying the results finished so far, so a caller may keep them or let the
interrupt propagate.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from placer.progress import ProgressFn, track

T = TypeVar("T")
R = TypeVar("R")


class Interrupted(KeyboardInterrupt, Generic[R]):
    """Ctrl-C during :func:`interruptible_map`; ``results[i]`` is item i's result or None if unfinished."""

    def __init__(self, results: list[R | None]) -> None:
        super().__init__()
        self.results = results


#: (function, items) of the running map, read by forked workers instead of pickles
_SHARED: tuple[Callable, Sequence] | None = None


def _ignore_sigint() -> None:
    """Worker set-up: ignore Ctrl-C (the parent handles it) and die quietly on SIGTERM (a
    forked worker would otherwise inherit the parent's SIGTERM handler and print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _call_shared(index: int) -> tuple[int, object]:
    fn, items = _SHARED
    return index, fn(items[index])


def _call(args: tuple[Callable, int, object]) -> tuple[int, object]:
    fn, index, item = args
    return index, fn(item)


@contextlib.contextmanager
def _jobs(fn: Callable[[T], R], items: Sequence[T], count: int) -> Iterator[Iterator[tuple[int, R]]]:
    """(index, result) pairs as they finish: in this process, or from a pool of ``count`` workers."""
    if count <= 1:
        yield ((index, fn(item)) for index, item in enumerate(items))
        return
    global _SHARED
    context = multiprocessing.get_context()
    forked = context.get_start_method() == "fork"
    _SHARED = (fn, items) if forked else None
    try:
        with context.Pool(count, initializer=_ignore_sigint) as pool:
            if forked:
                yield pool.imap_unordered(_call_shared, range(len(items)))
            else:
                yield pool.imap_unordered(_call, [(fn, index, item) for index, item in enumerate(items)])
    finally:
        _SHARED = None


def interruptible_map(fn: Callable[[T], R], items: Sequence[T], workers: int = 1,
                      progress: ProgressFn | None = None, stage: str = "working") -> list[R]:
    """``[fn(item) for item in items]``, in up to ``workers`` processes.

    With the ``fork`` start method the workers read ``fn`` and ``items`` from the
    parent's memory (copy-on-write) instead of receiving pickles; otherwise ``fn``
    must be picklable. Raises :class:`Interrupted` on Ctrl-C (after stopping the
    workers) and re-raises the first exception of ``fn``.
    """
    results: list[R | None] = [None] * len(items)
    try:
        with _jobs(fn, items, min(workers, len(items), os.cpu_count() or 1)) as jobs:
            for index, result in track(jobs, stage, len(items), progress):
                results[index] = result
    except KeyboardInterrupt:
        raise Interrupted(results) from None
    except SystemError as err:
        if is_ctrl_c(err):
            raise Interrupted(results) from None
        raise
    return results


def is_ctrl_c(err: BaseException) -> bool:
    """A Ctrl-C, or numba's SystemError wrapping one that landed inside a compiled function."""
    return isinstance(err, KeyboardInterrupt) or (
        isinstance(err, SystemError) and isinstance(err.__cause__, KeyboardInterrupt))
