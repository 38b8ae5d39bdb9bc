"""What a running tool may know about its call. Plain data, so tools never import the server."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

ProgressFn = Callable[[float, float | None, str | None], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class CallContext:
    call_id: str
    principal: str
    client: str | None = None
    report_progress: ProgressFn | None = None
