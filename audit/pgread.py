"""Reading the audit chain in PostgreSQL as the file log is read: records for query/show/export, the last
records and new ones for tail, and verify.

Rows come out in ``seq`` order as :class:`~opsgate.audit.query.Located` records, the same shape the
file readers give, so every consumer of records (query, show, tail, OCSF export) works on either.
``path`` is the table's name and ``line`` the row's place in seq order.

Verify is the file verifier itself (``verify.verify_audit``), not a second implementation: in one
REPEATABLE READ transaction (records and checkpoints as of one moment) the rows are copied, in seq
order, into a private temporary folder as a log file and a checkpoints file, and that is verified. A
row's line in the copy is its place in seq order, so "line N" in a report is the N-th row; the report
names the table instead of the copy. Disk use is the size of the log, for as long as verify runs.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import KeyRing
from .log import AuditWriteError
from .pgsink import connect, dsn_label, reason
from .query import Located

if TYPE_CHECKING:
    from .verify import VerifyReport

__all__ = ["RECORDS", "pg_follow", "pg_last_records", "pg_records", "pg_verify"]

RECORDS = Path("opsgate.audit_record")
CHECKPOINTS = Path("opsgate.audit_checkpoint")


def _located(seq: int, raw: bytes) -> Located | None:
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return Located(RECORDS, seq, record, raw) if isinstance(record, dict) else None


@contextmanager
def _database_errors(dsn: str) -> Iterator[None]:
    """A failed query as AuditWriteError naming the database (redacted), as a failed connect already is."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise AuditWriteError(f"audit database {dsn_label(dsn)}: {reason(exc)}") from None


def _rows(dsn: str, sql: str, params: tuple[Any, ...], *, itersize: int = 2000) -> Iterator[tuple[int, bytes]]:
    """Rows of ``sql`` through a server-side cursor: memory bounded however long the table is."""
    with _database_errors(dsn), connect(dsn) as conn, conn.transaction(), conn.cursor(name="opsgate_read") as cur:
        cur.itersize = itersize
        cur.execute(sql, params)
        for seq, line in cur:
            yield int(seq), bytes(line)


def pg_records(dsn: str, *, call_id_prefix: str | None = None) -> Iterator[Located]:
    """Every record in chain order (unparseable rows skipped, as the file reader skips lines; verify judges).
    ``call_id_prefix``: only the records of calls whose id starts so (an index serves it)."""
    if call_id_prefix is None:
        rows = _rows(dsn, "SELECT seq, line FROM opsgate.audit_record ORDER BY seq", ())
    else:
        pattern = call_id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = _rows(dsn, "SELECT seq, line FROM opsgate.audit_record WHERE call_id LIKE %s ORDER BY seq",
                     (pattern,))
    for seq, raw in rows:
        located = _located(seq, raw)
        if located is not None:
            yield located


def pg_last_records(dsn: str, count: int) -> list[Located]:
    """The last ``count`` records, oldest first."""
    if count <= 0:
        return []
    with _database_errors(dsn), connect(dsn) as conn:
        rows = conn.execute("SELECT seq, line FROM opsgate.audit_record ORDER BY seq DESC LIMIT %s",
                            (count,)).fetchall()
    found = (_located(int(seq), bytes(line)) for seq, line in reversed(rows))
    return [located for located in found if located is not None]


def pg_follow(dsn: str, emit: Callable[[Located], None], *, poll: float = 0.5,
              stop: Callable[[], bool] = lambda: False) -> None:
    """Call ``emit`` for each record committed from now on, in seq order, until ``stop()``.

    Polls for rows past the last seq seen: a chain has no gaps, so nothing committed is skipped (a
    transaction commits its rows in one piece, under the chain lock, in seq order).
    """
    with _database_errors(dsn), connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM opsgate.audit_record").fetchone()
        last = int(row[0]) if row else 0
        while not stop():
            rows = conn.execute("SELECT seq, line FROM opsgate.audit_record WHERE seq > %s ORDER BY seq LIMIT 1000",
                                (last,)).fetchall()
            for seq, line in rows:
                last = int(seq)
                located = _located(last, bytes(line))
                if located is not None:
                    emit(located)
            if not rows:
                time.sleep(poll)


def pg_verify(dsn: str, *, keys: KeyRing | None = None) -> VerifyReport:
    """``verify_audit`` of the chain and the checkpoints as of one moment; the report names the tables."""
    from psycopg import IsolationLevel

    from .verify import verify_audit

    with tempfile.TemporaryDirectory(prefix="opsgate-verify-") as folder:
        log_path, cp_path = Path(folder) / "audit.jsonl", Path(folder) / "audit.checkpoints"
        with _database_errors(dsn), connect(dsn) as conn:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ  # one snapshot for both tables
            with conn.transaction():
                with open(cp_path, "wb") as out, conn.cursor(name="opsgate_cp") as cur:
                    cur.execute("SELECT line FROM opsgate.audit_checkpoint ORDER BY id")
                    for (line,) in cur:
                        out.write(bytes(line) + b"\n")
                with open(log_path, "wb") as out, conn.cursor(name="opsgate_records") as cur:
                    cur.itersize = 5000
                    cur.execute("SELECT line FROM opsgate.audit_record ORDER BY seq")
                    for (line,) in cur:
                        out.write(bytes(line) + b"\n")
        report = verify_audit(log_path, keys=keys, checkpoints=cp_path)  # in parallel when the copy is large
    summary = report.checkpoints
    if summary is not None:
        summary = dataclasses.replace(summary, path=CHECKPOINTS)
    return dataclasses.replace(
        report,
        file=(CHECKPOINTS if report.file == cp_path else RECORDS) if report.file is not None else None,
        files=(RECORDS,),
        checkpoints=summary,
    )


def pg_last_matching(dsn: str, keep: Callable[[dict[str, Any]], bool], limit: int,
                     *, max_bytes: int) -> list[dict[str, Any]]:
    """The last ``limit`` records ``keep`` accepts, oldest first, reading back from the head at most about
    ``max_bytes`` of records (as ``query.last_matching`` does for files)."""
    found: list[dict[str, Any]] = []
    budget = max_bytes
    with _database_errors(dsn), connect(dsn) as conn, conn.transaction(), \
            conn.cursor(name="opsgate_recent") as cur:
        cur.itersize = 500
        cur.execute("SELECT line FROM opsgate.audit_record ORDER BY seq DESC")
        for (line,) in cur:
            raw = bytes(line)
            budget -= len(raw) + 1
            located = _located(0, raw)
            if located is not None and keep(located.record):
                found.append(located.record)
            if len(found) >= limit or budget <= 0:
                break
    found.reverse()
    return found
