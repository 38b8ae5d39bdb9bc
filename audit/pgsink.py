"""The audit sink in PostgreSQL: N server replicas write ONE hash chain, read and verified like a file.

Why PostgreSQL, and psycopg 3: the team server runs as several replicas behind one Service, and the
audit trail must be one chain across all of them; a database they all reach gives the one lock and
the one ordered, durable store that a file on one node cannot. psycopg 3 is the maintained libpq
adapter (the ``binary`` wheel carries libpq, so the container image needs no system package), with
real server-side parameters, transactions as context managers and ``COPY`` support.

The records are the file log's, byte for byte: the same bodies, sealed by ``chain.seal_next`` with
the same canonical JSON and hashes, each row holding the record's canonical line. So verify, query,
show, tail and export read rows as they read lines (``pgread.py``).

Rules, each held by a test in ``tests/pg/``:

* **One chain under a lock.** An append is one transaction: ``pg_advisory_xact_lock`` (one key for
  the chain), read the head (``ORDER BY seq DESC LIMIT 1``; under READ COMMITTED each statement sees
  what committed before the lock was granted), seal the records onto it, INSERT them, COMMIT. The lock
  is released only after the commit, so the next writer, in this process or another replica, chains
  onto it. The primary key on ``seq`` and an insert trigger that checks ``prev`` against the record
  before it make a fork impossible even for a writer that skipped the lock.
* **Acknowledged = committed.** ``append`` returns only after COMMIT returned, with
  ``synchronous_commit=on`` set on the session and the server's ``fsync`` checked at open: a record
  the gate was told is written survives a crash of the server, the replica or the database.
  A connection lost during COMMIT leaves the outcome unknown: the caller is told "not written" (the
  call is refused), and the record may still be there, as an unacknowledged one.
* **Group commit.** Calls arriving while this process commits queue and go in the next transaction
  together: one lock, one INSERT of many rows, one commit (the file log's leader idea, simpler: the
  connection is used by one thread at a time, the leader).
* **Append-only.** The server logs in as a role with INSERT and SELECT only; at open it refuses a role
  that could rewrite records (``pgschema.check_writer``). UPDATE/DELETE/TRUNCATE also meet a trigger.
* **Checkpoints, signed as for files** (``checkpoint.py``, Ed25519: every replica holds the same key
  from one Secret) go to ``opsgate.audit_checkpoint``: at open, at close and when ``seq`` crosses a
  multiple of ``checkpoint_every``, in the same transaction as the records they name.
* **No signing oracle.** Before any checkpoint signs a head, the records from the latest checkpoint
  signed by this key up to the head are walked: each intact, canonical, hashed and chained, and the
  record at the checkpointed seq with the signed hash. A table whose records were rewritten (by a
  superuser: the server cannot) is refused, never signed. Between checkpoints, each append checks that
  the record this writer last wrote or saw is still there with its hash.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .chain import GENESIS_HASH, canonical, is_hash, loads, record_hash, seal_next
from .checkpoint import Checkpoint, Signer, checkpoint_line, load_private_key, parse_checkpoint_line, ring_for
from .head import WriterHead
from .log import MAX_LINE_BYTES, AuditTrustError, AuditWriteError
from .pgschema import CHAIN_LOCK, check_writer
from .redact import redact_text

if TYPE_CHECKING:
    import psycopg

__all__ = ["PgAuditSink", "connect", "dsn_label"]

_MAX_BATCH = 512
PROBE_EVERY_S = 5.0
PROBE_TIMEOUT_S = 2.0

log = logging.getLogger("opsgate.audit")


def dsn_label(dsn: str) -> str:
    """``postgresql://user@host:port/dbname`` of a DSN: what logs, banners and records may show (never a
    password, whatever form the DSN takes: URL or ``key=value``)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:  # an unparsable DSN: say nothing of it but that
        return "postgresql://(unparsable DSN)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return redact_text(f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}")


