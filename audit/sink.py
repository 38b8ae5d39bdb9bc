"""What the gate writes to: the one audit writer protocol, with two sinks (the file log, PostgreSQL).

The gate and the server use only ``AuditSink``; :class:`~opsgate.audit.log.AuditLog` (JSON Lines
files, the default, and what stdio uses) and :class:`~opsgate.audit.pgsink.PgAuditSink` (the team
server's shared chain) both provide it, with the same records, hashes and checkpoints. The two
functions below are what the server's own tools read back, from either sink.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .log import AuditLog

__all__ = ["AuditSink", "recent_records", "sink_location", "sink_problem"]


class AuditSink(Protocol):
    """Append-only, durable on return, fail closed (AuditWriteError: the caller must not run what it describes)."""

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    def append_many(self, bodies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...

    @property
    def checkpoint_key(self) -> dict[str, str]: ...


def sink_location(sink: AuditSink) -> str:
    """Where the log is, as banners, logs and ``whoami`` show it (a database without its password)."""
    if isinstance(sink, AuditLog):
        return str(sink.path)
    return str(getattr(sink, "location", type(sink).__name__))


def sink_problem(sink: AuditSink) -> str | None:
    """For ``/readyz``: why the sink cannot take records now, or None. The file log: writable. The database:
    reachable and this role may insert (``PgAuditSink.problem``, probed at most every few seconds). Blocking:
    call it from a worker thread."""
    if isinstance(sink, AuditLog):
        return None if os.access(sink.path, os.W_OK) else f"not writable: {sink.path}"
    probe = getattr(sink, "problem", None)
    return probe() if callable(probe) else None


def recent_records(sink: AuditSink, keep: Callable[[dict[str, Any]], bool], limit: int,
                   *, max_bytes: int) -> list[dict[str, Any]]:
    """The last ``limit`` records ``keep`` accepts, oldest first, read back within a bounded budget."""
    if isinstance(sink, AuditLog):
        from .query import last_matching

        return last_matching(sink.path, keep, limit, max_bytes=max_bytes)
    from .pgread import pg_last_matching
    from .pgsink import PgAuditSink

    assert isinstance(sink, PgAuditSink)
    return pg_last_matching(sink.dsn, keep, limit, max_bytes=max_bytes)
