"""The stdin edge: lines the SDK's parser would drop are turned into calls the gate can refuse.

The SDK's stdio reader parses each line with pydantic, which gives up on JSON
nested past about 200 levels; such a message is dropped without an answer, so
the client waits forever and the audit log never hears of it. We look at each
line first (a linear scan, no recursion): a request nested deeper than any real
call keeps its id, method and tool name, and its arguments are replaced by a
marker, so it reaches the gate, is refused as invalid, audited, and answered.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import AsyncIterator
from io import TextIOWrapper
from typing import Any

import anyio

MAX_DEPTH = 64  # deeper than any real tool call; far below what the SDK's parser can take


def nesting_depth(line: str) -> int:
    """Deepest [ / { nesting outside strings, in one pass."""
    depth = deepest = 0
    in_string = escaped = False
    for char in line:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def screen_line(line: str, max_depth: int = MAX_DEPTH) -> str:
    """The line itself, or, for a too-deep request whose envelope we can read, the same request disarmed."""
    if line.count("[") + line.count("{") <= max_depth or nesting_depth(line) <= max_depth:
        return line
    try:
        message: Any = json.loads(line)
    except (ValueError, RecursionError):
        return line  # no id to answer: the SDK reports it as it does any unreadable line
    if not isinstance(message, dict) or "id" not in message:
        return line
    params = message.get("params")
    if not isinstance(params, dict):
        params = {}
    digest = hashlib.sha256(line.encode("utf-8", "replace")).hexdigest()
    rejected = {"too_deep": f"nested deeper than {max_depth} levels", "bytes": len(line), "sha256": digest}
    disarmed = {
        "jsonrpc": "2.0",
        "id": message["id"],
        "method": message.get("method"),
        "params": {"name": str(params.get("name", "")), "arguments": {"__rejected__": rejected}},
    }
    return json.dumps(disarmed, separators=(",", ":")) + "\n"


class ScreenedStdin:
    """An async line source over the process's stdin for ``stdio_server(stdin=...)``."""

    def __init__(self) -> None:
        self._file = anyio.wrap_file(TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"))

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        async for line in self._file:
            yield screen_line(line)
