"""Atomic file output: write to a temporary file beside the target, then rename.

The target, if it exists, must be a regular file (a device, FIFO or folder is never
replaced). Temporaries are named ``.<target name>.<pid>.<random>.tmp`` so the next write to a
target removes those a killed writer left behind (their process is gone) without touching a
concurrent writer's. Failures of the file system (read-only, full, permission, a name too
long) become one :class:`InputError` line naming the target; the old file is left intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from placer.errors import InputError

__all__ = [
    "WrittenFiles",
    "atomic_output",
    "check_output",
    "recording_outputs",
    "refuse_overwriting_input",
    "write_text_atomic",
]

#: longest target-name part of a temporary name, in bytes (file names are limited to 255)
_NAME_BYTES = 120
class WrittenFiles(list):
    """Files completed with :func:`atomic_output` inside a :func:`recording_outputs` block."""

    def existing(self) -> list[str]:
        """The files that still exist (a write into a staging folder since removed is not
        listed), in the order written, without repeats."""
        return list(dict.fromkeys(str(p) for p in self if p.exists()))


#: the lists of the :func:`recording_outputs` blocks now open
_RECORDERS: list[WrittenFiles] = []


@contextlib.contextmanager
def recording_outputs() -> Iterator[WrittenFiles]:
    """Record every file completed inside the block (what an interrupted command did write)."""
    written = WrittenFiles()
    _RECORDERS.append(written)
    try:
        yield written
    finally:
        _RECORDERS.remove(written)


def check_output(path: str | Path, field: str = "out") -> None:
    """Before any work: ``path`` can be an output (non-empty; not an existing folder, device
    or FIFO). Raises :class:`InputError`."""
    if not str(path).strip():
        raise InputError(None, field, "empty path; expected a file name")
    _check_target(Path(path))


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched. Raises
    :class:`InputError` if ``path`` exists and is not a regular file, or if the file system
    refuses the write.
    """
    check_output(path)
    target = Path(path)
    tmp_name = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = _temp_prefix(target.name)
        _remove_stale(target.parent, prefix)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}.", suffix=".tmp", dir=target.parent)
        os.chmod(tmp_name, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _check_target(target)
        os.replace(tmp_name, target)
        tmp_name = None
        for written in _RECORDERS:
            written.append(target)
    except OSError as err:
        raise InputError(target, None, f"cannot write ({err.strerror or err}); "
                                       "any previous file there is unchanged") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _check_target(target: Path) -> None:
    """Refuse a target that exists and is not a regular file (or a link to one)."""
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as err:
        raise InputError(target, None, f"cannot write ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise InputError(target, None, f"is {kind}; refusing to replace it with a file")


def _temp_prefix(name: str) -> str:
    """``.<name>.``, the name shortened (with a hash of it) if it would make a name too long."""
    if len(name.encode()) > _NAME_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = name.encode()[:_NAME_BYTES - 13].decode(errors="ignore") + "-" + digest
    return f".{name}."


def _remove_stale(folder: Path, prefix: str) -> None:
    """Delete temporaries ``<prefix><pid>.*.tmp`` whose writing process no longer exists."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            pid = name[len(prefix):].split(".", 1)[0]
            if pid.isdigit() and pid.isascii() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path, "w") as handle:
        handle.write(text)


def refuse_overwriting_input(out: str | Path, *inputs: str | Path) -> None:
    """Raise :class:`InputError` if ``out`` names one of the command's inputs, or an ``.npz``
    file inside an input folder of ``.npz`` shards (it would join the trace it was made from)."""
    target = Path(out).resolve()
    for given in inputs:
        if given is None or not str(given):
            continue
        source = Path(given).resolve()
        joins = target.suffix == ".npz" and source in target.parents and any(source.glob("*.npz"))
        if source == target or joins:
            raise InputError(out, "out", f"would overwrite the input {given}")
