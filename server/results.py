"""What a tool result may carry back to the assistant: data, capped.

Text that comes from the cluster or a model (annotations, condition messages,
image names, outputs) is data an attacker may have written. It goes back only
inside structured fields, each string capped, so a planted instruction arrives
quoted, short, and marked as cut; it is never spliced into our own prose.
"""

from __future__ import annotations

from typing import Any

MAX_STRING = 1024  # characters per string field in a result
MAX_TEXT = 16384  # characters of the text rendering


def cap_strings(value: Any, limit: int = MAX_STRING) -> Any:
    """Every string in a JSON-like value cut to ``limit`` characters, saying how much was cut."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"{value[:limit]}…[{len(value) - limit} more characters cut by opsgate]"
    if isinstance(value, dict):
        return {k: cap_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [cap_strings(v, limit) for v in value]
    return value


def cap_text(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}\n…[{len(text) - limit} more characters cut by opsgate]"
