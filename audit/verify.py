"""Verify an audit log: find the first place where the hash chain or a checkpoint is broken.

The chain runs through the rotated segments (``audit.jsonl.000001``, ...) in
number order, then the live file; line numbers count physical lines within
each file. Streams every file (memory bounded by the longest line, itself
capped), so a reviewer can check a log of any size. What is checked, per
physical line, in this order:

1. ``not-json``        the line is not a JSON object (or is over the length cap);
2. ``not-canonical``   the bytes are not the RFC 8785 form of that object, so the
                       hash (over canonical bytes) would not pin what is on disk;
3. ``hash-mismatch``   ``hash`` is missing or is not SHA-256 of the record without it
                       (an edited field);
4. ``seq-gap``         ``seq`` is not the previous seq + 1 (a deleted, inserted or
                       moved record: a forged record that reuses a seq lands here);
5. ``prev-mismatch``   ``prev`` is not the previous record's hash (an edited and
                       re-hashed record, or a spliced chain);
6. ``missing-segment`` a file starts later in the chain than the one before it
                       ended (a rotated segment was removed); the detail names it.

``torn-line`` is a line the writer did not finish: the last line with no
newline, or a line whose following ``recovery`` record names it but does not
match its bytes. A line immediately followed by a recovery record that names
exactly it (same line number, byte length and SHA-256) and that chains to the
last good record is skipped; nothing else is.

With checkpoints (:func:`verify_audit`), each checkpointed (seq, hash) must
still be in the log: ``checkpoint-mismatch`` at the record whose hash differs
(the log was rewritten, e.g. replaced whole by a fresh valid chain),
``truncated`` when the log ends before a checkpointed seq. Given keys, every
checkpoint must carry a valid signature (``bad-signature``, ``unknown-key``)
and a non-empty log must have at least one (``no-checkpoints``). A non-empty
log with no checkpoint at all is also ``no-checkpoints`` when an HMAC key lies
beside it or a ``start`` record says the log was checkpointed: deleting the
checkpoints file must not turn a cut or rewritten log into a passing one.

Speed: each line is decoded once and shown canonical by ``orjson`` where that
is exact (``chain.canonical_object``; other lines go through
``chain.matches_canonical`` and RFC 8785), and the hash input is that same
object written again without ``hash`` (``chain.canonical_without_hash``).
Lines are cut out of large chunks, and an honest line (one that, and whose
next line, canonical_object vouched for) is checked inline with no per-line
objects. The canonical check is not skipped even though the hash could be
taken over the line's own bytes: that hash equals the one over the record's
canonical bytes only when the line IS canonical. Without the check, a line
rewritten with a hash over its own non-canonical bytes would pass, and an
edited line would be reported as ``hash-mismatch`` rather than
``not-canonical`` (tests/audit/test_audit_fastpath.py forges such lines).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .chain import (
    GENESIS_HASH,
    canonical_object,
    canonical_without_hash,
    is_hash,
    matches_canonical,
    record_hash,
    unhashed_line,
)
from .checkpoint import KeyRing, SignedCheckpoint, parse_checkpoint_line
from .log import MAX_LINE_BYTES
from .segments import checkpoints_path, hmac_key_path, list_segments, segment_number

__all__ = ["CheckpointSummary", "VerifyReport", "verify_audit", "verify_log"]

_CHUNK = 1 << 20
_TOO_LONG = f"line longer than {MAX_LINE_BYTES} bytes"
_SAFE_INT = 2**53 - 1


@dataclass(frozen=True)
class CheckpointSummary:
    """What the checkpoints file held and how much of it could be trusted."""

    path: Path
    total: int  # lines that parse as checkpoints
    trusted: int  # with a signature valid under a key the reviewer gave (or found)
    unchecked: int  # compared with the log, but signatures not checked (no key for them)
    unreadable: int  # lines that do not parse (e.g. cut short by a crash); they claim nothing
    latest: int  # highest checkpointed seq that was compared with the log
    keys: tuple[str, ...]  # the keys signatures were checked with


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify_log` / :func:`verify_audit`. ``first_bad_line`` is 1-based within ``file``.

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
    file: Path | None = field(default=None, compare=False)
    bad_seq: int | None = field(default=None, compare=False)  # the seq the bad line claims, when it has one
    files: tuple[Path, ...] = field(default=(), compare=False)  # the files walked, in chain order
    checkpoints: CheckpointSummary | None = field(default=None, compare=False)
    checkpointed: str | None = field(default=None, compare=False)  # a start record's checkpoint key, if one names it


class _Bad(Exception):
    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(problem, detail)
        self.problem = problem
        self.detail = detail


@dataclass(slots=True)
class _Line:
    number: int
    data: bytes  # without the newline
    terminated: bool
    obj: dict[str, Any] | None  # parsed JSON object, or None
    error: str | None  # why it is not a JSON object
    floats_need_care: bool = False
    offset: int = 0  # where the line starts in its file
    canonical: bool = False  # shown to be its object's RFC 8785 form already (chain.canonical_object)


class _Parser:
    """``chain.loads`` with a reused decoder, also noting float literals the fast canonical check cannot vouch for."""

    def __init__(self) -> None:
        self.floats_need_care = False
        decoder = json.JSONDecoder(parse_int=self._int, parse_float=self._float, parse_constant=self._constant)
        self._decode = decoder.decode
        self._scan = decoder.scan_once  # type: ignore[attr-defined]

    @staticmethod
    def _int(literal: str) -> int | float:
        value = int(literal)
        return value if -_SAFE_INT <= value <= _SAFE_INT else float(literal)

    def _float(self, literal: str) -> float:
        value = float(literal)
        if "e" in literal or "E" in literal or value.is_integer():
            self.floats_need_care = True
        return value

    @staticmethod
    def _constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def line(self, number: int, data: bytes, terminated: bool, offset: int) -> _Line:
        fast = canonical_object(data)  # every honest line: parsed and shown canonical by orjson in one go
        if fast is not None:
            return _Line(number, data, terminated, fast, None, False, offset, True)
        return self.exact(number, data, terminated, offset)

    def exact(self, number: int, data: bytes, terminated: bool, offset: int) -> _Line:
        """The line as ``chain.loads`` reads it, for a line ``canonical_object`` did not vouch for."""
        self.floats_need_care = False
        try:
            if data[:1] == b"{" and data[1:2] != b"\x00":  # what every record looks like: UTF-8, no padding
                text = data.decode("utf-8", "surrogatepass")
                try:
                    obj, end = self._scan(text, 0)
                except StopIteration:
                    end = -1
                if end != len(text):  # let the full decoder say what is wrong, as json.loads would
                    self.floats_need_care = False
                    obj = self._decode(text)
            else:
                obj = self._decode(data.decode(json.detect_encoding(data), "surrogatepass"))
        except (ValueError, RecursionError) as exc:
            return _Line(number, data, terminated, None, f"not JSON: {exc}", False, offset)
        if not isinstance(obj, dict):
            return _Line(number, data, terminated, None, f"a JSON {type(obj).__name__}, not an object", False, offset)
        return _Line(number, data, terminated, obj, None, self.floats_need_care, offset)


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


def _content(line: _Line) -> dict[str, Any]:
    """Check one line on its own (JSON object, canonical, hash); raise _Bad with the kind of problem."""
    obj = line.obj
    if obj is None:
        raise _Bad("not-json", line.error or "not a JSON object")
    if not line.canonical:
        try:
            canonical = matches_canonical(obj, line.data, floats_need_care=line.floats_need_care)
        except (ValueError, TypeError, RecursionError) as exc:
            raise _Bad("not-canonical", f"cannot be canonicalised: {exc}") from None
        if not canonical:
            raise _Bad("not-canonical", "bytes differ from the RFC 8785 form of the record")
    stored = obj.get("hash")
    if not is_hash(stored):
        raise _Bad("hash-mismatch", "no valid hash field")
    assert isinstance(stored, str)
    unhashed = unhashed_line(line.data, stored)
    actual = hashlib.sha256(unhashed).hexdigest() if unhashed is not None else record_hash(obj)
    if actual != stored:
        raise _Bad("hash-mismatch", "hash does not match the record's content")
    return obj


def _position(found: Any, found_prev: Any, seq: int, prev: str) -> None:
    """Check a record's place: it must be ``seq``, chained to ``prev``."""
    if isinstance(found, bool) or found != seq:
        raise _Bad("seq-gap", f"expected seq {seq}, found {found!r}")
    if found_prev != prev:
        raise _Bad("prev-mismatch", f"prev does not match the hash of record {seq - 1}")


