"""The one error type tools raise for failures the caller can act on."""

from __future__ import annotations


class ToolError(Exception):
    """An expected failure: bad input found while running, a missing object, an API refusal.

    ``field`` and ``rule`` say what to fix; the gate turns this into a structured
    error result and an audited outcome, never a crash. ``status`` is the HTTP status of the
    answer the failure came from (the cluster's API, a model server), None when there was none;
    ``causes`` the fields an API refused (a 422's ``details.causes``), each ``{"field", "message", ...}``.
    """

    def __init__(self, message: str, *, code: str = "tool_error", field: str | None = None,
                 rule: str | None = None, status: int | None = None,
                 causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        self.rule = rule
        self.status = status
        self.causes: list[dict[str, str]] = causes or []
