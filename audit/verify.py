"""Verify an audit log: find the first line where the hash chain breaks.

Streams the file line by line (memory bounded by the longest line, itself
capped), so a reviewer can check a log of any size. What is checked, per
physical line, in this order:

1. ``not-json``       the line is not a JSON object (or is over the length cap);
2. ``not-canonical``  the bytes are not the RFC 8785 form of that object, so the
                      hash (over canonical bytes) would not pin what is on disk;
3. ``hash-mismatch``  ``hash`` is missing or is not SHA-256 of the record without it
                      (an edited field);
4. ``seq-gap``        ``seq`` is not the previous seq + 1 (a deleted, inserted or
                      moved record: a forged record that reuses a seq lands here);
5. ``prev-mismatch``  ``prev`` is not the previous record's hash (an edited and
                      re-hashed record, or a spliced chain).

``torn-line`` is a line the writer did not finish: the last line with no
newline, or a line whose following ``recovery`` record names it but does not
match its bytes. A line immediately followed by a recovery record that names
exactly it (same line number, byte length and SHA-256) and that chains to the
last good record is skipped; nothing else is.

Truncation of the tail cannot be seen from the log alone; compare
``head_seq``/``head_hash`` against a checkpoint kept elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .chain import GENESIS_HASH, canonical, is_hash, loads, record_hash
from .log import MAX_LINE_BYTES

__all__ = ["VerifyReport", "verify_log"]


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify_log`. ``first_bad_line`` is 1-based, counting physical lines.

    ``records`` counts the valid records before the first bad line (all of them
    when ok). ``head_seq``/``head_hash`` are those of the last valid record
    (0 / ``GENESIS_HASH`` when there is none): what a checkpoint is compared with.
    """

    ok: bool
    records: int
    first_bad_line: int | None
    problem: str | None
    detail: str | None
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


class _Bad(Exception):
    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(problem, detail)
        self.problem = problem
        self.detail = detail


@dataclass
class _Line:
    number: int
    data: bytes  # without the newline
    terminated: bool
    obj: dict[str, Any] | None  # parsed JSON object, or None
    error: str | None  # why it is not a JSON object


def _parse(data: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        obj = loads(data)
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(obj, dict):
        return None, f"a JSON {type(obj).__name__}, not an object"
    return obj, None


def _lines(stream: IO[bytes], limit: int) -> Iterator[_Line]:
    """Physical lines of the first ``limit`` bytes, parsed once (verify looks one line ahead)."""
    number = 0
    while limit > 0:
        raw = stream.readline(min(MAX_LINE_BYTES + 1, limit))
        if not raw:
            return
        limit -= len(raw)
        number += 1
        terminated = raw.endswith(b"\n")
        data = raw[:-1] if terminated else raw
        if len(data) > MAX_LINE_BYTES:
            yield _Line(number, b"", True, None, f"line longer than {MAX_LINE_BYTES} bytes")
            return
        obj, error = _parse(data)
        yield _Line(number, data, terminated, obj, error)


def _snapshot_size(stream: IO[bytes]) -> int:
    """Size of the log at a record boundary.

    Writers hold an exclusive ``flock`` only while writing one line; taking the
    shared lock for a moment means no write is half done, so a live log is not
    reported torn just because a writer was mid-line. Records appended after
    this point are not checked.
    """
    fd = stream.fileno()
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:  # no lock support here: fall back to the size as it is
        return os.fstat(fd).st_size
    try:
        return os.fstat(fd).st_size
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _names_line(candidate: _Line, number: int) -> bool:
    """Is ``candidate`` a recovery record claiming to seal line ``number``?"""
    obj = candidate.obj
    if obj is None or obj.get("stage") != "recovery":
        return False
    torn = obj.get("torn")
    return isinstance(torn, dict) and torn.get("line") == number and not isinstance(torn.get("line"), bool)


def _torn_matches(line: _Line, recovery: dict[str, Any]) -> str | None:
    """None when the recovery record names exactly this line's bytes, else why not."""
    torn = recovery["torn"]
    size, digest = torn.get("bytes"), torn.get("sha256")
    if isinstance(size, bool) or size != len(line.data):
        return f"recovery record names {size!r} bytes, line has {len(line.data)}"
    if digest != hashlib.sha256(line.data).hexdigest():
        return "recovery record's sha256 does not match the line"
    return None


def _check(line: _Line, seq: int, prev: str) -> dict[str, Any]:
    """Check one line as record ``seq`` chained to ``prev``; raise _Bad with the kind of problem."""
    if line.obj is None:
        raise _Bad("not-json", line.error or "not a JSON object")
    obj = line.obj
    try:
        canon = canonical(obj)
    except (ValueError, TypeError, RecursionError) as exc:
        raise _Bad("not-canonical", f"cannot be canonicalised: {exc}") from None
    if canon != line.data:
        raise _Bad("not-canonical", "bytes differ from the RFC 8785 form of the record")
    stored = obj.get("hash")
    if not is_hash(stored):
        raise _Bad("hash-mismatch", "no valid hash field")
    if record_hash(obj) != stored:
        raise _Bad("hash-mismatch", "hash does not match the record's content")
    found = obj.get("seq")
    if isinstance(found, bool) or found != seq:
        raise _Bad("seq-gap", f"expected seq {seq}, found {found!r}")
    if obj.get("prev") != prev:
        raise _Bad("prev-mismatch", f"prev does not match the hash of record {seq - 1}")
    return obj


def verify_log(path: Path) -> VerifyReport:
    """Check the whole chain in ``path`` (as of the moment it is opened).

    Raises OSError when the file cannot be read (e.g. missing, a directory, no permission).
    """
    with open(path, "rb") as stream:
        return _verify(stream, _snapshot_size(stream))


def _verify(stream: IO[bytes], size: int) -> VerifyReport:
    records = 0
    seq, prev = 0, GENESIS_HASH

    def bad(number: int, problem: str, detail: str) -> VerifyReport:
        return VerifyReport(False, records, number, problem, detail, seq, prev)

    lines = _lines(stream, size)
    current = next(lines, None)
    while current is not None:
        following = next(lines, None)
        if following is not None and _names_line(following, current.number):
            assert following.obj is not None
            mismatch = _torn_matches(current, following.obj)
            if mismatch is not None:
                return bad(current.number, "torn-line", mismatch)
            current = following  # the torn line is accounted for; the recovery record is checked next
            continue
        if not current.terminated:
            return bad(current.number, "torn-line", "last line has no newline and no recovery record")
        try:
            record = _check(current, seq + 1, prev)
        except _Bad as exc:
            return bad(current.number, exc.problem, exc.detail)
        records += 1
        seq, prev = record["seq"], record["hash"]
        current = following
    return VerifyReport(True, records, None, None, None, seq, prev)
