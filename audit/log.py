"""The audit log writer: one hash chain in append-only JSON Lines segments, with signed checkpoints.

Durability and ordering rules, each held by a test in ``tests/test_audit_*.py``:

* :meth:`AuditLog.append` returns only once its record is written and
  ``fsync``-ed, so the gate runs a write only after its decision is on disk.
  :meth:`AuditLog.append_many` does the same for several records at once,
  consecutive in the chain, in one write and one fsync, all or none (a read's
  decision and outcome, SCHEMA.md "One fsync for a read").
* **The lone caller.** When no thread is writing, nobody is queued either:
  the caller takes the lead and the file lock, serialises its record with
  its real seq and prev (``chain.seal_next``), writes it, lets go of both,
  and fsyncs. That is the path of every record when calls come one at a time.
* **Group commit, fsync outside the lock.** Threads calling ``append`` while
  another writes serialise their bodies in their own threads, outside any
  lock (``chain.prepare``), queue them and sleep. The writing thread, the
  *leader*, seals every record queued so far in order (consecutive seq, each
  ``prev`` the hash before), writes them with ONE ``write`` of whole lines on
  the ``O_APPEND`` descriptor, hands the lead to the oldest caller still
  queued (the file lock with it, a few batches in a row at most) and only
  then fsyncs: the next batch is written while this one's fsync runs.
* **Acknowledged per offset.** A record is acknowledged only once an fsync
  that *began after its write* returned; one fsync acknowledges every record
  written before it began. Up to ``_SYNCS`` fsyncs of a file run at once
  (journaling filesystems share the work of concurrent fsyncs), each on a
  descriptor of its own: Linux reports a writeback error once per open file
  description, so two fsyncs on one could let one succeed for pages the other
  was told were lost. A caller whose record no running fsync covers sleeps
  until one returns and hands it the next. One wake-up per waiting caller.
* **A failed write or fsync loses the file.** Every record written through it
  and not yet acknowledged is refused, also when an fsync running beside the
  failed one returns success afterwards, and the descriptor is never used
  again. Unacknowledged bytes on disk after a power loss can now span the
  last few batches, not just the last one: a torn last line is sealed on
  reopen as before; a gap inside them (a filesystem that does not order
  appending writes) makes the next open refuse the log (fail closed). No
  acknowledged record is ever affected.
* The leader hand-off orders threads and an exclusive ``flock`` orders
  processes; on taking the lock the writer re-reads the tail whenever the file
  size is not what it last left, so several processes extend ONE chain.
* After a failed ``write``/``fsync`` the descriptor is never used again: the
  kernel may have dropped the dirty pages and a retried ``fsync`` can report
  success for data that is gone. The next append reopens the file, re-reads
  and re-checks the tail, and only then goes on.
* A last line without its newline is a torn write from a crash. It is sealed
  by appending a newline and a ``recovery`` record that names it (line number
  in its file, length, SHA-256) and chains to the last good record; old bytes
  are never rewritten or removed.
* The writer refuses (fails closed) when the tail it would chain onto is not a
  valid record, or when the file shrank, vanished or was replaced under it.
* **Rotation.** With ``max_segment_bytes`` set, a batch that would take the live
  file past that size first renames it to the next numbered segment
  (``audit.jsonl.000001``, ...; made read-only) and starts a new live file;
  the chain simply continues. A writer that finds its file renamed to a
  segment by another process follows to the new live file.
* **Checkpoints.** A signed (seq, hash) of the head goes to
  ``<log>.checkpoints`` when the log is opened, closed, rotated and every
  ``checkpoint_every`` records (see ``checkpoint.py``). A checkpoint that cannot
  be written at open stops the open; later ones are retried after the next
  batch and never fail an append whose record is durable.
* **No signing oracle.** Before its start checkpoint signs the head, the
  writer reads back the latest checkpoint signed by its own key and walks the
  chain back from the head to it: the record at that seq must have the signed
  hash and every record after it must chain from it. A non-empty log with no
  such checkpoint, or one it does not match, is refused (``AuditTrustError``):
  someone who can write the log folder cannot rewrite the log, drop the
  checkpoints and have the next start sign the forgery. The walk reads only
  the records after that checkpoint (at most about ``checkpoint_every``).
  Likewise, when the log grew under a running writer (another process
  appended), the new records must chain back to the head it knew; a log
  rewritten in place is refused, not extended and later signed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from opsgate import telemetry

from .chain import GENESIS_HASH, Prepared, canonical, is_hash, loads, prepare, record_hash, seal_line, seal_next
from .checkpoint import (
    Checkpoint,
    HmacSigner,
    SignedCheckpoint,
    Signer,
    checkpoint_line,
    load_or_create_hmac_key,
    load_private_key,
    parse_checkpoint_line,
    ring_for,
)
from .head import WriterHead
from .segments import checkpoints_path, hmac_key_path, list_segments, segment_path

__all__ = ["MAX_LINE_BYTES", "SCHEMA_VERSION", "AuditLog", "AuditTrustError", "AuditWriteError"]

SCHEMA_VERSION = 2
"""Version of the record schema in SCHEMA.md; the ``v`` of records this module writes (recovery)."""

MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest line the writer produces or accepts at the tail; bounds memory when reading back."""

_TAIL_WINDOW = 4096
_COUNT_CHUNK = 1 << 20
_MAX_BATCH = 1024
_MAX_BATCH_BYTES = 8 * 1024 * 1024
_KEEP_LOCK = 4  # batches in a row the file lock passes from leader to leader before other processes get a turn
_CARRY_ON = 2  # fsyncs a caller runs for records written after its own, before it returns
_SYNCS = 4  # fsyncs of one file in flight at once, each on a descriptor of its own (see _File)
_CHAIN_OVERHEAD = 180  # bytes the chain members add to a line (hash, prev, seq up to 16 digits, commas)
_FOLLOW_LIMIT = 16

log = logging.getLogger("opsgate.audit")


class AuditWriteError(Exception):
    """The record was not made durable; the caller must not run the tool it describes."""


