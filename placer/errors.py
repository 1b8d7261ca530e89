"""The one exception type that crosses the API boundary for bad input."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: names the source (file), the field and what was expected.

    The CLI prints ``str(err)`` on one line and exits with code 2.
    """

    def __init__(self, source: str | Path | None, field: str | None, message: str) -> None:
        self.source = str(source) if source is not None else None
        self.field = field
        self.message = message
        parts = [p for p in (self.source, self.field) if p]
        super().__init__(": ".join([*parts, message]))

    def __reduce__(self) -> tuple:
        """Pickle by the constructor's arguments (errors raised on Dask workers reach the client)."""
        return type(self), (self.source, self.field, self.message)


class InfeasibleError(ValueError):
    """A placement request no assignment can satisfy; the message says why and what is achievable."""
