"""Progress reporting without global state.

Long library calls take an optional ``progress`` callback, ``progress(stage, done,
total)``: ``done`` of ``total`` steps of the named stage are finished (called with 0
first). The library never prints; the command line decides whether to show bars
(:func:`terminal_progress`: rich bars on stderr when it is a terminal and ``--quiet``
is not given, else nothing), so piped output and ``--json`` stay clean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``."""

T = TypeVar("T")


def track(items: Iterable[T], stage: str, total: int, progress: ProgressFn | None, start: int = 0) -> Iterator[T]:
    """Yield ``items``, reporting ``start + i`` of ``total`` done after the i-th (nothing if progress is None)."""
    if progress is None:
        yield from items
        return
    progress(stage, start, total)
    for done, item in enumerate(items, start + 1):
        yield item
        progress(stage, done, total)


def prefixed(progress: ProgressFn | None, prefix: str) -> ProgressFn | None:
    """The same callback with ``prefix`` before every stage name (e.g. which placement is replayed)."""
    if progress is None:
        return None
    return lambda stage, done, total: progress(f"{prefix}{stage}", done, total)


class TerminalProgress:
    """Rich progress bars on ``console``, one per stage: a :data:`ProgressFn` drawn while
    ``display`` (a context manager) is entered.

    Bars are transient (cleared when done) and never redirect stdout, so what a
    command prints on stdout (tables, ``--json``) is unaffected.
    """

    def __init__(self, console: Console) -> None:
        self.display = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True, redirect_stdout=False, redirect_stderr=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self.display.add_task(stage, total=total)
        self.display.update(self._tasks[stage], completed=done, total=total)


@contextlib.contextmanager
def terminal_progress(quiet: bool, console: Console | None = None) -> Iterator[ProgressFn | None]:
    """Bars on ``console`` (default: stderr) if it is a terminal and not ``quiet``; else None."""
    console = console or Console(stderr=True)
    if quiet or not console.is_terminal:
        yield None
        return
    bars = TerminalProgress(console)
    with bars.display:
        yield bars
