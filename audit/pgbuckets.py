"""Rate-limit buckets in the audit database, so every replica of the team server spends one budget.

Why here: this package owns the database (its connection, its schema, its roles: ``pgschema``), and
``policies`` stays free of it; ``policies.ratelimit.SharedRateLimiter`` holds the bucket rule and
asks a store for one atomic step (``BucketStore``), which this class is. The server wires them.

One step = one short transaction: ``SELECT ... FOR UPDATE`` of the bucket's row (replicas queue on
the row lock, not on a table lock), the database's clock (``clock_timestamp()``: one clock for every
replica), the rule, then INSERT or UPDATE. A new bucket inserted by two replicas at once: the loser's
``ON CONFLICT DO NOTHING`` inserts nothing and it steps again on the winner's row. Buckets are not
evidence, so these commits are asynchronous (``synchronous_commit=off``): a database crash may forget
the last few tokens spent, never an audit record. Idle buckets (full again after a minute) are
deleted now and then, so the table holds only principals active in the last minute.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .log import AuditWriteError
from .pgsink import connect, dsn_label, reason

if TYPE_CHECKING:
    import psycopg

__all__ = ["PgBucketStore"]

_T = TypeVar("_T")
_Bucket = tuple[float, float]  # (tokens, time of last update), as policies.ratelimit keeps it
_PRUNE_EVERY = 1000
_IDLE_SECONDS = 60.0


class PgBucketStore:
    """``BucketStore`` over ``opsgate.rate_bucket``; one connection, one step at a time per process."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._steps = 0

    def update(self, key: str, step: Callable[[_Bucket | None, float], tuple[_Bucket, _T]]) -> _T:
        """One atomic step of the bucket under ``key`` (see the module docstring); AuditWriteError if the
        database cannot be used (the shared limiter then refuses the call)."""
        import psycopg

        with self._lock:
            if self._conn is None or self._conn.closed:
                fresh = connect(self._dsn, autocommit=True, connect_timeout=3)  # a refusal soon, not a stall
                try:
                    fresh.execute("SET synchronous_commit = off")  # this session writes buckets only
                except psycopg.Error as exc:
                    fresh.close()
                    raise AuditWriteError(f"rate-limit store {dsn_label(self._dsn)}: {reason(exc)}") from None
                self._conn = fresh
            conn = self._conn
            try:
                for _ in range(3):
                    with conn.transaction():
                        row = conn.execute(
                            "SELECT tokens, stamp, extract(epoch FROM clock_timestamp())::float8 "
                            "FROM opsgate.rate_bucket WHERE key = %s FOR UPDATE", (key,)
                        ).fetchone()
                        if row is None:
                            clock = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
                            assert clock is not None
                            (tokens, stamp), result = step(None, float(clock[0]))
                            inserted = conn.execute(
                                "INSERT INTO opsgate.rate_bucket (key, tokens, stamp) VALUES (%s, %s, %s) "
                                "ON CONFLICT (key) DO NOTHING RETURNING key", (key, tokens, stamp)
                            ).fetchone()
                            if inserted is None:
                                continue  # another replica made it first: step again on its row
                        else:
                            (tokens, stamp), result = step((float(row[0]), float(row[1])), float(row[2]))
                            conn.execute("UPDATE opsgate.rate_bucket SET tokens = %s, stamp = %s WHERE key = %s",
                                         (tokens, stamp, key))
                        self._steps += 1
                        if self._steps % _PRUNE_EVERY == 0:
                            conn.execute("DELETE FROM opsgate.rate_bucket WHERE stamp < "
                                         "extract(epoch FROM clock_timestamp()) - %s", (_IDLE_SECONDS,))
                    return result
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    self._conn = None
                raise AuditWriteError(f"rate-limit store {dsn_label(self._dsn)}: {reason(exc)}") from None
            raise AuditWriteError(f"rate-limit store {dsn_label(self._dsn)}: bucket {key!r} kept changing")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()
