"""The sandbox's logger: structlog, and never stdout.

stdout of the opsgate process is the MCP channel. When the application has
configured structlog we use its configuration; until then (tests, a library
user) structlog's default would print to stdout, so we write to stderr.
"""

from __future__ import annotations

import sys
from typing import Any

import structlog


class _StderrSafeLogger:
    """Resolves the logger at each call, so configuring structlog later still takes effect."""

    def __getattr__(self, method: str) -> Any:
        if structlog.is_configured():
            return getattr(structlog.get_logger("opsgate.sandbox"), method)
        return getattr(structlog.wrap_logger(structlog.PrintLogger(sys.stderr)), method)


log = _StderrSafeLogger()
