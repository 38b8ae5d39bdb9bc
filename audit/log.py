"""The audit log writer: one hash chain in one append-only JSON Lines file.

Durability and ordering rules (see DESIGN.md, "Pitfalls checked here > Audit"):

* Every record is one canonical line written with a single ``write`` on an
  ``O_APPEND`` descriptor and ``fsync``-ed before :meth:`AuditLog.append`
  returns, so the gate can run the tool only after its decision is on disk.
* A ``threading.Lock`` serialises threads and an exclusive ``flock`` serialises
  processes; under the lock the writer re-reads the tail whenever the file size
  is not what it last left, so several processes extend ONE chain.
* After a failed ``write``/``fsync`` the descriptor is never used again: the
  kernel may have dropped the dirty pages and a retried ``fsync`` can report
  success for data that is gone. The next append reopens the file, re-reads
  and re-checks the tail, and only then goes on.
* A last line without its newline is a torn write from a crash. It is sealed
  by appending a newline and a ``recovery`` record that names it (line number,
  length, SHA-256) and chains to the last good record; old bytes are never
  rewritten or removed.
* The writer refuses (fails closed) when the tail it would chain onto is not a
  valid record, or when the file shrank, vanished or was replaced under it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from .chain import GENESIS_HASH, canonical, is_hash, loads, record_hash, seal_line

__all__ = ["MAX_LINE_BYTES", "AuditLog", "AuditWriteError"]

MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest line the writer produces or accepts at the tail; bounds memory when reading back."""

_TAIL_WINDOW = 4096
_COUNT_CHUNK = 1 << 20

log = logging.getLogger("opsgate.audit")


class AuditWriteError(Exception):
    """The record was not made durable; the caller must not run the tool it describes."""


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
    """One ``write`` for the whole line; loop only on a short write (the rest lands right after)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write returned 0")
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    """Make a newly created file's directory entry durable (best effort: some filesystems refuse)."""
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