def connect(dsn: str, *, autocommit: bool = False, connect_timeout: float = 10) -> psycopg.Connection[Any]:
    """A connection with ``synchronous_commit=on`` (a commit returns once it is durable) and no server-side
    prepared statements (a transaction-mode pooler, PgBouncer say, would hand them to another session).
    Raises AuditWriteError naming the database, never the password."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the extra not installed
        raise AuditWriteError("--audit-db needs psycopg: pip install 'opsgate[postgres]'") from exc
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=max(1, round(connect_timeout)),
                               prepare_threshold=None,
                               options="-c synchronous_commit=on", application_name="opsgate")
    except psycopg.Error as exc:
        raise AuditWriteError(f"cannot connect to audit database {dsn_label(dsn)}: {reason(exc, dsn)}") from None
    return conn


def reason(exc: BaseException, dsn: str | None = None) -> str:
    """A database error in one redacted line; given the ``dsn`` it was connecting with, with nothing of it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if dsn is not None:
        text = _without_dsn(text, dsn)
    return redact_text(text[:300])  # cut after the DSN is out: half a quoted password would match nothing


_QUOTED = re.compile(r""""[^"]*"|'[^']*'""")
_DSN_SEPARATORS = re.compile(r"""[\s=&?/:@,;'"\\]+""")
_DSN_WORDS = frozenset({"postgres", "postgresql", "true", "false", "disable", "allow", "prefer", "require"})


def _without_dsn(text: str, dsn: str) -> str:
    """libpq's and psycopg's connect errors quote what they complain about, and that can be the DSN's secret:
    ``missing "=" after "passwordS3cret"`` (a mistyped ``key=value``), an option's value, the whole URI, a
    host. Every quoted part goes (its host, user, port and database are in ``dsn_label`` anyway), and so does
    any other run of four or more characters of the DSN that is not a libpq keyword."""
    text = _QUOTED.sub(lambda m: m.group(0) if m.group(0) == '"="' else "(...)", text)
    keywords = _libpq_keywords()
    for piece in sorted(set(_DSN_SEPARATORS.split(dsn)) | {unquote(dsn)}, key=len, reverse=True):
        if len(piece) >= 4 and piece.lower() not in keywords:
            text = text.replace(piece, "(...)")
            if "%" in piece:
                text = text.replace(unquote(piece), "(...)")
    return text


@functools.cache
def _libpq_keywords() -> frozenset[str]:
    import psycopg

    return _DSN_WORDS | {d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()}


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def check_row(seq: int, line: bytes) -> dict[str, Any]:
    """One stored record on its own: JSON, canonical, at its row's seq, with valid chain fields and its hash.
    ValueError says what is wrong."""
    if len(line) > MAX_LINE_BYTES:
        raise ValueError("longer than the line limit")
    record = loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if canonical(record) != line:
        raise ValueError("not in RFC 8785 canonical form")
    if record.get("seq") != seq or isinstance(record.get("seq"), bool):
        raise ValueError(f"claims seq {record.get('seq')!r}")
    if not is_hash(record.get("prev")) or not is_hash(record.get("hash")):
        raise ValueError("no valid prev/hash")
    if record_hash(record) != record["hash"]:
        raise ValueError("hash does not match its content")
    return record


@dataclass
class _Pending:
    bodies: tuple[Mapping[str, Any], ...]
    wake: threading.Event = field(default_factory=threading.Event)
    records: list[dict[str, Any]] | None = None
    error: str | None = None
    done: bool = False


_Row = tuple[int, str, str, str | None, bytes]


def _seal_rows(batch: Sequence[_Pending], seq: int, prev: str) -> list[_Row]:
    """Rows for every body of ``batch``, consecutive from ``seq + 1`` after ``prev``; each entry gets its records.
    Raises _Unsealable when a body cannot be serialised (or is too long)."""
    rows: list[_Row] = []
    for entry in batch:
        records = []
        for body in entry.bodies:
            try:
                record, line = seal_next(body, seq + 1, prev)
            except (ValueError, TypeError, RecursionError) as exc:
                raise _Unsealable(f"audit record cannot be serialised: {exc}") from exc
            if len(line) >= MAX_LINE_BYTES:
                raise _Unsealable(f"audit record is {len(line) + 1} bytes, over the {MAX_LINE_BYTES} limit")
            call_id = record.get("call_id")
            rows.append((record["seq"], prev, record["hash"], call_id if isinstance(call_id, str) else None, line))
            seq, prev = record["seq"], record["hash"]
            records.append(record)
        entry.records = records
    return rows