class AuditTrustError(AuditWriteError):
    """At open: the log on disk is not the one its checkpoints vouch for, so this writer will not sign its head.

    The message names what does not match and what an operator can do.
    """


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    """``pread`` that loops until ``length`` bytes are read (short only if the file shrank)."""
    parts: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise OSError(errno.EIO, "audit log shrank while its tail was being read")
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _read_tail(fd: int, size: int) -> tuple[bytes | None, bytes | None]:
    """Return (last newline-terminated line without its newline or None, torn bytes or None).

    Reads backwards from the end in a growing window, so the cost depends on the
    length of the last line or two, not on the size of the file.
    """
    window = _TAIL_WINDOW
    while True:
        start = max(0, size - window)
        buf = _pread_exact(fd, size - start, start)
        if buf.endswith(b"\n"):
            torn: bytes | None = None
            end = len(buf) - 1
        else:
            end = buf.rfind(b"\n")
            if end < 0 and start > 0:
                window = _grow(window)
                continue
            torn = buf[end + 1 :]
        if end < 0:
            return None, torn  # the whole file is one unterminated line
        begin = buf.rfind(b"\n", 0, end) + 1
        if begin == 0 and start > 0:
            window = _grow(window)
            continue
        return buf[begin:end], torn


def _lines_back(fd: int, size: int, *, cap: int) -> Iterator[bytes]:
    """The lines of the first ``size`` bytes of ``fd``, last first, without newlines (a final unterminated
    piece counts as a line). Reads backwards in chunks; a line longer than ``cap`` raises ValueError."""
    pos = size
    pending = b""
    window = _TAIL_WINDOW  # most walks need the last few records only: grow the reads as the walk goes on
    while pos > 0:
        length = min(window, pos)
        window = min(window * 2, _COUNT_CHUNK)
        pos -= length
        data = _pread_exact(fd, length, pos) + pending
        if pos + length == size and data.endswith(b"\n"):
            data = data[:-1]  # the newline that ends the last line
        parts = data.split(b"\n")
        pending = parts[0]
        if len(pending) > cap:
            raise ValueError(f"a line longer than {cap} bytes")
        yield from reversed(parts[1:])
    if size:
        yield pending


def _grow(window: int) -> int:
    if window >= 2 * MAX_LINE_BYTES + 2:
        raise AuditWriteError(f"the last line of the audit log is longer than {MAX_LINE_BYTES} bytes")
    return window * 2


def _count_newlines(fd: int, size: int) -> int:
    """Number of b"\\n" in the first ``size`` bytes (only needed to name a torn line)."""
    count = 0
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(_COUNT_CHUNK, size - offset), offset)
        if not chunk:
            break
        count += chunk.count(b"\n")
        offset += len(chunk)
    return count


def _check_record(line: bytes) -> dict[str, Any]:
    """Parse a tail line and check it is a self-consistent record; ValueError says why not."""
    obj = loads(line)  # ValueError (JSONDecodeError, UnicodeDecodeError) when not JSON
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if canonical(obj) != line:
        raise ValueError("not in RFC 8785 canonical form")
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError("no valid seq")
    if not is_hash(obj.get("prev")) or not is_hash(obj.get("hash")):
        raise ValueError("no valid prev/hash")
    if record_hash(obj) != obj["hash"]:
        raise ValueError("hash does not match its content")
    return obj


def _write_all(fd: int, data: bytes) -> None:
    """One ``write`` for the whole buffer; loop only on a short write (the rest lands right after)."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)
    while True:
        if written <= 0:
            raise OSError(errno.EIO, "write returned 0")
        view = view[written:]
        if not view:
            return
        written = os.write(fd, view)


def _fsync_dir(directory: Path) -> None:
    """Make a directory entry (a new or renamed file) durable (best effort: some filesystems refuse)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


def _fsync(fd: int) -> None:
    """``os.fsync``, timed for telemetry when it is on (an attribute of the append span it served)."""
    if telemetry.ON:
        started = time.perf_counter()
        os.fsync(fd)
        telemetry.audit_fsync(time.perf_counter() - started)
    else:
        os.fsync(fd)


class _Pending:
    """One caller's records on their way to disk.

    The caller sleeps on ``wake`` (a lock it does not hold, armed under the
    mutex right before it sleeps); whoever changes what the caller must do next
    takes the lock under the mutex (``claim_wake``) and releases it once out of
    it: when the records are settled (durable, or failed), when the lead is
    handed to this caller (``lead``: write the queued records), or when an
    fsync is (``duty``). A caller that never has to wait never gets a lock.
    ``file`` and ``end``: the file its records went to and that file's
    ``written`` count right after them.
    """

    __slots__ = (
        "cause", "done", "duty", "end", "error", "file", "gone", "lead", "prepared", "records", "size", "wake",
    )  # fmt: skip

    def __init__(self, prepared: tuple[Prepared, ...]) -> None:
        self.prepared = prepared  # one record, or a group sealed consecutively in one write (append_many)
        self.size = sum(part.size for part in prepared)
        self.wake: threading.Lock | None = None
        self.records: list[dict[str, Any]] | None = None
        self.error: str | None = None
        self.cause: BaseException | None = None
        self.done = False  # settled: ``records`` or ``error`` holds the verdict
        self.lead = False  # handed the lead: write the queued records
        self.duty = False  # handed an fsync of ``file``
        self.gone = False  # the caller stopped waiting (interrupted)
        self.file: _File | None = None
        self.end = 0

    def claim_wake(self) -> threading.Lock | None:
        """Under the mutex: the lock to release (once out of it) so the caller runs again; None if awake."""
        wake, self.wake = self.wake, None
        return wake


class _File:
    """One open live file of this writer: its write descriptor and how much of what went through it is durable.

    Only the leader writes, through ``fd``, under the file lock, and only the
    leader fsyncs ``fd`` (``_drain``). The fsyncs that acknowledge callers run
    outside the lead, at most ``_SYNCS`` at a time, each on a descriptor of its
    own (``spare``: the file opened again by path while locked). Linux reports a
    writeback error once per open file description, so two fsyncs sharing one
    could let one return success for pages the other was told were lost; with
    a description each, every fsync that began before the error was reported
    reports it too. Byte counts of what this writer wrote through ``fd``:
    ``written``; covered by an fsync that began after it was written:
    ``requested``; covered by one that returned: ``durable``. After any failed
    write or fsync, ``failed`` says why: every record written through this file
    and not yet durable fails, and the leader opens the file afresh.
    """

    __slots__ = (
        "cause", "durable", "duty", "failed", "fd", "opened", "requested", "retired", "spare", "syncing",
        "waiting", "written",
    )  # fmt: skip

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0
        self.requested = 0
        self.durable = 0
        self.syncing = 0  # fsyncs in flight on the spare descriptors
        self.duty = 0  # callers handed an fsync that have not started it yet
        self.spare: list[int] = []  # idle fsync descriptors
        self.opened = 0  # fsync descriptors open (idle or in use)
        self.waiting: list[_Pending] = []  # written here, not yet settled, in write order
        self.failed: str | None = None
        self.cause: BaseException | None = None
        self.retired = False  # the writer moved on: no more writes, descriptors closed once idle


