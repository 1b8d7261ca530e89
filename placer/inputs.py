"""Opening untrusted input files: regular files only, sizes capped, cheap facts first.

Every reader of a user-named file opens it here. A FIFO, a device (``/dev/zero``), a
socket or a directory where a file is expected is refused with one
:class:`~placer.errors.InputError` before a byte is read (the file is opened
non-blocking, so a FIFO without a writer cannot hang the open), and a file larger than
the reader's cap is refused from its size alone.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from placer.errors import InputError

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_TEXT_BYTES",
    "MAX_TOML_BYTES",
    "input_path",
    "open_input",
    "read_input_text",
    "regular_file",
]

MAX_TOML_BYTES = 1 << 20
"""Largest topology/model TOML file read (real ones are under 2 kB)."""
MAX_JSON_BYTES = 16 << 20
"""Largest JSON document (placement, metadata) read whole (a 4,096-GPU placement of 256
experts x 61 layers is about 6 MB)."""
MAX_TEXT_BYTES = 1 << 30
"""Largest text file read whole (an ESFT layer file; real ones are tens of MB)."""


def input_path(path: str | Path, field: str | None = None) -> Path:
    """``path`` as a :class:`Path`; an empty string (which would mean the current folder) is
    refused."""
    if isinstance(path, str) and not path.strip():
        raise InputError(None, field or "path", "empty path; expected a file or folder name")
    return Path(path)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "something other than a file"


@contextlib.contextmanager
def open_input(
    path: str | Path, what: str, max_bytes: int | None = None, field: str | None = None
) -> Iterator[IO[bytes]]:
    """``path`` opened for binary reading if it is a regular file of at most ``max_bytes``.

    what: the expected content, for messages (``"placement JSON"``).
    Raises :class:`InputError` naming ``path`` otherwise (missing, unreadable, not a
    regular file, too large).
    """
    path = input_path(path, field)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(path, field, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, field, f"expected a regular {what} file, got a directory") from None
    except OSError as err:
        raise InputError(path, field, f"cannot be opened ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(path, field, f"expected a regular {what} file, got {_kind(info.st_mode)}")
        if max_bytes is not None and info.st_size > max_bytes:
            raise InputError(path, field, f"{info.st_size:,} bytes exceed the {max_bytes:,}-byte "
                                          f"limit for a {what} file")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_input_text(path: str | Path, what: str, max_bytes: int, field: str | None = None) -> str:
    """The UTF-8 text of the regular file ``path`` (at most ``max_bytes``; see :func:`open_input`)."""
    with open_input(path, what, max_bytes, field) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as err:
            raise InputError(path, field, f"unreadable ({err.strerror or err})") from None
    if len(data) > max_bytes:
        raise InputError(path, field, f"more than {max_bytes:,} bytes (the limit for a {what} file)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, field, f"not UTF-8 text (byte {err.start})") from None


def regular_file(path: str | Path, what: str, max_bytes: int | None = None, field: str | None = None) -> Path:
    """``path`` after checking it is a regular file of at most ``max_bytes`` (for readers that
    take a path, not a handle; see :func:`open_input`)."""
    with open_input(path, what, max_bytes, field):
        return Path(path)