class PgAuditSink(WriterHead):
    """The audit writer for ``--audit-db``: the gate's ``append``/``append_many``/``close`` on PostgreSQL.

    ``dsn``: a libpq URL or ``key=value`` string for the writer role (its password is a secret: only
    ``dsn_label`` of it is ever shown). ``signing_key``: the Ed25519 private key every replica shares.
    """

    def __init__(self, dsn: str, *, signing_key: Path, checkpoint_every: int = 1000) -> None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
        self._dsn = dsn
        self._label = dsn_label(dsn)
        self._every = checkpoint_every
        self._origin = f"opsgate.audit/{self._label.removeprefix('postgresql://')}/opsgate.audit_record"
        try:
            self._signer: Signer = load_private_key(signing_key)
        except (OSError, ValueError) as exc:
            raise AuditWriteError(f"cannot load the audit checkpoint key {signing_key}: {exc}") from exc
        self._ring = ring_for(self._signer)
        self._mutex = threading.Lock()
        self._idle = threading.Condition(self._mutex)  # close() waits on it for the last leader
        self._queue: list[_Pending] = []
        self._leading = False
        self._closed = False
        self._conn: psycopg.Connection[Any] | None = None
        self._last_seq = 0
        self._last_hash = GENESIS_HASH
        self._probed: tuple[float, str | None] | None = None  # (when, answer) of the last readiness probe
        self._conn = self._open()
        try:
            self._transaction([], "start")
        except BaseException:
            self._drop()
            raise

    # -- public: what the gate and the server use ------------------------------------------------

    @property
    def location(self) -> str:
        """What banners, whoami and logs show: the database (no password) and the table."""
        return f"{self._label} (opsgate.audit_record)"

    @property
    def dsn(self) -> str:
        """The DSN as given, for readers in this process (never to be logged: see ``location``)."""
        return self._dsn

    def problem(self) -> str | None:
        """For ``/readyz``: None when the database takes this role's records, else why not. A new short
        connection, at most every ``PROBE_EVERY_S`` (the answer is kept meanwhile): the writing connection
        belongs to whichever thread leads, and a probe must not queue behind a commit."""
        now = time.monotonic()
        with self._mutex:
            if self._probed is not None and now - self._probed[0] < PROBE_EVERY_S:
                return self._probed[1]
        try:
            with connect(self._dsn, connect_timeout=PROBE_TIMEOUT_S, autocommit=True) as conn:
                row = conn.execute("SELECT has_table_privilege('opsgate.audit_record', 'INSERT')").fetchone()
            answer = None if row is not None and row[0] else f"{self._label}: this role may not insert records"
        except AuditWriteError as exc:
            answer = str(exc)
        except Exception as exc:  # psycopg's errors (the table gone, ...)
            answer = f"{self._label}: {reason(exc)}"
        with self._mutex:
            self._probed = (now, answer)
        return answer

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Seal ``body`` as the next record of the shared chain; return it once its transaction committed."""
        return self._append((body,))[0]

    def append_many(self, bodies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Consecutive records, in one transaction: all or none (a read's decision and outcome)."""
        if not bodies:
            return []
        return self._append(tuple(bodies))

    def close(self) -> None:
        """Sign the head (``stop`` checkpoint) and close; later appends raise AuditWriteError.
        Records queued before the close are still written."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            while self._leading:
                self._idle.wait()
            self._leading = True
        try:
            self._transaction([], "stop")
        except AuditWriteError as exc:
            log.warning("audit database %s: no stop checkpoint: %s", self._label, exc)
        finally:
            self._drop()

    def __enter__(self) -> PgAuditSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PgAuditSink({self._label!r}, last_seq={self._last_seq})"

    # -- group commit ----------------------------------------------------------------------------

    def _append(self, bodies: tuple[Mapping[str, Any], ...]) -> list[dict[str, Any]]:
        """Queue; the first caller with nobody committing leads: it commits all that is queued in ONE
        transaction, then wakes the oldest caller still queued to lead the next (one lock, one commit per
        batch however many replicas and threads append)."""
        entry = _Pending(bodies)
        with self._mutex:
            if self._closed:
                raise AuditWriteError(f"audit database {self._label} is closed")
            self._queue.append(entry)
            lead = not self._leading
            self._leading = True
        if not lead:
            entry.wake.wait()  # until our batch is settled, or the lead is handed to us
        while not entry.done:
            entry.wake.clear()  # only the leader sets it, and we are the leader now
            self._lead()
            if not entry.done:
                entry.wake.wait()
        if entry.error is not None:
            raise AuditWriteError(entry.error)
        assert entry.records is not None
        return entry.records

    def _lead(self) -> None:
        with self._mutex:
            batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
        committed: list[_Pending] = []  # only these are told "written"
        try:
            try:
                self._transaction(batch, None)
                committed = batch
            except _Unsealable:  # one body cannot be written: it fails its own caller only
                for entry in batch:
                    try:
                        self._transaction([entry], None)
                        committed.append(entry)
                    except AuditWriteError as exc:
                        entry.error = str(exc)
            except AuditWriteError as exc:
                for entry in batch:
                    entry.error = str(exc)
        finally:
            written = {id(entry) for entry in committed}
            for entry in batch:
                if id(entry) not in written:  # whatever went wrong, even the unforeseen
                    entry.records = None
                    entry.error = entry.error or "audit record not written: the transaction did not complete"
            with self._mutex:
                successor = self._queue[0] if self._queue else None
                self._leading = successor is not None
                if successor is None:
                    self._idle.notify_all()
            for entry in batch:
                entry.done = True
                entry.wake.set()
            if successor is not None:
                successor.wake.set()  # not done: it leads the next batch

    # -- the transaction ------------------------------------------------------------------------

    def _open(self) -> psycopg.Connection[Any]:
        conn = connect(self._dsn)
        try:
            problems = check_writer(conn)
            fsync = conn.execute("SHOW fsync").fetchone()
            synchronous = conn.execute("SHOW synchronous_commit").fetchone()
            conn.rollback()
        except Exception as exc:
            conn.close()
            raise AuditWriteError(f"audit database {self._label}: {reason(exc)}") from None
        if fsync is None or fsync[0] != "on":
            problems.append("the database runs with fsync=off: a committed record may not survive a crash")
        if synchronous is None or synchronous[0] not in ("on", "remote_write", "remote_apply"):
            problems.append(f"synchronous_commit is {synchronous[0] if synchronous else '?'}, not on")
        if problems:
            conn.close()
            raise AuditWriteError(f"audit database {self._label} cannot be used: " + "; ".join(problems)
                                  + "; refusing to write the audit log there")
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # closing a broken connection
                conn.close()

    def _transaction(self, batch: Sequence[_Pending], event: str | None) -> None:
        """One transaction: lock, head, seal ``batch`` onto it, INSERT, checkpoint if due, COMMIT.

        ``event``: a checkpoint asked for (``start``/``stop``); ``every`` when the new head crosses a
        multiple of ``checkpoint_every``. A broken connection is dropped; the next call reconnects.
        """
        import psycopg

        if self._conn is None or self._conn.closed:
            self._drop()
            self._conn = self._open()
        conn = self._conn
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
                # The head, and (one round trip for both) the record this writer last wrote or saw.
                head = cur.execute("SELECT seq, hash, (SELECT hash FROM opsgate.audit_record WHERE seq = %s) "
                                   "FROM opsgate.audit_record ORDER BY seq DESC LIMIT 1", (self._last_seq,)).fetchone()
                seq, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
                self._check_known(seq, head[2] if head else None)
                rows = _seal_rows(batch, seq, prev)
                new_seq, new_hash = (rows[-1][0], rows[-1][2]) if rows else (seq, prev)
                if rows:
                    cur.executemany("INSERT INTO opsgate.audit_record (seq, prev, hash, call_id, line) "
                                    "VALUES (%s, %s, %s, %s, %s)", rows)
                if event is None and new_seq // self._every != seq // self._every:
                    event = "every"
                if event is not None:
                    self._checkpoint(conn, cur, new_seq, new_hash, event)
        except AuditWriteError:
            raise
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self._drop()
            raise AuditWriteError(f"audit database {self._label}: {reason(exc)}") from None
        self._last_seq, self._last_hash = new_seq, new_hash

    def _check_known(self, seq: int, known: str | None) -> None:
        """The head must not be behind what this writer saw, and the record it last wrote or saw (its hash now:
        ``known``) is unchanged."""
        if self._last_seq == 0:
            return
        if seq < self._last_seq:
            raise AuditWriteError(
                f"audit database {self._label} now ends at seq {seq}, behind seq {self._last_seq} written before: "
                "records were removed; refusing to append"
            )
        if known != self._last_hash:
            raise AuditWriteError(
                f"audit database {self._label}: record {self._last_seq} is not the one this writer wrote or saw: "
                "the table was rewritten; refusing to append; run `opsgate audit verify --audit-db`"
            )

    def _checkpoint(self, conn: Any, cur: Any, seq: int, digest: str, event: str) -> None:
        """Walk back to the latest checkpoint this key signed (see the module docstring), then sign the head."""
        self._vouch(conn, cur, seq, digest)
        stamp = Checkpoint(self._origin, seq, digest, _utc_now(), event)
        cur.execute("INSERT INTO opsgate.audit_checkpoint (size, line) VALUES (%s, %s)",
                    (seq, checkpoint_line(stamp, self._signer)))

    def _latest_own(self, conn: Any) -> Checkpoint | None:
        """The newest checkpoint with a good signature by this key (a server-side cursor: the table only grows)."""
        with conn.cursor(name="opsgate_checkpoints") as named:
            named.itersize = 64
            named.execute("SELECT line FROM opsgate.audit_checkpoint ORDER BY id DESC")
            for (line,) in named:
                try:
                    signed = parse_checkpoint_line(bytes(line))
                except (ValueError, RecursionError):
                    continue
                if self._ring.check(signed) is None:
                    return signed.checkpoint
        return None

    def _vouch(self, conn: Any, cur: Any, head: int, digest: str) -> None:
        found = self._latest_own(conn)
        where = f"audit database {self._label}"
        advice = ("Run `opsgate audit verify --audit-db DSN --pubkey KEY.pub` to see what differs; if the "
                  "checkpoints or the key were lost, restore them; otherwise keep the tables as evidence and "
                  "start a new database.")
        if found is None and head > 0:
            raise AuditTrustError(
                f"{where} holds records up to seq {head}, but no checkpoint signed by this server's key "
                f"({self.key_id}): the table may have been rewritten; refusing to sign its head. {advice}"
            )
        if found is not None and found.size > head:
            raise AuditTrustError(f"{where} ends at seq {head}, but the {found.event} checkpoint of {found.time} "
                                  f"signed seq {found.size}: records were removed. {advice}")
        anchor = found.head if found is not None and found.size > 0 else None
        first = found.size if anchor is not None and found is not None else 1
        seq, prev = first - 1, GENESIS_HASH
        try:
            for row_seq, raw in cur.execute(
                "SELECT seq, line FROM opsgate.audit_record WHERE seq >= %s ORDER BY seq", (first,)
            ).fetchall():
                record = check_row(int(row_seq), bytes(raw))
                if anchor is not None and row_seq == first:
                    if record["hash"] != anchor:
                        raise ValueError(f"record {row_seq} is not the one the checkpoint signed")
                elif row_seq != seq + 1 or record["prev"] != prev:
                    raise ValueError(f"record {row_seq} does not chain onto record {seq}")
                seq, prev = int(row_seq), record["hash"]
            if seq != head or prev != digest:
                raise ValueError(f"the walk from the checkpoint ends at seq {seq}, not at the head {head}")
        except (ValueError, RecursionError) as exc:
            raise AuditTrustError(f"{where} does not match its latest checkpoint: {exc}; refusing to sign its "
                                  f"head. {advice}") from None


class _Unsealable(AuditWriteError):
    """A body in the batch cannot be serialised: that caller fails alone."""