class AuditLog:
    """Append-only writer of the hash-chained audit log at ``path``; safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self._path = Path(os.path.abspath(path))  # stays valid if the process changes directory
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._closed = False
        self._last_seq = 0
        self._last_hash = GENESIS_HASH
        self._size = 0  # file size right after our last write or tail read
        with self._lock:
            self._open(create=True)

    # -- public --------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def last_seq(self) -> int:
        """Seq of the last record this writer wrote or saw (0 for an empty log)."""
        return self._last_seq

    @property
    def last_hash(self) -> str:
        """Hash of that record (``GENESIS_HASH`` for an empty log)."""
        return self._last_hash

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Seal ``body`` as the next record and return it once it is fsynced.

        Raises AuditWriteError when the record is not durable (or cannot be
        serialised); in that case nothing the record describes may be run.
        """
        with self._lock:
            if self._closed:
                raise AuditWriteError(f"audit log {self._path} is closed")
            if self._fd is None:
                self._open(create=False)
            fd = self._fd
            assert fd is not None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                self._discard()
                raise AuditWriteError(f"cannot lock audit log {self._path}: {exc}") from exc
            try:
                return self._append_locked(fd, body)
            finally:
                if self._fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    except OSError:
                        self._discard()

    def close(self) -> None:
        """Close the file; later appends raise AuditWriteError."""
        with self._lock:
            self._closed = True
            self._discard()

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

    # -- internals (all called with self._lock held) --------------------------------------------

    def _append_locked(self, fd: int, body: Mapping[str, Any]) -> dict[str, Any]:
        size = self._check_same_file(fd)
        if size != self._size:
            try:
                self._sync_tail(fd, size, known=True)  # another process appended (or left a torn tail)
            except AuditWriteError:
                self._discard()
                raise
        try:
            record, line = seal_line(body, self._last_seq + 1, self._last_hash)
            line += b"\n"
        except (ValueError, TypeError, RecursionError) as exc:
            raise AuditWriteError(f"audit record cannot be serialised: {exc}") from exc
        if len(line) > MAX_LINE_BYTES:
            raise AuditWriteError(f"audit record is {len(line)} bytes, over the {MAX_LINE_BYTES} limit")
        self._write_durably(fd, line)
        self._last_seq = record["seq"]
        self._last_hash = record["hash"]
        self._size += len(line)
        return record

    def _write_durably(self, fd: int, data: bytes) -> None:
        """Write and fsync, or give up this descriptor for good and raise."""
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            self._discard()
            log.warning("audit log write failed; descriptor dropped, will reopen: %s", exc)
            raise AuditWriteError(f"cannot write audit log {self._path}: {exc}") from exc

    def _check_same_file(self, fd: int) -> int:
        """Return the file size, after making sure ``path`` still names the file we hold open."""
        try:
            st = os.fstat(fd)
            on_disk = os.stat(self._path)
        except OSError as exc:
            self._discard()
            raise AuditWriteError(f"audit log {self._path} is gone: {exc}") from exc
        if st.st_nlink == 0 or (on_disk.st_dev, on_disk.st_ino) != self._ident:
            self._discard()
            raise AuditWriteError(f"audit log {self._path} was removed or replaced while open")
        if st.st_size < self._size:
            self._discard()
            raise AuditWriteError(
                f"audit log {self._path} shrank from {self._size} to {st.st_size} bytes; refusing to append"
            )
        return st.st_size

    def _open(self, *, create: bool) -> None:
        """Open (create only the first time), lock, learn the tail; a reopen also refuses a regressed tail."""
        if not self._path.parent.is_dir():
            raise AuditWriteError(f"directory of audit log {self._path} does not exist")
        existed = os.path.lexists(self._path)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self._path, flags, 0o600)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit log {self._path}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AuditWriteError(f"audit log {self._path} is not a regular file")
            if not existed:
                _fsync_dir(self._path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._sync_tail(fd, os.fstat(fd).st_size, known=not create)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except AuditWriteError:
            os.close(fd)
            raise
        except OSError as exc:
            os.close(fd)
            raise AuditWriteError(f"cannot open audit log {self._path}: {exc}") from exc
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        if not create:
            log.warning("audit log %s reopened at seq %d", self._path, self._last_seq)

    def _sync_tail(self, fd: int, size: int, *, known: bool) -> None:
        """Learn the last record from the end of the file; seal a torn tail first if there is one.

        ``known``: this writer has seen the file before, so the tail must not be
        behind what it last saw (a truncated or replaced log is refused, not extended).
        """
        if size == 0:
            last_line: bytes | None = None
            torn: bytes | None = None
        else:
            try:
                last_line, torn = _read_tail(fd, size)
            except OSError as exc:
                raise AuditWriteError(f"cannot read the tail of audit log {self._path}: {exc}") from exc
        if last_line is None:
            seq, digest = 0, GENESIS_HASH
        else:
            try:
                record = _check_record(last_line)
            except (ValueError, RecursionError) as exc:
                raise AuditWriteError(
                    f"the last complete record of audit log {self._path} is damaged ({exc}); "
                    "refusing to chain onto it; run `opsgate audit verify`"
                ) from exc
            seq, digest = record["seq"], record["hash"]
        if known and (seq < self._last_seq or (seq == self._last_seq and digest != self._last_hash)):
            raise AuditWriteError(
                f"audit log {self._path} now ends at seq {seq}, behind seq {self._last_seq} written before: "
                "it was truncated or replaced; refusing to append"
            )
        self._last_seq, self._last_hash, self._size = seq, digest, size
        if torn is not None:
            self._recover(fd, size, torn)

    def _recover(self, fd: int, size: int, torn: bytes) -> None:
        """Seal a torn last line: newline + a recovery record naming it, in one durable write."""
        try:
            line_no = _count_newlines(fd, size) + 1
        except OSError as exc:
            raise AuditWriteError(f"cannot read audit log {self._path}: {exc}") from exc
        body = {
            "stage": "recovery",
            "time": _utc_now(),
            "torn": {"line": line_no, "bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()},
        }
        record, line = seal_line(body, self._last_seq + 1, self._last_hash)
        data = b"\n" + line + b"\n"
        self._write_durably(fd, data)
        log.warning(
            "audit log %s: torn line %d (%d bytes) sealed by recovery record seq %d",
            self._path,
            line_no,
            len(torn),
            record["seq"],
        )
        self._last_seq, self._last_hash, self._size = record["seq"], record["hash"], size + len(data)

    def _discard(self) -> None:
        """Drop the descriptor (never reused after a failure); the next append reopens."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
