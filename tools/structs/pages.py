"""Pagination of list results: a byte budget per page and opaque cursors bound to their listing."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, Final

from ..errors import ToolError

PAGE_BUDGET_BYTES: Final = 4096


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON, the unit of the page budget."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode())


def fit_page(sizes: Sequence[int], budget: int = PAGE_BUDGET_BYTES) -> int:
    """How many leading items fit in ``budget`` bytes (one comma between items); always at least one.

    At least one, so a single oversized row still makes progress instead of an empty page forever.
    """
    used = 0
    for count, size in enumerate(sizes):
        cost = size + (1 if count else 0)
        if count and used + cost > budget:
            return count
        used += cost
    return len(sizes)


_CURSOR_VERSION: Final = 1
CURSOR_MAX: Final = 1024


def encode_cursor(namespace: str, kind: str | None, after: str) -> str:
    """An opaque cursor: resume after object ``after`` in this namespace and kind filter."""
    body = json.dumps({"v": _CURSOR_VERSION, "ns": namespace, "k": kind, "a": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, namespace: str, kind: str | None) -> str:
    """The name to resume after. A cursor that is malformed, or from another listing, is refused."""

    def bad(why: str) -> ToolError:
        return ToolError(f"invalid cursor: {why}; pass next_cursor exactly as returned, or omit it to start over",
                         code="invalid_arguments", field="cursor", rule="invalid-cursor")

    if len(cursor) > CURSOR_MAX:
        raise bad("too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad("not a cursor from list_workloads") from None
    if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION or not isinstance(data.get("a"), str):
        raise bad("not a cursor from list_workloads")
    if data.get("ns") != namespace or data.get("k") != kind:
        raise bad("it belongs to a listing of another namespace or kind")
    after: str = data["a"]
    return after
