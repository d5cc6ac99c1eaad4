"""One exception type for mistakes a user can fix; the CLI turns it into one line and its exit code (2)."""

from __future__ import annotations


class AutopruneError(Exception):
    """A user-facing error: bad input, a missing file, an unreachable storage.

    Args:
        message: what was wrong and what was expected.
        source: the file (or other input) the mistake is in, if any.
        field: the dotted field inside that file, if any.
    """

    exit_code = 2  # the CLI's exit status for this error: bad input

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        self.message = message
        self.source = source
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.source and self.field:
            where = f"{self.source}: {self.field}: "
        elif self.source:
            where = f"{self.source}: "
        elif self.field:
            where = f"{self.field}: "
        return (where + self.message).replace("\n", " ")


class ConfigError(AutopruneError):
    """A study or search-space file that does not validate."""


class SearchFailedError(AutopruneError):
    """The search stopped because the first trials of a run all failed: the input validated but the trials broke
    (the CLI exits 1, not 2)."""

    exit_code = 1


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """``"TypeName: first non-blank line of the message"`` (just the type name when the message is empty).

    >>> first_line(ValueError("bad value\\nmore detail"))
    'ValueError: bad value'
    >>> first_line(RuntimeError(""))
    'RuntimeError'
    """
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    if limit is not None:
        text = text[:limit]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
