"""opsgate's server: the MCP edge, the settings, the CLI and the gate every tool call passes."""

import sys as _sys

__version__ = "0.1.0"


def _structlog_without_rich() -> None:
    """Import structlog with rich out of sight. When rich is installed (``opsgate audit`` draws its progress
    bars with it), structlog's console renderer and traceback helpers load rich's pretty-printer, traceback
    and syntax highlighter at import: about 20 ms of every start, for output our JSON log lines never use
    (their tracebacks are plain text). rich itself is importable again right after."""
    if "structlog" in _sys.modules or "rich" in _sys.modules:
        return
    _sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del _sys.modules["rich"]


_structlog_without_rich()