# --- the files of one log, at one moment ------------------------------------------------------


@dataclass
class _Snapshot:
    files: list[tuple[Path, IO[bytes], int]]  # chain order: segments by number, then the live file
    checkpoints: bytes | None  # the checkpoints file as of the same moment (None: there is none)

    def close(self) -> None:
        for _, stream, _ in self.files:
            stream.close()


def _read_optional(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _snapshot(live: Path, checkpoints: Path | None) -> _Snapshot:
    """Open every file of the log and note its size at a record boundary.

    Writers hold an exclusive ``flock`` on the live file while they write records,
    checkpoints or rotate; holding the shared lock for a moment means no line is
    half written, no rotation is half done, and every checkpoint read refers to
    records already in the snapshot. Records appended after it are not checked.
    Raises OSError when there is no log at ``live`` (no live file, no segment).
    """
    for _ in range(8):
        try:
            live_stream: IO[bytes] | None = open(live, "rb")  # noqa: SIM115 - closed by _Snapshot.close
        except FileNotFoundError:
            live_stream = None  # a rotation stopped before creating it, or no log at all
        streams: list[tuple[Path, IO[bytes], int]] = []
        try:
            locked = False
            if live_stream is not None:
                try:
                    fcntl.flock(live_stream.fileno(), fcntl.LOCK_SH)
                    locked = True
                except OSError:
                    pass  # no lock support here: take the sizes as they are
                st = os.fstat(live_stream.fileno())
                try:
                    on_disk = os.stat(live)
                except FileNotFoundError:
                    on_disk = None
                if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (st.st_dev, st.st_ino):
                    live_stream.close()  # rotated between open and lock: look again
                    continue
            try:
                for _, segment in list_segments(live):
                    stream: IO[bytes] = open(segment, "rb")  # noqa: SIM115
                    streams.append((segment, stream, os.fstat(stream.fileno()).st_size))
                if live_stream is not None:
                    streams.append((live, live_stream, os.fstat(live_stream.fileno()).st_size))
                elif not streams:
                    raise FileNotFoundError(2, "No such file or directory", str(live))
                cp_bytes = _read_optional(checkpoints)
            finally:
                if locked and live_stream is not None:
                    with contextlib.suppress(OSError):
                        fcntl.flock(live_stream.fileno(), fcntl.LOCK_UN)
        except BaseException:
            for _, stream, _ in streams:
                stream.close()
            if live_stream is not None:
                live_stream.close()
            raise
        return _Snapshot(streams, cp_bytes)
    raise OSError(f"audit log {live} kept being rotated while it was being opened")


# --- the walk -----------------------------------------------------------------------------------


@dataclass
class _Expect:
    """Checkpointed heads the log must still hold: seq -> (hash, where the checkpoint is)."""

    by_seq: dict[int, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Range:
    """Bytes ``start``..``stop`` of one file, whole lines; ``base`` lines of that file come before them."""

    fd: int
    start: int
    stop: int
    limit: int  # the file's size in the snapshot (the line after ``stop`` is read as lookahead)
    base: int


@dataclass
class _Outcome:
    """What one range holds, checked on its own: its first record's claimed place is checked by the caller."""

    records: int = 0
    lines: int = 0  # number of the last line of the range that was looked at
    first: tuple[int, Any, Any] | None = None  # (line, seq, prev) of the first record, as claimed
    last: tuple[int, str] | None = None  # (seq, hash) of the last valid record
    error: tuple[int, str, str, Any] | None = None  # (line, problem, detail, claimed seq)
    hashes: dict[int, tuple[str, int]] = field(default_factory=dict)  # wanted seq -> (hash, line)
    checkpointed: str | None = None  # ``alg key_id`` a valid start record says signs this log's checkpoints


class _LongWay:
    """The long way through a range's lines, naming the problem; the short way in :func:`_check_range` hands
    it the chain head (``seq``, ``prev``) for each line it cannot take itself."""

    __slots__ = ("looked", "out", "parser", "prev", "records", "seq", "wanted")

    def __init__(self, out: _Outcome, wanted: frozenset[int], base: int) -> None:
        self.out = out
        self.wanted = wanted
        self.parser = _Parser()
        self.seq: int | None = None
        self.prev = GENESIS_HASH
        self.records = 0  # records this way took
        self.looked = base  # the last line it checked

    def line(self, number: int, data: bytes, vouched: dict[str, Any] | None, offset: int,
             terminated: bool = True) -> _Line:
        """``data`` as a _Line, reusing what ``chain.canonical_object`` made of it (``vouched``)."""
        if vouched is not None:
            return _Line(number, data, terminated, vouched, None, False, offset, True)
        return self.parser.exact(number, data, terminated, offset)

    def check(self, current: _Line, following: _Line | None, seq: int | None, prev: str) -> bool:
        """Check ``current`` after the chain head ``seq``/``prev`` (``following`` only tells whether a recovery
        record seals it as torn). Leaves the new head in ``self.seq``/``self.prev``; False when the line is
        bad: then ``out.error`` says why."""
        out = self.out
        self.seq, self.prev = seq, prev
        self.looked = current.number
        if (
            following is not None
            and following.obj is not None
            and following.obj.get("stage") == "recovery"
            and _names_line(following, current.number)
        ):
            mismatch = _torn_matches(current, following.obj)
            if mismatch is not None:
                out.error = (current.number, "torn-line", mismatch, None)
                return False
            return True  # the torn line is accounted for; the recovery record is checked next
        record = current.obj
        claimed = record.get("seq") if record is not None else None
        try:
            if not current.terminated:
                raise _Bad("torn-line", "last line has no newline and no recovery record")
            record = _content(current)
            found = record.get("seq")
            if self.seq is None:
                out.first = (current.number, found, record.get("prev"))
                if type(found) is not int:  # _walk reports this line (as seq-gap) when it checks out.first
                    raise _Bad("seq-gap", f"expected an integer seq, found {found!r}")
            else:
                _position(found, record.get("prev"), self.seq + 1, self.prev)
        except _Bad as exc:
            out.error = (current.number, exc.problem, exc.detail, claimed)
            return False
        self.seq, self.prev = found, record["hash"]
        self.records += 1
        if out.checkpointed is None and record.get("stage") == "start" and "checkpoints" in record:
            out.checkpointed = _key_named(record["checkpoints"])
        if found in self.wanted:
            out.hashes[found] = (self.prev, current.number)
        return True


def _check_range(part: _Range, wanted: frozenset[int]) -> _Outcome:
    """Check the records of one range: each line alone, and each link after the range's first record.

    Reads bytes ``part.start``..``part.limit`` with ``pread`` in large chunks (so
    ranges of one file can be read by several processes at once) and looks at
    each physical line once, one line ahead (a recovery record seals the line
    before it). A line that ``chain.canonical_object`` vouched for, whose next
    line it also vouched for and is no recovery record, and that hashes and
    links as expected takes a short way: the same checks, inline, with no
    per-line objects. Anything else goes the long way (:class:`_LongWay`),
    which names the problem. Memory is bounded by the longest line, itself capped.
    """
    out = _Outcome()
    long = _LongWay(out, wanted, part.base)
    vouch, sha256, unhashed = canonical_object, hashlib.sha256, canonical_without_hash
    fd, stop, limit = part.fd, part.stop, part.limit
    seq: int | None = None  # the chain head as the short way left it
    prev = GENESIS_HASH
    records = 0  # records the short way took
    looked = part.base  # the last line the short way took
    number = part.base  # the last line read
    at = part.start  # where the next line starts
    pos = part.start  # where the next chunk starts
    carry: list[bytes] = []  # the start of a line that goes on in the next chunk
    carry_size = 0
    # The line read last, waiting for the one after it: its bytes, number, offset, what canonical_object
    # made of it, and its _Line when the long way already built one.
    held: bytes | None = None
    held_obj: dict[str, Any] | None = None
    held_number = held_at = 0
    held_line: _Line | None = None
    tail: _Line | None = None  # a line that ends the range's bytes: over the length cap, or not ended
    try:
        while pos < limit:
            chunk = os.pread(fd, min(_CHUNK, limit - pos), pos)
            if not chunk:
                break
            pos += len(chunk)
            pieces = chunk.split(b"\n")
            last = pieces.pop()
            if carry and pieces:
                pieces[0] = b"".join(carry) + pieces[0]
                carry, carry_size = [], 0
            for data in pieces:
                number += 1
                data_at, at = at, at + len(data) + 1
                if len(data) > MAX_LINE_BYTES:
                    tail = _Line(number, b"", True, None, _TOO_LONG, False, data_at)
                    break
                obj = vouch(data)
                if held is not None:
                    if held_obj is not None and obj is not None and seq is not None and obj.get("stage") != "recovery":
                        stored: Any = held_obj.get("hash")
                        found = held_obj.get("seq")
                        # a str whose SHA-256 check passes below is a valid hash: is_hash would add nothing
                        if (
                            type(found) is int
                            and found == seq + 1
                            and held_obj.get("prev") == prev
                            and type(stored) is str
                            and sha256(unhashed(held_obj)).hexdigest() == stored
                        ):
                            seq, prev = found, stored
                            records += 1
                            looked = held_number
                            if found in wanted:
                                out.hashes[found] = (stored, held_number)
                            if "checkpoints" in held_obj and held_obj.get("stage") == "start":
                                out.checkpointed = out.checkpointed or _key_named(held_obj["checkpoints"])
                            if data_at >= stop:
                                return out
                            held, held_obj, held_number, held_at, held_line = data, obj, number, data_at, None
                            continue
                    following = long.line(number, data, obj, data_at)
                    if held_line is None:
                        held_line = long.line(held_number, held, held_obj, held_at)
                    if not long.check(held_line, following, seq, prev):
                        return out
                    seq, prev, held_line = long.seq, long.prev, following
                if data_at >= stop:
                    return out
                held, held_obj, held_number, held_at = data, obj, number, data_at
            if tail is not None:
                break
            if last:
                carry.append(last)
                carry_size += len(last)
                if carry_size > MAX_LINE_BYTES:
                    tail = _Line(number + 1, b"", True, None, _TOO_LONG, False, at)
                    break
        if tail is None and carry:
            rest = b"".join(carry)
            tail = long.line(number + 1, rest, vouch(rest), at, terminated=False)
        if held is not None:
            current = held_line or long.line(held_number, held, held_obj, held_at)
            if not long.check(current, tail, seq, prev):
                return out
            seq, prev = long.seq, long.prev
        if tail is not None and tail.offset < stop:
            long.check(tail, None, seq, prev)
            seq, prev = long.seq, long.prev
        return out
    finally:
        out.records = records + long.records
        out.lines = max(looked, long.looked)
        if seq is not None:
            out.last = (seq, prev)


def _key_named(value: Any) -> str:
    """``alg key_id`` from a start record's ``checkpoints`` field (whatever it holds, it says checkpoints exist)."""
    if isinstance(value, dict):
        return f"{value.get('alg', '?')} {value.get('key_id', '?')}"[:80]
    return "a key"


def _check_range_task(part: _Range, wanted: frozenset[int]) -> _Outcome:
    return _check_range(part, wanted)


def _count_newlines(fd: int, start: int, stop: int) -> int:
    count = 0
    while start < stop:
        chunk = os.pread(fd, min(_CHUNK, stop - start), start)
        if not chunk:
            break
        count += chunk.count(b"\n")
        start += len(chunk)
    return count


def _line_start_after(fd: int, offset: int, limit: int) -> int:
    """The offset just after the first newline at or after ``offset`` (``limit`` if there is none)."""
    while offset < limit:
        chunk = os.pread(fd, min(65536, limit - offset), offset)
        if not chunk:
            break
        at = chunk.find(b"\n")
        if at >= 0:
            return offset + at + 1
        offset += len(chunk)
    return limit


def _split(fd: int, size: int, parts: int) -> list[_Range]:
    """Cut one file into about ``parts`` ranges at line boundaries, each knowing its first line number."""
    cuts = [0]
    for k in range(1, parts):
        cut = _line_start_after(fd, max(size * k // parts, cuts[-1]), size)
        if cut > cuts[-1] and cut < size:
            cuts.append(cut)
    cuts.append(size)
    ranges = []
    base = 0
    for start, stop in itertools.pairwise(cuts):
        ranges.append(_Range(fd, start, stop, size, base))
        base += _count_newlines(fd, start, stop)
    return ranges


PARALLEL_MIN_BYTES = 16 * 1024 * 1024
"""Below this much log, verify runs in this process; above, in one process per core (when it is safe to fork)."""


MIN_RANGE_BYTES = 1 << 20
"""Smallest piece of a file handed to one worker process."""
RANGES_PER_WORKER = 2
PROGRESS_RANGES = 32
"""Ranges a file checked in this process is cut into when someone watches a progress bar."""


def _workers(total: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    if total < PARALLEL_MIN_BYTES or threading.active_count() > 1 or not sys.platform.startswith("linux"):
        return 1  # forking a process with other threads running can deadlock the child
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _run(
    ranges: list[_Range], wanted: frozenset[int], workers: int, progress: Callable[[int], None] | None = None
) -> list[_Outcome]:
    """Check each range; ``progress(bytes)`` after each one, in order (a reviewer's progress bar)."""
    done = progress or (lambda _: None)
    outcomes: list[_Outcome] = []
    if workers <= 1 or len(ranges) <= 1:
        for part in ranges:
            outcomes.append(_check_range(part, wanted))
            done(part.stop - part.start)
        return outcomes
    context = multiprocessing.get_context("fork")  # the children inherit the snapshot's open files
    with ProcessPoolExecutor(max_workers=min(workers, len(ranges)), mp_context=context) as pool:
        for part, outcome in zip(ranges, pool.map(_check_range_task, ranges, [wanted] * len(ranges)), strict=True):
            outcomes.append(outcome)
            done(part.stop - part.start)
    return outcomes


def _missing_segment_detail(path: Path, live: Path, previous: int | None, found: Any, expected: int) -> str:
    number = segment_number(live.name, path.name)
    if number is not None and (previous or 0) + 1 < number:
        gone = [f"{live.name}.{n:06d}" for n in range((previous or 0) + 1, number)]
        names = gone[0] if len(gone) == 1 else f"{gone[0]} .. {gone[-1]}"
        what = f"{names} {'is' if len(gone) == 1 else 'are'} missing"
    else:
        what = "a segment before it is missing"
    return f"{what}: {path.name} starts at seq {found!r}, the chain before it ends at seq {expected - 1}"


def _walk(
    live: Path,
    snapshot: _Snapshot,
    expect: _Expect,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every file in chain order: ranges are checked alone (maybe in parallel), then linked here.

    With ``progress``, a file checked in this process is still cut into ranges, so it can be told as they finish.
    """
    files = tuple(path for path, _, _ in snapshot.files)
    total = sum(size for _, _, size in snapshot.files)
    count = _workers(total, workers)
    plan: list[tuple[int, _Range]] = []  # (file index, range)
    for index, (_, stream, size) in enumerate(snapshot.files):
        fd = stream.fileno()
        parts = max(1, min(count * RANGES_PER_WORKER, size // MIN_RANGE_BYTES)) if count > 1 else 1
        if progress is not None and count == 1:
            parts = max(1, min(PROGRESS_RANGES, size // MIN_RANGE_BYTES))
        ranges = _split(fd, size, parts) if parts > 1 else [_Range(fd, 0, size, size, 0)]
        plan.extend((index, part) for part in ranges)
    outcomes = _run([part for _, part in plan], frozenset(expect.by_seq), count, progress)

    records = 0
    seq, prev = 0, GENESIS_HASH
    checkpointed: str | None = None
    previous_number: int | None = None
    last_path, last_lines = live, 0

    def bad(path: Path, number: int, problem: str, detail: str, claimed: Any = None) -> VerifyReport:
        claimed_seq = claimed if isinstance(claimed, int) and not isinstance(claimed, bool) else None
        return VerifyReport(False, records, number, problem, detail, seq, prev, path, claimed_seq, files,
                            checkpointed=checkpointed)

    for (index, part), out in zip(plan, outcomes, strict=True):
        path = files[index]
        number_of_file = segment_number(live.name, path.name)
        if out.first is not None:
            line, found, found_prev = out.first
            try:
                _position(found, found_prev, seq + 1, prev)
            except _Bad as exc:
                boundary = part.start == 0 and (index > 0 or (number_of_file is not None and number_of_file > 1))
                gap = isinstance(found, int) and not isinstance(found, bool) and found > seq + 1
                if boundary and gap and exc.problem == "seq-gap":
                    detail = _missing_segment_detail(path, live, previous_number, found, seq + 1)
                    return bad(path, line, "missing-segment", detail, found)
                return bad(path, line, exc.problem, exc.detail, found)
        for at in sorted(out.hashes):
            digest, line = out.hashes[at]
            wanted_hash, where = expect.by_seq[at]
            if digest != wanted_hash:
                records, seq, prev = records + at - (seq), at, digest
                return bad(path, line, "checkpoint-mismatch",
                           f"record {at} is not the one {where} signed: the log was rewritten or replaced", at)
        if out.last is not None:
            records += out.records
            seq, prev = out.last
        checkpointed = checkpointed or out.checkpointed
        if out.error is not None:
            line, problem, detail, claimed = out.error
            return bad(path, line, problem, detail, claimed)
        last_path, last_lines = path, max(out.lines, part.base)
        if number_of_file is not None:
            previous_number = number_of_file
    beyond = [s for s in expect.by_seq if s > seq]
    if beyond:
        top = max(beyond)
        return VerifyReport(
            False,
            records,
            last_lines + 1,
            "truncated",
            f"the log ends at seq {seq}, but {expect.by_seq[top][1]} signed seq {top}: "
            f"records {seq + 1}..{top} are gone",
            seq,
            prev,
            last_path,
            seq + 1,
            files,
            checkpointed=checkpointed,
        )
    return VerifyReport(True, records, None, None, None, seq, prev, None, None, files, checkpointed=checkpointed)


def verify_log(path: Path, *, workers: int | None = None) -> VerifyReport:
    """Check the whole chain of the log whose live file is ``path``, through all its segments.

    Checks the chain only; see :func:`verify_audit` for checkpoints (truncation,
    replacement). ``workers``: processes to check with (default: one per core
    for a large log, when forking is safe). Raises OSError when the log cannot
    be read (missing, a directory, no permission).
    """
    snapshot = _snapshot(Path(path), None)
    try:
        return _walk(Path(path), snapshot, _Expect(), workers)
    finally:
        snapshot.close()


def _checkpoint_lines(data: bytes) -> Iterator[tuple[int, SignedCheckpoint | None]]:
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw:
            continue
        try:
            yield number, parse_checkpoint_line(raw)
        except (ValueError, RecursionError):
            yield number, None


def verify_audit(
    path: Path,
    *,
    keys: KeyRing | None = None,
    checkpoints: Path | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check the chain and the checkpoints (default: ``<path>.checkpoints``, absent is allowed).

    Without ``keys`` every readable checkpoint is compared with the log but its
    signature is not checked, which catches a careless cut but not someone who
    also rewrote the checkpoints. With ``keys`` only checkpoints signed by one of
    them count; one with a bad signature is damage (and, if the ring is strict,
    one signed by another key too), and a non-empty log needs at least one.
    Whatever the keys, a non-empty log with no checkpoint to compare is damaged
    when its HMAC key lies beside it or a start record says it is checkpointed.
    ``progress(bytes)`` is called as parts of the log are checked. Raises OSError when the log cannot be read.
    """
    live = Path(path)
    cp_path = checkpoints if checkpoints is not None else checkpoints_path(live)
    snapshot = _snapshot(live, cp_path)
    try:
        expect = _Expect()
        total = trusted = unchecked = unreadable = 0
        bad_checkpoint: tuple[int, str, str] | None = None
        for number, signed in _checkpoint_lines(snapshot.checkpoints or b""):
            if signed is None:
                unreadable += 1
                continue
            total += 1
            where = f"checkpoint line {number} ({signed.checkpoint.event}, {signed.checkpoint.time})"
            if keys:
                problem = keys.check(signed)
                if problem == "unknown-key" and not keys.strict:
                    unchecked += 1
                elif problem is not None:
                    if bad_checkpoint is None:
                        bad_checkpoint = (number, problem, f"{signed.alg} key {signed.key_id}")
                    continue
                else:
                    trusted += 1
            else:
                unchecked += 1
            size = signed.checkpoint.size
            if size > 0:
                known = expect.by_seq.get(size)
                if known is None or known[0] == signed.checkpoint.head:
                    expect.by_seq.setdefault(size, (signed.checkpoint.head, where))
                elif bad_checkpoint is None:  # two checkpoints disagree about one seq: both cannot be true
                    bad_checkpoint = (number, "checkpoint-mismatch", f"it contradicts {known[1]} about seq {size}")
        summary = CheckpointSummary(
            cp_path,
            total,
            trusted,
            unchecked,
            unreadable,
            max(expect.by_seq, default=0),
            tuple(keys.key_ids()) if keys else (),
        )
        report = _walk(live, snapshot, expect, workers, progress)
    finally:
        snapshot.close()
    if report.ok and bad_checkpoint is not None:
        number, problem, detail = bad_checkpoint
        report = VerifyReport(
            False, report.records, number, problem, detail, report.head_seq, report.head_hash, cp_path, None,
            report.files,
        )
    elif report.ok and keys and keys.strict and trusted == 0 and (report.head_seq > 0 or total == 0):
        report = VerifyReport(
            False, report.records, None, "no-checkpoints",
            f"no checkpoint signed by the given key in {cp_path}: the log cannot be shown complete",
            report.head_seq, report.head_hash, cp_path, None, report.files, checkpointed=report.checkpointed,
        )
    elif report.ok and trusted + unchecked == 0:  # even an empty log: every writer checkpoints at open
        why = _checkpoints_expected(report.checkpointed, hmac_key_path(live))
        if why is not None:
            report = VerifyReport(
                False, report.records, None, "no-checkpoints",
                f"{cp_path} holds no checkpoint, but {why}: the checkpoints were removed, so a log cut short "
                "or rewritten cannot be ruled out",
                report.head_seq, report.head_hash, cp_path, None, report.files, checkpointed=report.checkpointed,
            )
    return VerifyReport(
        report.ok, report.records, report.first_bad_line, report.problem, report.detail, report.head_seq,
        report.head_hash, report.file, report.bad_seq, report.files, summary, report.checkpointed,
    )


def _checkpoints_expected(checkpointed: str | None, key_beside: Path) -> str | None:
    """Why this log must have checkpoints (a start record names its key, or a key lies beside it), or None."""
    if checkpointed is not None:
        return f"its start records say it is checkpointed (key {checkpointed})"
    if os.path.lexists(key_beside):
        return f"its checkpoint key {key_beside.name} lies beside it"
    return None
