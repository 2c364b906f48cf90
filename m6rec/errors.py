"""Errors a user can act on. The CLI prints them as one line, without a traceback."""

from __future__ import annotations


class M6RecError(Exception):
    """Base class for errors caused by input or configuration rather than by a bug."""

    hint: str | None = None

    def __init__(self, message: str = "", *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class DataError(M6RecError, ValueError):
    """A problem in an input file, located by file and (where known) row."""

    def __init__(self, file: str, problem: str, *, location: str | None = None, hint: str | None = None):
        self.file = file
        self.problem = problem
        self.location = location
        self.hint = hint
        where = f"{file}: {location}" if location else file
        super().__init__(f"{where}: {problem}")


class ConfigError(M6RecError, ValueError):
    """A bad configuration key or value."""
