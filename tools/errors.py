"""The one error type tools raise for failures the caller can act on."""

from __future__ import annotations


class ToolError(Exception):
    """An expected failure: bad input found while running, a missing object, an API refusal.

    ``field`` and ``rule`` say what to fix; the gate turns this into a structured
    error result and an audited outcome, never a crash.
    """

    def __init__(self, message: str, *, code: str = "tool_error", field: str | None = None,
                 rule: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        self.rule = rule
