"""Logging, configured in one place: structlog JSON lines on stderr.

stdout is the MCP channel over stdio, so nothing here may ever write to it;
stdlib loggers (the MCP SDK's, httpx's) are routed through the same JSON
renderer so a client sees one format on stderr. Every line passes through the
audit log's redaction just before it is rendered: an error text from the
cluster or a model server, a URL or an argument must not carry a secret to stderr.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import EventDict, WrappedLogger

from opsgate.audit.redact import redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def redact_event(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """Last step before rendering: secrets out of every key and value of the line, as in the audit log."""
    cleaned: EventDict = redact(event)
    return cleaned


def configure_logging(level: str = "info") -> None:
    """Idempotent; safe to call again when settings change the level."""
    numeric = _LEVELS.get(level, logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_event, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_event,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # The SDK logs every tool call at INFO; keep third-party chatter at WARNING.
    root.setLevel(max(numeric, logging.WARNING))
