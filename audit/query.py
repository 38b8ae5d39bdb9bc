"""Reading the audit log for a reviewer: records across segments, calls joined, filters, rendering.

A *call* is a decision record joined with its outcome record (same
``call_id``); server events (start, stop, recovery, ...) stand alone. Filters
and rendering are pure functions over records; only the ``read_*`` and
``follow`` functions touch files. Reading is tolerant: a line that does not
parse (a torn write) is skipped here; ``verify`` is what judges the log.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .denial import denial_kind
from .segments import list_segments

__all__ = [
    "Call",
    "Filters",
    "Located",
    "denial_kind",
    "follow",
    "iter_table",
    "join_calls",
    "last_matching",
    "last_records",
    "matches",
    "parse_when",
    "read_records",
    "record_line",
    "render_call",
    "render_table",
]

CALL_STAGES = frozenset({"decision", "outcome"})
OUTCOME_WINDOW = 10_000
"""Records after which a decision still waiting for its outcome is shown without one (bounds memory)."""


@dataclass(frozen=True)
class Located:
    """A record and where it is: file and 1-based line, and its raw line (for ``--json``)."""

    path: Path
    line: int
    record: dict[str, Any]
    raw: bytes


# --- reading --------------------------------------------------------------------------------------


def chain_files(live: Path) -> list[Path]:
    """The files of the log in chain order: rotated segments by number, then the live file if present."""
    files = [path for _, path in list_segments(live)]
    if live.exists() or not files:
        files.append(live)
    return files


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def read_records(live: Path) -> Iterator[Located]:
    """Every record of the log in chain order (unparseable lines skipped). Raises OSError if unreadable."""
    for path in chain_files(live):
        with open(path, "rb") as stream:
            for number, raw in enumerate(stream, start=1):
                if not raw.endswith(b"\n"):
                    break  # a line still being written, or torn: not a record yet
                record = _parse(raw[:-1])
                if record is not None:
                    yield Located(path, number, record, raw[:-1])


def _tail_lines(path: Path, want: int) -> list[tuple[int, bytes]]:
    """Up to ``want`` last complete lines of one file with their line numbers, reading backwards."""
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        end = size
        data = b""
        block = 65536
        while end > 0:
            start = max(0, end - block)
            stream.seek(start)
            data = stream.read(end - start) + data
            end = start
            if data.count(b"\n") > want:
                break
            block *= 2
        complete = data[: data.rfind(b"\n") + 1] if b"\n" in data else b""
        lines = complete.split(b"\n")[:-1]
        if end > 0:
            lines = lines[1:]  # the first piece may be cut: drop it
        lines = lines[-want:] if want else []
        if not lines:
            return []
        stream.seek(0)
        total = 0
        remaining = size
        while remaining > 0:  # count lines up to the kept ones, to name their numbers
            chunk = stream.read(min(1 << 20, remaining))
            if not chunk:
                break
            total += chunk.count(b"\n")
            remaining -= len(chunk)
        first = total - len(lines) + 1
        return [(first + i, line) for i, line in enumerate(lines)]


def last_records(live: Path, count: int) -> list[Located]:
    """The last ``count`` records of the log, oldest first, reading files from the end."""
    found: list[Located] = []
    for path in reversed(chain_files(live)):
        if len(found) >= count:
            break
        chunk = []
        for number, raw in _tail_lines(path, count - len(found)):
            record = _parse(raw)
            if record is not None:
                chunk.append(Located(path, number, record, raw))
        found = chunk + found
    return found[-count:] if count else []


def _backwards(path: Path, budget: int) -> Iterator[bytes]:
    """Complete lines of one file, newest first, reading at most about ``budget`` bytes from its end.

    An unterminated last line (being written, or torn) is skipped.
    """
    with open(path, "rb") as stream:
        pos = os.fstat(stream.fileno()).st_size
        carry = b""  # the end part of a line whose start lies before ``pos``
        in_tail = True  # still inside the unterminated end of the file
        while pos > 0 and budget > 0:
            start = max(0, pos - 65536)
            stream.seek(start)
            block = stream.read(pos - start)
            budget -= len(block)
            pos = start
            data = block + carry
            if in_tail:
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = b""
                    continue
                data, in_tail = data[:cut], False
            pieces = data.split(b"\n")
            carry = pieces.pop(0)
            yield from reversed(pieces)
        if pos == 0 and not in_tail and carry:
            yield carry


def last_matching(
    live: Path, keep: Callable[[dict[str, Any]], bool], limit: int, *, max_bytes: int = 8 << 20
) -> list[dict[str, Any]]:
    """The last ``limit`` records for which ``keep`` is true, oldest first.

    Reads backwards from the end of the live file into older segments, and stops
    after ``max_bytes``, so the cost is bounded however long the log is (this
    serves a principal's own recent records while the server runs).
    """
    found: list[dict[str, Any]] = []
    budget = max_bytes
    for path in reversed(chain_files(live)):
        if len(found) >= limit or budget <= 0:
            break
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        for raw in _backwards(path, budget):
            record = _parse(raw)
            if record is not None and keep(record):
                found.append(record)
                if len(found) >= limit:
                    break
        budget -= size
    found.reverse()
    return found


def _after(live: Path, ident: tuple[int, int]) -> Path:
    """The file that follows, in chain order, the one with ``ident`` (now a rotated segment)."""
    segments = list_segments(live)
    for index, (_, segment) in enumerate(segments):
        try:
            st = os.stat(segment)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            return segments[index + 1][1] if index + 1 < len(segments) else live
    return live


def follow(
    live: Path,
    emit: Callable[[Located], None],
    *,
    poll: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
    start_at_end: bool = True,
) -> None:
    """Call ``emit`` for each record appended to the log from now on, following rotations.

    Polls (portable, and a log gets a few records a second, not thousands).
    Only complete lines are emitted. When the file being read has been rotated
    away, it is drained and reading goes on with the next file in chain order
    (the next segment if several rotations happened between two polls, else
    the new live file), so no record is skipped. Returns when ``stop()`` is true.
    """
    stream: Any = None
    path = live
    ident: tuple[int, int] | None = None  # the file being read, or the one just drained
    number = 0
    pending = b""
    try:
        while True:
            data = b""
            if stream is None:
                opened = _open_successor(live, ident)
                if opened is not None:
                    stream, path = opened
                    st = os.fstat(stream.fileno())
                    ident = (st.st_dev, st.st_ino)
                    number, pending = 0, b""
                    if start_at_end:  # skip what is there, but not a record being written right now
                        number, pending = _skip_to_end(stream)
                    start_at_end = False
            if stream is not None:
                data = stream.read()
                if data:
                    pending += data
                    *complete, pending = pending.split(b"\n")
                    for raw in complete:
                        number += 1
                        record = _parse(raw)
                        if record is not None:
                            emit(Located(path, number, record, raw))
                else:
                    try:
                        on_disk = os.stat(live)
                        rotated = (on_disk.st_dev, on_disk.st_ino) != ident
                    except FileNotFoundError:
                        rotated = True
                    if rotated:  # drained, and nothing more will be written to it
                        stream.close()
                        stream = None
                        continue
            if stop():
                return
            if not data:
                time.sleep(poll)
    finally:
        if stream is not None:
            stream.close()


def _open_successor(live: Path, previous: tuple[int, int] | None) -> tuple[Any, Path] | None:
    """Open the file after ``previous`` in chain order (the live file to start with); None if it is not there yet.

    If the live file is the successor but gets rotated between looking and
    opening, the one opened would skip a segment; looking again after opening
    catches that, and the segment is opened instead.
    """
    for _ in range(100):
        path = live if previous is None else _after(live, previous)
        try:
            stream = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            return None
        if path == live and previous is not None and _after(live, previous) != live:
            stream.close()
            continue
        return stream, path
    return None


def _skip_to_end(stream: Any) -> tuple[int, bytes]:
    """Read to the end: the number of complete lines, and the start of a line still being written."""
    count = 0
    last = b""
    while chunk := stream.read(1 << 20):
        count += chunk.count(b"\n")
        cut = chunk.rfind(b"\n")
        last = chunk[cut + 1 :] if cut >= 0 else last + chunk
    return count, last


# --- calls ----------------------------------------------------------------------------------------


@dataclass
class Call:
    """What query lists: a decision with its outcome (either may be missing), or one server event."""

    decision: Located | None = None
    outcome: Located | None = None
    event: Located | None = None

    @property
    def first(self) -> Located:
        found = self.decision or self.event or self.outcome
        assert found is not None
        return found

    @property
    def records(self) -> list[Located]:
        return [r for r in (self.decision, self.outcome, self.event) if r is not None]

    def get(self, key: str) -> Any:
        """A field from the decision, else the outcome, else the event."""
        for located in self.records:
            if key in located.record:
                return located.record[key]
        return None

    @property
    def call_id(self) -> str | None:
        value = self.get("call_id")
        return value if isinstance(value, str) else None

    @property
    def effect(self) -> str | None:
        decision = self.decision.record.get("decision") if self.decision else None
        return decision.get("effect") if isinstance(decision, dict) else None

    @property
    def status(self) -> str | None:
        outcome = self.outcome.record.get("outcome") if self.outcome else None
        return outcome.get("status") if isinstance(outcome, dict) else None

    @property
    def is_call(self) -> bool:
        return self.event is None

    @property
    def waiting(self) -> bool:
        """An allowed decision whose outcome has not been read (yet)."""
        return self.decision is not None and self.outcome is None and self.effect == "allow"


def join_calls(records: Iterable[Located], *, window: int = OUTCOME_WINDOW) -> Iterator[Call]:
    """Join decisions with their outcomes, yielding calls and events in log order.

    A call is held back until its outcome is read; calls behind it wait too, so
    the order stays the order of the decisions. A decision whose outcome does
    not come within ``window`` records (or by its session's ``stop``) is let go
    without one; an outcome that arrives after that is shown on its own.
    """
    queue: deque[tuple[int, Call]] = deque()
    waiting: dict[str, Call] = {}
    for count, located in enumerate(records, start=1):
        record = located.record
        stage = record.get("stage")
        call_id = record.get("call_id")
        if stage == "outcome" and isinstance(call_id, str) and call_id in waiting:
            waiting.pop(call_id).outcome = located
        elif stage == "decision":
            call = Call(decision=located)
            queue.append((count, call))
            if call.waiting and isinstance(call_id, str):
                waiting[call_id] = call
        elif stage == "outcome":
            queue.append((count, Call(outcome=located)))
        else:
            if stage == "stop":
                session = record.get("session_id")
                for key in [k for k, c in waiting.items() if c.get("session_id") == session]:
                    del waiting[key]
            queue.append((count, Call(event=located)))
        while queue and (not queue[0][1].waiting or queue[0][1].call_id not in waiting or count - queue[0][0] > window):
            _, call = queue.popleft()
            if call.call_id in waiting and waiting[call.call_id] is call:
                del waiting[call.call_id]
            yield call
    for _, call in queue:
        yield call


# --- filters --------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"(?:(\d+)([smhdw]))+")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: datetime) -> datetime:
    """A point in time from RFC 3339 (``2025-06-01T12:00:00Z``, a date alone is midnight UTC,
    no offset means UTC) or a span back from ``now`` (``90s``, ``15m``, ``1h30m``, ``2d``, ``1w``).

    Raises ValueError with a message fit for the command line.
    """
    text = text.strip()
    if _RELATIVE.fullmatch(text):
        seconds = sum(int(n) * _UNITS[unit] for n, unit in re.findall(r"(\d+)([smhdw])", text))
        return now - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is neither RFC 3339 (2025-06-01T12:00:00Z) nor relative (1h, 30m, 2d)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def record_time(record: dict[str, Any]) -> datetime | None:
    value = record.get("time")
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    """What a reviewer asked for; None means any. ``principal``, ``tool`` and ``namespace``
    take shell-style wildcards (``ali*``); ``call_id`` matches a prefix."""

    principal: str | None = None
    tool: str | None = None
    namespace: str | None = None
    decision: str | None = None  # allow | deny | invalid
    outcome: str | None = None  # ok | error
    since: datetime | None = None
    until: datetime | None = None
    call_id: str | None = None
    events: bool = field(default=True)  # include server events when no call-only filter is set

    @property
    def calls_only(self) -> bool:
        return any(v is not None for v in (self.tool, self.namespace, self.decision, self.outcome, self.call_id))


def _like(pattern: str | None, value: Any) -> bool:
    return pattern is None or (isinstance(value, str) and fnmatch.fnmatchcase(value, pattern))


def matches(call: Call, filters: Filters) -> bool:
    """Does this call (or event) pass every filter?"""
    if not call.is_call and (filters.calls_only or not filters.events):
        return False
    if not _like(filters.principal, call.get("principal")):
        return False
    if call.is_call:
        if not _like(filters.tool, call.get("tool")) or not _like(filters.namespace, call.get("namespace")):
            return False
        if filters.decision is not None and call.effect != filters.decision:
            return False
        if filters.outcome is not None and call.status != filters.outcome:
            return False
        if filters.call_id is not None and not (call.call_id or "").startswith(filters.call_id):
            return False
    if filters.since is not None or filters.until is not None:
        when = record_time(call.first.record)
        if when is None:
            return False
        if filters.since is not None and when < filters.since:
            return False
        if filters.until is not None and when > filters.until:
            return False
    return True


# --- rendering ------------------------------------------------------------------------------------


def _short_time(value: Any) -> str:
    if not isinstance(value, str):
        return "-"
    return value.replace("T", " ")[:19] + ("Z" if value.endswith("Z") else "")


def _object_ref(call: Call) -> str:
    ref = call.get("object")
    if isinstance(ref, dict):
        kind, name = ref.get("kind"), ref.get("name")
        text = "/".join(str(p) for p in (kind, name) if p)
        return text or "-"
    name = call.get("arguments")
    if isinstance(name, dict) and isinstance(name.get("name"), str):
        return str(name["name"])
    return "-"


def _outcome_text(call: Call) -> str:
    if call.outcome is None:
        return "(no outcome)" if call.waiting else "-"
    status = call.status or "?"
    outcome = call.outcome.record.get("outcome")
    if status == "error" and isinstance(outcome, dict) and isinstance(outcome.get("error"), dict):
        code = outcome["error"].get("code")
        http = outcome["error"].get("http_status") or outcome.get("http_status")
        return f"error:{code}" + (f" (HTTP {http})" if http else "")
    return status


def _duration(call: Call) -> str:
    value = call.outcome.record.get("duration_ms") if call.outcome else None
    return f"{value:.1f}" if isinstance(value, int | float) and not isinstance(value, bool) else ""


def table_row(call: Call) -> list[str]:
    first = call.first.record
    seq = first.get("seq")
    if not call.is_call:
        stage = str(first.get("stage", "?"))
        detail = ""
        if stage == "recovery" and isinstance(first.get("torn"), dict):
            detail = f"torn line {first['torn'].get('line')}"
        elif stage == "start":
            detail = f"pid {first.get('pid', '?')}"
            if first.get("policy_hash"):
                detail += f" policy {str(first['policy_hash'])[:12]}"
        return [str(seq), _short_time(first.get("time")), str(first.get("principal") or "-"), f"({stage})",
                "", "", "", detail, "", ""]
    return [
        str(seq),
        _short_time(first.get("time")),
        str(call.get("principal") or "-"),
        str(call.get("tool") or "-"),
        str(call.get("namespace") or "-"),
        _object_ref(call),
        call.effect or ("-" if call.decision is None else "?"),
        _outcome_text(call),
        _duration(call),
        (call.call_id or "")[:12],
    ]


HEADER = ["SEQ", "TIME (UTC)", "PRINCIPAL", "TOOL", "NAMESPACE", "OBJECT", "DECISION", "OUTCOME", "MS", "CALL"]
_MAX_CELL = 40


def _clip(text: str) -> str:
    text = " ".join(text.split())  # no control characters or newlines from a record reach the terminal
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


_RIGHT = frozenset({0, 8})
TABLE_SIZING_ROWS = 1000


def _fit(cell: str, width: int, right: bool) -> str:
    if len(cell) > width:
        cell = cell[: width - 1] + "…"
    return cell.rjust(width) if right else cell.ljust(width)


def iter_table(calls: Iterable[Call], *, sizing_rows: int = TABLE_SIZING_ROWS) -> Iterator[str]:
    """An aligned table, one call or event a row (numbers right-aligned), header first.

    Column widths come from the first ``sizing_rows`` rows; later rows are
    streamed in those widths (a longer cell is clipped), so a query over a long
    log prints as it goes and holds only that many rows.
    """
    head: list[list[str]] = []
    iterator = iter(calls)
    for call in iterator:
        head.append([_clip(cell) for cell in table_row(call)])
        if len(head) >= sizing_rows:
            break
    widths = [max([len(HEADER[i]), *(len(row[i]) for row in head)]) for i in range(len(HEADER))]

    def line(row: list[str]) -> str:
        return "  ".join(_fit(cell, widths[i], i in _RIGHT) for i, cell in enumerate(row)).rstrip()

    yield line(HEADER)
    for row in head:
        yield line(row)
    for call in iterator:
        yield line([_clip(cell) for cell in table_row(call)])


def render_table(calls: Iterable[Call]) -> list[str]:
    """The whole table as a list of lines (see :func:`iter_table`)."""
    return list(iter_table(calls))


def record_line(located: Located) -> str:
    """One record on one line, for ``tail``: seq, time, stage, who, then what the stage says."""
    record = located.record
    stage = str(record.get("stage", "?"))
    what: list[str] = []
    if stage == "decision":
        decision = record.get("decision")
        effect = decision.get("effect") if isinstance(decision, dict) else None
        what = [str(record.get("tool")), f"ns={record.get('namespace')}", str(effect)]
    elif stage == "outcome":
        what = [str(record.get("tool")), _outcome_text(Call(outcome=located)), f"{record.get('duration_ms')} ms"]
    elif stage == "recovery" and isinstance(record.get("torn"), dict):
        what = [f"sealed torn line {record['torn'].get('line')}"]
    if isinstance(record.get("call_id"), str):
        what.append(f"call {record['call_id'][:12]}")
    cells = [
        f"{record.get('seq', '?')!s:>7}",
        _short_time(record.get("time")),
        f"{stage:<8}",
        f"{_clip(str(record.get('principal') or '-')):<12}",
        *(_clip(part) for part in what),
    ]
    return " ".join(cells).rstrip()


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{index}]")
    else:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        yield prefix, text


def _decision_text(call: Call) -> str:
    decision = call.decision.record.get("decision") if call.decision else None
    if not isinstance(decision, dict):
        return "-"
    text = str(decision.get("effect", "?"))
    if decision.get("reason"):
        text += f": {decision['reason']}"
    if decision.get("rule"):
        text += f" [rule {decision['rule']}" + (f" at {decision['source']}]" if decision.get("source") else "]")
    return text


def _client(value: Any) -> str:
    if not isinstance(value, dict):
        return "-"
    return " ".join(str(v) for v in value.values() if v) or "-"


_SKIP = frozenset({"hash", "prev", "seq", "stage", "v"})


def render_call(call: Call) -> list[str]:
    """A call for ``show``: a summary, then the decision and the outcome record one after the other."""
    lines = [f"call {call.call_id or '-'}"]
    summary = [
        ("who", f"{call.get('principal')} ({call.get('principal_source')}), os user {call.get('os_user')}"),
        ("client", _client(call.get("client"))),
        ("what", f"{call.get('tool')} ({call.get('verb')}) in namespace {call.get('namespace')}, "
                 f"object {_object_ref(call)}"),
        ("decision", _decision_text(call)),
        ("outcome", f"{_outcome_text(call)}" + (f" in {_duration(call)} ms" if _duration(call) else "")),
    ]
    width = max(len(k) for k, _ in summary)
    lines += [f"  {k.ljust(width)}  {' '.join(v.split())}" for k, v in summary]
    for title, located in (("decision", call.decision), ("outcome", call.outcome)):
        lines.append("")
        if located is None:
            lines.append(f"{title}: none in the log" + (" (the call may still be running)" if call.waiting else ""))
            continue
        record = located.record
        lines.append(f"{title} record: seq {record.get('seq')}, {located.path.name} line {located.line}")
        fields = [(k, v) for k, v in _flatten({k: v for k, v in record.items() if k not in _SKIP})]
        width = max((len(k) for k, _ in fields), default=0)
        lines += [f"  {k.ljust(width)}  {' '.join(v.split())}" for k, v in fields]
        lines.append(f"  {'hash'.ljust(width)}  {record.get('hash')}")
    return lines
