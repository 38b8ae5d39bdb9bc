"""The errors of a policy file that cannot be used: one base, one shape, each naming the place to fix.

The model and policy files, ``bounds.toml`` and a decision table each fail the same way: a path,
the line when it is known, and one sentence. :class:`SourceError` is that shape, written once, with
one argument order; the subclasses only say which kind of file it was, so a caller that reports any
of them (``opsgate policy check``, doctor, a reload) catches the base.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BoundsError", "PolicyError", "SourceError", "TableError"]


class SourceError(Exception):
    """A file that cannot be used, with the place to fix it: ``path:line: message`` (line when known)."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        super().__init__(path, line, message)
        self.path = path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


class PolicyError(SourceError):
    """A model or policy file (model.conf, ``*.csv``, or the bounds.toml beside them) that cannot be loaded."""


class BoundsError(SourceError):
    """A bounds file (``bounds.toml``) that cannot be used."""


class TableError(SourceError):
    """A decision table (``opsgate policy test``) that cannot be run."""