class AuditLog(WriterHead):
    """Append-only writer of the hash-chained audit log at ``path``; safe across threads and processes.

    ``signing_key``: an Ed25519 private key (PEM, unencrypted) that signs the
    checkpoints; without it they are HMAC-SHA256 with ``<path>.hmac-key``,
    created (0600) when absent. ``checkpoint_every``: records between periodic
    checkpoints. ``max_segment_bytes``: rotate the live file before it would
    grow past this size (None: never).
    """

    def __init__(
        self,
        path: Path,
        *,
        signing_key: Path | None = None,
        checkpoint_every: int = 1000,
        max_segment_bytes: int | None = None,
    ) -> None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
        if max_segment_bytes is not None and max_segment_bytes < 1:
            raise ValueError(f"max_segment_bytes must be positive, got {max_segment_bytes!r}")
        self._path = Path(os.path.abspath(path))  # stays valid if the process changes directory
        self._spath = str(self._path)  # for the stat on every append (a str is cheaper than a Path there)
        self._checkpoint_every = checkpoint_every
        self._max_segment_bytes = max_segment_bytes
        self._origin = f"opsgate.audit/{socket.gethostname()}{self._path}"
        self._mutex = threading.Lock()  # guards the queue and the flags; held only for a moment
        self._idle = threading.Condition(self._mutex)  # close() waits on it for the leader to finish
        self._queue: list[_Pending] = []
        self._leading = False  # a thread is doing I/O; only it touches the fields below
        self._closed = False
        self._kept = 0  # batches the file lock has passed from leader to leader without being let go
        self._active = 0  # fsyncs running or handed to a caller, all files (close() waits for none)
        self._file: _File | None = None  # the live file's write descriptor and its durability counts
        self._files: set[_File] = set()  # files with fsync descriptors open
        self._locked = False  # this writer holds the file lock on ``_fd``
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._known = False  # this writer has read the tail before (so a regression is refused)
        self._last_seq = 0
        self._last_hash = GENESIS_HASH
        self._size = -1  # file size right after our last write or tail read; -1: not read yet
        self._cp_fd: int | None = None
        self._checkpoint_due: str | None = None  # an event whose checkpoint failed and is owed
        # The log is opened first, so nothing is created beside a path that cannot be a log.
        self._open_fd(create=True)
        try:
            self._signer = self._load_signer(signing_key)
            self._acquire()
            try:
                self._vouch()
                self._write_checkpoint("start")
            finally:
                self._release()
        except BaseException:
            self._discard()
            self._close_checkpoints()
            raise

    # -- public --------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def checkpoints_path(self) -> Path:
        return checkpoints_path(self._path)

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Seal ``body`` as the next record and return it once it is fsynced.

        Raises AuditWriteError when the record is not durable (or cannot be
        serialised); in that case nothing the record describes may be run.
        Safe to call from many threads at once: they share fsyncs (group commit).
        """
        return self._append((body,))[0]

    def append_many(self, bodies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Seal ``bodies`` as consecutive records (no other record between them) in ONE write and ONE
        fsync, and return them once that fsync returned; all or none: AuditWriteError when any of them
        cannot be serialised or made durable, and then none was written by this call (a crash during the
        write can only tear its last line, as with any record). The gate writes a read's decision and
        outcome this way (audit/SCHEMA.md, "One fsync for a read")."""
        if not bodies:
            return []
        return self._append(tuple(bodies))

    def _append(self, bodies: tuple[Mapping[str, Any], ...]) -> list[dict[str, Any]]:
        if not self._leading:  # a hint only (read without the mutex): confirmed under it
            with self._mutex:
                if self._closed:
                    raise AuditWriteError(f"audit log {self._path} is closed")
                alone = not self._leading  # nobody writing, so nobody queued
                self._leading = True
            if alone:
                entry = _Pending(())
                self._lead(entry, bodies)
                return self._finish(entry)
        try:
            prepared = tuple(prepare(body) for body in bodies)  # in this thread, outside any lock: the leader seals
        except (ValueError, TypeError, RecursionError) as exc:
            raise AuditWriteError(f"audit record cannot be serialised: {exc}") from exc
        entry = _Pending(prepared)
        wake = None
        with self._mutex:
            if self._closed:
                raise AuditWriteError(f"audit log {self._path} is closed")
            self._queue.append(entry)
            if self._leading:  # someone is writing: sleep until it hands us the lead or writes our record
                entry.wake = wake = _held_lock()  # looked up here, not bound early: tests replace it
            else:  # the writer finished meanwhile, and nobody is queued: our batch is just us
                self._leading = entry.lead = True
        if wake is not None:
            self._sleep(entry, wake)
        return self._finish(entry)

    def _finish(self, entry: _Pending) -> list[dict[str, Any]]:
        """Do what falls to this caller (lead, fsync) and sleep in between, until its records are settled."""
        while True:
            if entry.lead:  # set under the mutex by whoever handed us the lead; cleared only here
                entry.lead = False
                self._lead(entry)
            if entry.done:  # set under the mutex after the verdict; a bool read needs none (the common case)
                break
            wake = None
            with self._mutex:
                if entry.done:
                    break
                if entry.lead:
                    continue
                job = self._claim_sync(entry)
                if job is None:
                    entry.wake = wake = _held_lock()
            if job is not None:
                assert entry.file is not None
                self._sync(entry.file, *job)
            elif wake is not None:
                self._sleep(entry, wake)
        if entry.error is not None:
            raise AuditWriteError(entry.error) from entry.cause
        assert entry.records is not None
        return entry.records

    def _sleep(self, entry: _Pending, wake: threading.Lock) -> None:
        try:
            wake.acquire()
        except BaseException:  # interrupted (Ctrl-C in the main thread): never strand the others
            self._abandon(entry)
            raise

    def close(self) -> None:
        """Write the stop checkpoint and close the files; later appends raise AuditWriteError.

        Records queued before the close are still written (their callers wait for them).
        """
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            while self._leading or self._active:
                self._idle.wait()
            self._leading = True
        try:
            if self._fd is not None:
                try:
                    self._acquire()
                    try:
                        self._drain()  # a caller between its write and its fsync: the checkpoint signs durable records
                        self._write_checkpoint("stop")
                    finally:
                        self._release()
                except AuditWriteError as exc:
                    log.warning("audit log %s: no stop checkpoint: %s", self._path, exc)
        finally:
            self._discard()
            self._close_checkpoints()
            with self._mutex:
                for file in list(self._files):
                    file.retired = True
                    self._tidy(file)
                self._leading = False

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({str(self._path)!r}, last_seq={self._last_seq})"

    # -- the write: leader only -----------------------------------------------------------------

    def _lead(self, own: _Pending, bodies: tuple[Mapping[str, Any], ...] | None = None) -> None:
        """Write a batch, then pass the lead on at once: the fsync that acknowledges it comes after (``_finish``).

        ``bodies``: the lone caller's, who found nobody writing and nobody
        queued; its records are serialised once, in their real place
        (``seal_next``), rather than prepared first and placed after. Otherwise
        the batch is the oldest queued records (``own`` first).

        Passing the lead on before the fsync lets the next batch be written
        while this one's fsync runs, and several fsyncs run at once, as plain
        threads doing write + fsync would: the kernel shares its work between
        them. One fsync acknowledges every record written before it began.
        """
        try:
            if bodies is None:
                with self._mutex:
                    batch = self._take_batch()
            else:
                batch = [own]
            try:
                self._write_batch(batch, bodies)
            except AuditWriteError as exc:
                self._release()
                self._fail(batch, str(exc), exc.__cause__ or exc)
            except BaseException as exc:
                self._release()
                self._fail(batch, f"audit log {self._path}: internal error ({type(exc).__name__})", exc)
                raise
        finally:
            keep = False
            if self._queue:  # a hint (nobody queued: the common case, one mutex section below)
                with self._mutex:  # the file lock goes with the lead to a queued caller, a few batches at most
                    keep = self._locked and bool(self._queue) and self._kept < _KEEP_LOCK
                    if keep:
                        self._kept += 1
                        wake = self._leave_lead()
            if not keep:
                self._kept = 0
                self._release()  # first: the next leader must not find our lock taken; other processes get a turn
                with self._mutex:
                    wake = self._leave_lead()
            if wake is not None:
                wake.release()

    def _leave_lead(self) -> threading.Lock | None:
        """Under the mutex: hand the lead to the oldest queued caller (returns the lock to release to wake it)
        or, with nobody queued, leave it free (the file lock let go first: nobody keeps it without the lead)."""
        if self._queue:
            successor = self._queue[0]
            successor.lead = True
            return successor.claim_wake()
        self._leading = False
        if self._closed:
            self._idle.notify_all()
        return None

    def _take_batch(self) -> list[_Pending]:
        """The oldest queued records, bounded in count and bytes (at least one). Called under the mutex."""
        total, count = 0, 0
        for entry in self._queue[:_MAX_BATCH]:
            total += entry.size
            if count and total > _MAX_BATCH_BYTES:
                break
            count += 1
        batch = self._queue[:count]
        del self._queue[:count]
        return batch

    def _fail(self, batch: list[_Pending], message: str, cause: BaseException | None) -> None:
        """Settle the entries of ``batch`` that were never written as failed, and wake their callers."""
        wakes = []
        with self._mutex:
            for entry in batch:
                if not entry.done and entry.file is None:
                    entry.done, entry.records, entry.error, entry.cause = True, None, message, cause
                    wakes.append(entry.claim_wake())
        for wake in wakes:
            if wake is not None:
                wake.release()

    def _seal_alone(self, bodies: tuple[Mapping[str, Any], ...]) -> tuple[list[dict[str, Any]], bytes]:
        """The records and the whole lines of ``bodies`` placed at the head, each chained to the one before."""
        seq, prev = self._last_seq, self._last_hash
        records: list[dict[str, Any]] = []
        lines: list[bytes] = []
        for body in bodies:
            record, line = seal_next(body, seq + 1, prev)
            if len(line) >= MAX_LINE_BYTES:
                raise AuditWriteError(f"audit record is {len(line) + 1} bytes, over the {MAX_LINE_BYTES} limit")
            seq, prev = seq + 1, record["hash"]
            records.append(record)
            lines.append(line)
        lines.append(b"")
        return records, b"\n".join(lines)

    def _write_batch(self, batch: list[_Pending], bodies: tuple[Mapping[str, Any], ...] | None) -> None:
        """Seal ``batch`` at the head and write it in ONE write of whole lines; a checkpoint due waits for its fsync.

        A batch's lines are whole in the buffer and the file lock keeps other
        writers out, so a crash can only cut the last line short.
        """
        if self._file is not None and self._file.failed is not None:
            self._discard()  # never written through again: the next write reopens and re-reads the tail
        if not self._locked:
            self._acquire()
        if bodies is not None:
            try:
                records, data = self._seal_alone(bodies)
                if self._rotation_due(len(data)):
                    self._rotate()  # another writer may extend the chain meanwhile: seal again at the head
                    records, data = self._seal_alone(bodies)
            except (ValueError, TypeError, RecursionError) as exc:
                raise AuditWriteError(f"audit record cannot be serialised: {exc}") from exc
            batch[0].records = records
            written = batch
            seq, prev = records[-1]["seq"], records[-1]["hash"]
        else:
            if self._rotation_due(sum(e.size + _CHAIN_OVERHEAD * len(e.prepared) for e in batch)):
                self._rotate()  # before sealing: another writer may extend the chain meanwhile
            seq, prev = self._last_seq, self._last_hash
            lines: list[bytes] = []
            written, refused = [], []
            for entry in batch:
                records, own_lines, at, head = [], [], seq, prev  # an entry's records go in whole or not at all
                for part in entry.prepared:
                    record, line = part.seal(at + 1, head)
                    if len(line) >= MAX_LINE_BYTES:
                        entry.error = f"audit record is {len(line) + 1} bytes, over the {MAX_LINE_BYTES} limit"
                        break
                    records.append(record)
                    own_lines.append(line)
                    at, head = at + 1, record["hash"]
                if entry.error is not None:
                    refused.append(entry)
                    continue
                entry.records = records
                seq, prev = at, head
                lines.extend(own_lines)
                written.append(entry)
            if refused:
                self._fail(refused, refused[0].error or "", None)  # only these: the others are written
            if not lines:
                return
            lines.append(b"")
            data = b"\n".join(lines)
        file = self._file
        assert file is not None and self._fd is not None
        self._open_sync_fd(file)
        self._write(file, data, written)
        before = self._last_seq
        self._last_seq, self._last_hash = seq, prev
        every = self._checkpoint_every
        due = "every" if before // every != seq // every else self._checkpoint_due
        if due is not None or not file.opened:
            self._drain()  # a checkpoint signs only durable records; no fsync descriptor: fsync here
            if due is not None:
                self._try_checkpoint(due)

    def _write(self, file: _File, data: bytes, entries: list[_Pending]) -> None:
        """Write whole lines through ``file``; the entries wait for an fsync. On failure the file is lost."""
        try:
            _write_all(file.fd, data)
        except OSError as exc:
            self._lose(file, exc)
            self._discard()
            raise AuditWriteError(f"cannot write audit log {self._path}: {exc}") from exc
        self._size += len(data)
        with self._mutex:
            file.written += len(data)
            for entry in entries:
                entry.file, entry.end = file, file.written
            file.waiting.extend(entries)

    def _write_durably(self, data: bytes) -> None:
        """Write and fsync under the lead (a recovery record), or give up this descriptor for good and raise."""
        assert self._file is not None
        self._write(self._file, data, [])
        self._drain()

    def _rotation_due(self, incoming: int) -> bool:
        """Whether ``incoming`` more bytes would take a non-empty live file past the segment size."""
        limit = self._max_segment_bytes
        return limit is not None and self._size > 0 and self._size + incoming > limit

    # -- the fsync ------------------------------------------------------------------------------

    def _claim_sync(self, entry: _Pending) -> tuple[int, int] | None:
        """Under the mutex: an fsync for this caller to run, as (descriptor, what it covers), or None to sleep:
        its records are covered by an fsync begun after them, or ``_SYNCS`` are running (the first to return
        hands the next one to the oldest caller left uncovered)."""
        file = entry.file
        if file is None:  # pragma: no cover - settled without a write; entry.done was seen first
            return None
        if entry.duty:
            entry.duty = False
            file.duty -= 1
            self._active -= 1
        if entry.end <= file.requested or file.syncing >= _SYNCS or not file.spare:
            return None
        file.syncing += 1
        self._active += 1
        file.requested = file.written
        return file.spare.pop(), file.written

    def _sync(self, file: _File, fd: int, covers: int) -> None:
        """fsync ``fd`` (one of ``file``'s own descriptors); settle every record it covers, or, if it failed,
        every record of ``file`` not yet durable.

        Records written meanwhile that no fsync covers get the next fsync from this thread, up to
        ``_CARRY_ON`` times (its own record is durable already, so only its return waits): it is awake and
        holds the GIL, where a woken caller would first have to win it. The callers just settled are woken
        before that fsync, so they run while it holds no GIL."""
        for extra in range(_CARRY_ON + 1):
            error: OSError | None = None
            try:
                _fsync(fd)
            except OSError as exc:
                error = exc
            wakes: list[threading.Lock | None] = []
            job: tuple[int, int] | None = None
            with self._mutex:
                file.syncing -= 1
                self._active -= 1
                if error is None:
                    file.spare.append(fd)
                    if file.failed is None and covers > file.durable:
                        file.durable = covers
                else:
                    file.opened -= 1
                    with contextlib.suppress(OSError):
                        os.close(fd)  # never fsynced again: a retry can report success for pages that are gone
                    if file.failed is None:
                        file.failed, file.cause = f"cannot write audit log {self._path}: {error}", error
                self._settle(file, wakes)
                if (extra < _CARRY_ON and file.failed is None and file.waiting and file.spare
                        and file.waiting[-1].end > file.requested and file.syncing + file.duty < _SYNCS):
                    file.syncing += 1
                    self._active += 1
                    file.requested = file.written
                    job = file.spare.pop(), file.written
                else:
                    self._hand_duty(file, wakes)
                    self._tidy(file)
                    if self._closed and not self._active:
                        self._idle.notify_all()
            for wake in wakes:
                if wake is not None:
                    wake.release()
            if error is not None:
                log.warning("audit log fsync failed; every record not yet durable refused, will reopen: %s", error)
            if job is None:
                return
            fd, covers = job

    def _drain(self) -> None:
        """Leader only: fsync the write descriptor, making everything written so far durable, or lose the file."""
        file = self._file
        if file is None or self._fd is None:
            return
        covers = file.written
        try:
            _fsync(self._fd)
        except OSError as exc:
            self._lose(file, exc)
            self._discard()
            log.warning("audit log write failed; descriptor dropped, will reopen: %s", exc)
            raise AuditWriteError(f"cannot write audit log {self._path}: {exc}") from exc
        wakes: list[threading.Lock | None] = []
        with self._mutex:
            if file.failed is None:
                file.requested = max(file.requested, covers)
                file.durable = max(file.durable, covers)
            self._settle(file, wakes)
        for wake in wakes:
            if wake is not None:
                wake.release()
        if file.failed is not None:
            self._discard()
            raise AuditWriteError(file.failed) from file.cause

    def _lose(self, file: _File, exc: OSError) -> None:
        """A write or fsync through ``file`` failed: every record of it not yet durable fails."""
        wakes: list[threading.Lock | None] = []
        with self._mutex:
            if file.failed is None:
                file.failed, file.cause = f"cannot write audit log {self._path}: {exc}", exc
            self._settle(file, wakes)
        for wake in wakes:
            if wake is not None:
                wake.release()

    def _settle(self, file: _File, wakes: list[threading.Lock | None]) -> None:
        """Under the mutex: give the waiting entries that are durable (all of them, failed, if ``file`` failed)
        their verdict, and collect the locks that wake their callers."""
        settled = 0
        for entry in file.waiting:
            if file.failed is None and entry.end > file.durable:
                break
            if file.failed is not None:
                entry.records, entry.error, entry.cause = None, file.failed, file.cause
            entry.done = True
            if entry.duty:
                entry.duty = False
                file.duty -= 1
                self._active -= 1
            wakes.append(entry.claim_wake())
            settled += 1
        del file.waiting[:settled]

    def _hand_duty(self, file: _File, wakes: list[threading.Lock | None]) -> None:
        """Under the mutex: if records of ``file`` wait that no fsync covers and one more may run, the oldest
        of their callers runs it."""
        if file.failed is not None or file.syncing + file.duty >= _SYNCS or not file.spare:
            return
        for entry in file.waiting:
            if entry.end > file.requested and not entry.gone and not entry.duty:
                entry.duty = True
                file.duty += 1
                self._active += 1
                wakes.append(entry.claim_wake())
                return

    def _tidy(self, file: _File) -> None:
        """Under the mutex: close the fsync descriptors of a file this writer moved on from, once idle."""
        if file.retired and not file.syncing:
            for fd in file.spare:
                with contextlib.suppress(OSError):
                    os.close(fd)
            file.opened -= len(file.spare)
            file.spare.clear()
            self._files.discard(file)

    def _open_sync_fd(self, file: _File) -> None:
        """Leader, file locked (so the path names our file): one more fsync descriptor, while fewer than
        ``_SYNCS`` are open and none is idle. Without any, the leader fsyncs each batch itself (``_drain``)."""
        if file.spare or file.opened >= _SYNCS or file.failed is not None:  # read without the mutex: only
            return  # the leader adds descriptors, so a stale answer at worst opens one more or one later
        try:
            fd = os.open(self._spath, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._ident:
            os.close(fd)
            return
        with self._mutex:
            file.spare.append(fd)
            file.opened += 1
            self._files.add(file)

    def _abandon(self, entry: _Pending) -> None:
        """A caller stops waiting: drop its records if not yet taken, and pass on the lead or an fsync it had."""
        wakes: list[threading.Lock | None] = []
        handed_lead = False
        with self._mutex:
            entry.gone = True
            if entry in self._queue:
                handed_lead = entry.lead
                self._queue.remove(entry)
                entry.lead = False
                entry.done, entry.error = True, f"audit log {self._path}: the caller stopped waiting"
            if entry.duty and entry.file is not None:
                entry.duty = False
                entry.file.duty -= 1
                self._active -= 1
                self._hand_duty(entry.file, wakes)
            if self._closed and not self._active:
                self._idle.notify_all()
        if handed_lead:  # the lead (and maybe the file lock) was ours: pass it on
            self._kept = 0
            self._release()
            with self._mutex:
                wakes.append(self._leave_lead())
        for wake in wakes:
            if wake is not None:
                wake.release()

    # -- files (leader only) ----------------------------------------------------------------------

    def _acquire(self) -> int:
        """Lock the live file and learn its tail; follow a rotation done by another writer."""
        create = False
        for _ in range(_FOLLOW_LIMIT):
            if self._fd is None:
                self._open_fd(create=create)
            fd = self._fd
            assert fd is not None
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another process is writing
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                self._discard()
                raise AuditWriteError(f"cannot lock audit log {self._path}: {exc}") from exc
            size = self._check_same_file(fd)
            if size is None:  # renamed to a segment by another writer: go to the new live file
                self._discard()
                create = True
                continue
            if size != self._size:
                try:
                    self._sync_tail(fd, size)  # another process appended (or left a torn tail)
                except AuditWriteError:
                    self._discard()
                    raise
            self._locked = True
            return fd
        raise AuditWriteError(f"audit log {self._path} kept being rotated under this writer")

    def _release(self) -> None:
        if not self._locked:
            return
        self._locked = False
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                self._discard()

    def _check_same_file(self, fd: int) -> int | None:
        """The file size, after making sure ``path`` still names the file we hold open.

        None when our file is now a rotated segment (another writer rotated it).
        One ``stat`` of the path in the common case: when it names our file, its
        size and link count are our file's. Only otherwise is ``fd`` asked.
        """
        try:
            on_disk: os.stat_result | None = os.stat(self._spath)
        except FileNotFoundError:
            on_disk = None
        except OSError as exc:
            self._discard()
            raise AuditWriteError(f"audit log {self._path} is gone: {exc}") from exc
        if on_disk is None or on_disk.st_ino != self._ident[1] or on_disk.st_dev != self._ident[0]:
            try:
                st = os.fstat(fd)
            except OSError as exc:
                self._discard()
                raise AuditWriteError(f"audit log {self._path} is gone: {exc}") from exc
            if st.st_nlink > 0 and self._is_segment(self._ident):
                return None
            self._discard()
            raise AuditWriteError(f"audit log {self._path} was removed or replaced while open")
        if on_disk.st_size < self._size:
            self._discard()
            raise AuditWriteError(
                f"audit log {self._path} shrank from {self._size} to {on_disk.st_size} bytes; refusing to append"
            )
        return on_disk.st_size

    def _is_segment(self, ident: tuple[int, int]) -> bool:
        for _, segment in reversed(list_segments(self._path)):
            with contextlib.suppress(OSError):
                st = os.stat(segment)
                if (st.st_dev, st.st_ino) == ident:
                    return True
        return False

    def _open_fd(self, *, create: bool) -> None:
        """Open the live file (create it only when told, or when it was rotated away)."""
        if not self._path.parent.is_dir():
            raise AuditWriteError(f"directory of audit log {self._path} does not exist")
        existed = os.path.lexists(self._path)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self._path, flags | (os.O_CREAT if create else 0), 0o600)
            except FileNotFoundError:
                if create or not self._is_segment(self._ident):
                    raise
                fd = os.open(self._path, flags | os.O_CREAT, 0o600)  # a rotation stopped short of creating it
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit log {self._path}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AuditWriteError(f"audit log {self._path} is not a regular file")
            if not existed:
                _fsync_dir(self._path.parent)
        except OSError as exc:
            os.close(fd)
            raise AuditWriteError(f"cannot open audit log {self._path}: {exc}") from exc
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._file = _File(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._size = -1

    def _segment_tail(self) -> tuple[int, str]:
        """(seq, hash) at the end of the newest rotated segment; (0, genesis) when there is none."""
        segments = list_segments(self._path)
        if not segments:
            return 0, GENESIS_HASH
        segment = segments[-1][1]
        try:
            fd = os.open(segment, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                last, torn = _read_tail(fd, size) if size else (None, None)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditWriteError(f"cannot read audit segment {segment}: {exc}") from exc
        if last is None or torn is not None:
            raise AuditWriteError(
                f"audit segment {segment} is empty or ends in a torn line; run `opsgate audit verify`"
            )
        try:
            record = _check_record(last)
        except (ValueError, RecursionError) as exc:
            raise AuditWriteError(f"the last record of audit segment {segment} is damaged ({exc})") from exc
        return record["seq"], record["hash"]

    def _sync_tail(self, fd: int, size: int) -> None:
        """Learn the last record from the end of the file; seal a torn tail first if there is one.

        An empty live file continues the newest rotated segment. Once this writer
        has seen the log, the tail must not be behind what it saw before (a
        truncated or replaced log is refused, not extended).
        """
        torn: bytes | None = None
        if size == 0:
            seq, digest = self._segment_tail()
        else:
            try:
                last_line, torn = _read_tail(fd, size)
            except OSError as exc:
                raise AuditWriteError(f"cannot read the tail of audit log {self._path}: {exc}") from exc
            if last_line is None:
                seq, digest = self._segment_tail()
            else:
                try:
                    record = _check_record(last_line)
                except (ValueError, RecursionError) as exc:
                    raise AuditWriteError(
                        f"the last complete record of audit log {self._path} is damaged ({exc}); "
                        "refusing to chain onto it; run `opsgate audit verify`"
                    ) from exc
                seq, digest = record["seq"], record["hash"]
        if self._known and (seq < self._last_seq or (seq == self._last_seq and digest != self._last_hash)):
            raise AuditWriteError(
                f"audit log {self._path} now ends at seq {seq}, behind seq {self._last_seq} written before: "
                "it was truncated or replaced; refusing to append"
            )
        if self._known and seq > self._last_seq:
            self._check_grown(size - len(torn or b""), seq, digest)
        self._last_seq, self._last_hash, self._size = seq, digest, size
        self._known = True
        if torn is not None:
            self._recover(fd, size, torn)

    def _check_grown(self, size: int, seq: int, digest: str) -> None:
        """The log grew under this writer (another process appended): the new records must chain back to
        the head this writer knew, or its next checkpoint would sign a log rewritten in place."""
        try:
            if self._last_seq == 0:
                if self._chain_back(size, seq, digest, 1)["prev"] != GENESIS_HASH:
                    raise ValueError("record 1 does not start the chain")
            elif self._chain_back(size, seq, digest, self._last_seq)["hash"] != self._last_hash:
                raise ValueError(f"record {self._last_seq} is not the one this writer wrote or saw")
        except ValueError as exc:
            raise AuditWriteError(
                f"audit log {self._path} grew to seq {seq}, but {exc}: it was rewritten under this writer; "
                "refusing to append; run `opsgate audit verify`"
            ) from None

    def _recover(self, fd: int, size: int, torn: bytes) -> None:
        """Seal a torn last line: newline + a recovery record naming it, in one durable write."""
        try:
            line_no = _count_newlines(fd, size) + 1
        except OSError as exc:
            raise AuditWriteError(f"cannot read audit log {self._path}: {exc}") from exc
        body = {
            "v": SCHEMA_VERSION,
            "stage": "recovery",
            "time": _utc_now(),
            "torn": {"line": line_no, "bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()},
        }
        record, line = seal_line(body, self._last_seq + 1, self._last_hash)
        data = b"\n" + line + b"\n"
        self._write_durably(data)
        log.warning(
            "audit log %s: torn line %d (%d bytes) sealed by recovery record seq %d",
            self._path,
            line_no,
            len(torn),
            record["seq"],
        )
        self._last_seq, self._last_hash, self._size = record["seq"], record["hash"], size + len(data)

    def _rotate(self) -> None:
        """Rename the live file (locked, tail known) to the next segment and continue in a new live file."""
        self._drain()  # the rotate checkpoint signs the head: durable first
        segments = list_segments(self._path)
        target = segment_path(self._path, segments[-1][0] + 1 if segments else 1)
        if os.path.lexists(target):
            raise AuditWriteError(f"cannot rotate audit log {self._path}: {target} already exists")
        try:
            os.rename(self._path, target)
        except OSError as exc:
            raise AuditWriteError(f"cannot rotate audit log {self._path} to {target}: {exc}") from exc
        _fsync_dir(self._path.parent)
        with contextlib.suppress(OSError):
            os.chmod(target, 0o400)  # a closed segment is never written again
        log.info("audit log %s rotated to %s at seq %d", self._path, target.name, self._last_seq)
        self._try_checkpoint("rotate")
        self._discard()
        self._open_fd(create=True)
        self._acquire()

    # -- checkpoints --------------------------------------------------------------------------------

    def _load_signer(self, signing_key: Path | None) -> Signer:
        try:
            if signing_key is not None:
                return load_private_key(signing_key)
            return HmacSigner(load_or_create_hmac_key(hmac_key_path(self._path)))
        except (OSError, ValueError) as exc:
            which = signing_key or hmac_key_path(self._path)
            raise AuditWriteError(f"cannot load the audit checkpoint key {which}: {exc}") from exc

    def _write_checkpoint(self, event: str) -> None:
        """Sign the current head and append it, fsynced, to the checkpoints file (under the log's lock)."""
        stamp = Checkpoint(self._origin, self._last_seq, self._last_hash, _utc_now(), event)
        line = checkpoint_line(stamp, self._signer) + b"\n"
        target = checkpoints_path(self._path)
        try:
            if self._cp_fd is None:
                existed = os.path.lexists(target)
                self._cp_fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                if not existed:
                    _fsync_dir(target.parent)
                size = os.fstat(self._cp_fd).st_size
                if size and os.pread(self._cp_fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a crash cut the last checkpoint short: keep it, start a new line
            _write_all(self._cp_fd, line)
            os.fsync(self._cp_fd)
        except OSError as exc:
            self._close_checkpoints()
            self._checkpoint_due = event
            raise AuditWriteError(f"cannot write audit checkpoint to {target}: {exc}") from exc
        self._checkpoint_due = None

    def _latest_own_checkpoint(self) -> SignedCheckpoint | None:
        """The last checkpoint in the checkpoints file signed by this writer's key.

        Read from the end, in growing windows, only as far as that checkpoint;
        lines that do not parse or that another key signed (or a forger) are
        passed over. Checkpoints are appended in seq order under the log's lock,
        so the last one with a good signature is the latest.
        """
        ring = ring_for(self._signer)
        target = checkpoints_path(self._path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditWriteError(f"cannot read audit checkpoints {target}: {exc}") from exc
        try:
            for raw in _lines_back(fd, os.fstat(fd).st_size, cap=MAX_LINE_BYTES):
                try:
                    signed = parse_checkpoint_line(raw)
                except (ValueError, RecursionError):
                    continue
                if ring.check(signed) is None:
                    return signed
        except (OSError, ValueError) as exc:
            raise AuditWriteError(f"cannot read audit checkpoints {target}: {exc}") from exc
        finally:
            os.close(fd)
        return None

    def _files_back(self, size: int) -> Iterator[tuple[Path, bytes]]:
        """Every line of the log, newest first: the first ``size`` bytes of the live file (locked), then the
        segments."""
        assert self._fd is not None
        yield from ((self._path, line) for line in _lines_back(self._fd, size, cap=MAX_LINE_BYTES))
        for _, segment in reversed(list_segments(self._path)):
            try:
                fd = os.open(segment, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise AuditWriteError(f"cannot read audit segment {segment}: {exc}") from exc
            try:
                size = os.fstat(fd).st_size
                yield from ((segment, line) for line in _lines_back(fd, size, cap=MAX_LINE_BYTES))
            finally:
                os.close(fd)

    def _vouch(self) -> None:
        """At open, under the lock, tail known: refuse unless the latest own checkpoint vouches for the head.

        Walks back from the head to the checkpointed seq (``_chain_back``); the
        record there must have the signed hash.
        """
        found = self._latest_own_checkpoint()
        head = self._last_seq
        where = f"audit log {self._path}"
        advice = (
            f"Run `opsgate audit verify {self._path}` (with --pubkey for an Ed25519 key) to see what differs. "
            f"If {checkpoints_path(self._path).name} or the key was lost, restore it from a copy; otherwise keep "
            f"the log as evidence, move {self._path.name}* aside, and start again with an empty log."
        )
        if found is None:
            if head == 0:
                return  # a new log: nothing to vouch for
            raise AuditTrustError(
                f"{where} holds records up to seq {head}, but {checkpoints_path(self._path).name} has no "
                f"checkpoint signed by this server's key ({self.key_id}): the log may have been rewritten and "
                f"its checkpoints removed; refusing to sign its head. {advice}"
            )
        cp = found.checkpoint
        named = f"the {cp.event} checkpoint of {cp.time} (seq {cp.size})"
        if cp.size > head:
            raise AuditTrustError(
                f"{where} ends at seq {head}, but {named} signed seq {cp.size}: records were cut off the end; "
                f"refusing to sign its head. {advice}"
            )
        if head == 0:
            if cp.head != GENESIS_HASH:
                raise AuditTrustError(f"{where}: {named} does not describe an empty log. {advice}")
            return
        try:
            record = self._chain_back(self._size, head, self._last_hash, max(cp.size, 1))
            if cp.size == 0 and record["prev"] != GENESIS_HASH:
                raise ValueError("record 1 does not start the chain")
            if cp.size > 0 and record["hash"] != cp.head:
                raise ValueError(f"record {cp.size} is not the one {named} signed")
        except ValueError as exc:
            raise AuditTrustError(
                f"{where} does not match its latest checkpoint, {named}: {exc}; the log was rewritten or "
                f"replaced after it was signed; refusing to sign its head. {advice}"
            ) from None

    def _chain_back(self, size: int, head_seq: int, head_hash: str, stop: int) -> dict[str, Any]:
        """Walk the log back from its head (seq ``head_seq``, hash ``head_hash``, the last record in the first
        ``size`` bytes of the live file) to record ``stop`` (>= 1) and return that record.

        Every record on the way must be intact, at the seq expected, and hashed
        as the next one's ``prev`` says. A torn line sealed by a recovery record
        (the line right before it) is passed over once its length and SHA-256
        match. Raises ValueError naming the first break (AuditWriteError when
        the files cannot be read).
        """
        expect_seq, expect_hash = head_seq, head_hash
        torn: Any = None
        try:
            for path, raw in self._files_back(size):
                if torn is not None:
                    if len(raw) != torn.get("bytes") or hashlib.sha256(raw).hexdigest() != torn.get("sha256"):
                        raise ValueError(f"the torn line before record {expect_seq + 1} is not the one named")
                    torn = None
                    continue
                try:
                    record = _check_record(raw)
                except (ValueError, RecursionError) as exc:
                    damaged = f"a line of {path.name} before record {expect_seq + 1} is damaged ({exc})"
                    raise ValueError(damaged) from None
                if record["seq"] != expect_seq or record["hash"] != expect_hash:
                    raise ValueError(f"record {expect_seq} in {path.name} does not chain to record {expect_seq + 1}")
                if expect_seq == stop:
                    return record
                if record.get("stage") == "recovery" and isinstance(record.get("torn"), dict):
                    torn = record["torn"]
                expect_seq, expect_hash = expect_seq - 1, record["prev"]
        except OSError as exc:
            raise AuditWriteError(f"cannot read audit log {self._path} back to record {stop}: {exc}") from exc
        raise ValueError(f"the log runs out before seq {stop}")

    def _try_checkpoint(self, event: str) -> None:
        try:
            self._write_checkpoint(event)
        except AuditWriteError as exc:
            log.warning("audit log %s: checkpoint deferred: %s", self._path, exc)

    def _close_checkpoints(self) -> None:
        if self._cp_fd is not None:
            fd, self._cp_fd = self._cp_fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _discard(self) -> None:
        """Drop the descriptor (never reused after a failure); the next append reopens.

        Records written through it that are not durable yet are fsynced through
        it first (and fail if that fails): no caller waits on a file left behind.
        """
        self._locked = False  # closing the descriptor lets go of its lock
        file, self._file = self._file, None
        fd, self._fd = self._fd, None
        if file is not None:
            wakes: list[threading.Lock | None] = []
            if fd is not None and file.failed is None and file.waiting:
                covers = file.written
                try:
                    _fsync(fd)
                except OSError as exc:
                    self._lose(file, exc)
                else:
                    with self._mutex:
                        file.durable = max(file.durable, covers)
                        file.requested = max(file.requested, covers)
                        self._settle(file, wakes)
            with self._mutex:
                file.retired = True
                self._tidy(file)
            for wake in wakes:
                if wake is not None:
                    wake.release()
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
