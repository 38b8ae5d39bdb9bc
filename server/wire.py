"""The stdin edge: every request line reaches an answer, and every tool call reaches the gate.

The SDK's stdio reader parses each line with pydantic and then validates the
request's envelope. Three kinds of line would slip past the gate there, with no
audit record and often no answer (issue 15 items 4 and 19):

* nested past about 200 levels: pydantic gives up, the line is dropped;
* a ``tools/call`` whose envelope the SDK rejects (``params`` missing or a list,
  ``name`` not a string, ``arguments`` not an object): an SDK error, or nothing;
* a line of any length: the reader would hold all of it in memory.

We read stdin ourselves, in bounded chunks, and look at each line first. A
``tools/call`` request of the first two kinds keeps its id (and its tool name
when that is a string); its arguments are replaced by a marker naming what was
wrong, so the gate refuses it as ``invalid_arguments``, audits it and answers.
A line longer than ``MAX_LINE_BYTES`` is never accumulated: its head is kept to
read the id, method and tool name, the rest is only counted and hashed; a
``tools/call`` (or a request whose method cannot be read) goes to the gate the
same way, another request gets the SDK's invalid-params error, and what cannot
reach the gate is handed to ``on_rejected`` for the audit log.

A pipe (what an MCP client gives) is read on the event loop when it is readable:
no thread hop a request. Anything else (a file, /dev/null, a terminal) is read
by a daemon thread, so a blocked read (a terminal waiting for Enter) never keeps
the process from stopping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

MAX_DEPTH: Final = 64  # deeper than any real tool call; far below what the SDK's parser can take
MAX_LINE_BYTES: Final = 4 * 1024 * 1024  # one stdin line; README "Limits" documents it
READ_CHUNK: Final = 64 * 1024  # one read from stdin
HEAD_BYTES: Final = 64 * 1024  # what is kept of a too-long line to read its envelope
MARKER: Final = "__rejected__"  # the one argument a disarmed call carries
NO_NAME: Final = "-"  # the tool name of a disarmed call whose name could not be read as a string

# Each rule the edge can apply: the field it names and the sentence the agent reads. Fixed text only:
# nothing the client sent is spliced in, so a forged marker can only refuse its sender's own call.
RULES: Final[dict[str, tuple[str, str]]] = {
    "too-deep": ("arguments", f"nested deeper than {MAX_DEPTH} levels; no tool takes that"),
    "not-json": ("params", "the request is not valid JSON"),
    "params-missing": ("params", "tools/call needs params: an object with name and arguments"),
    "params-not-an-object": ("params", "params must be an object with name and arguments"),
    "name-not-a-string": ("name", "the tool name must be a string"),
    "arguments-not-an-object": ("arguments", "arguments must be an object mapping argument names to values"),
    "invalid-envelope": ("params", "params do not match the MCP tools/call request"),
    "line-too-long": ("params", f"the request line is longer than {MAX_LINE_BYTES} bytes"),
}

_KINDS: Final = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
                 float: "a number", type(None): "null"}
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_TOKEN = re.compile(_STRING + r'|"|[\[\]{}:,]')  # a lone quote: the text ends inside a string
_STRINGS = re.compile(_STRING)
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as signed bytes: +1, +1, -1, -1
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[{]}")))
_SPACE = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()


def nesting_depth(line: str) -> int:
    """Deepest [ / { nesting outside strings: strings cut out and brackets mapped to +1/-1 in C, then summed."""
    structure = _STRINGS.sub("", line).encode("utf-8", "replace").translate(_STEPS, _NOT_BRACKETS)
    return max(0, max(accumulate(memoryview(structure).cast("b")), default=0))


def kind_of(value: Any) -> str:
    """The JSON type of a value, in words for an error message."""
    return _KINDS.get(type(value), "a value")


@dataclass(frozen=True)
class Envelope:
    """What could be read of a request without parsing its payload: values of ``id``, ``method`` and
    ``params.name`` (scalars only), and the JSON kind of ``params``, ``params.name``, ``params.arguments``."""

    values: Mapping[str, Any]
    kinds: Mapping[str, str]

    @property
    def request_id(self) -> str | int | None:
        """The id, if it is one JSON-RPC allows (a string or an integer)."""
        value = self.values.get("id")
        return value if isinstance(value, str | int) and not isinstance(value, bool) else None


_ENOUGH: Final = {"id", "method", "name"}
_PATHS: Final = {("id",): "id", ("method",): "method", ("params",): "params", ("params", "name"): "name",
                 ("params", "arguments"): "arguments"}


def read_envelope(text: str) -> Envelope:
    """Read a request's envelope from its text, however deep or cut short, without recursion.

    A linear scan over the tokens (strings are skipped by the regex engine); only
    the values at the paths above are decoded, and only when they are scalars.
    It stops once id, method and tool name are read (later duplicates, which the
    SDK's parser would prefer, are not looked for: a client that sends two ids
    is answered on the first).
    """
    values: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    stack: list[str] = []  # "{" or "[" per open container
    keys: list[str | None] = []  # the current key of each open container
    expect_key = False
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token == '"':
            break  # cut inside a string: nothing after it can be read
        if token in "{[":
            if not stack and token != "{":
                break  # not a JSON-RPC object
            stack.append(token)
            keys.append(None)
            expect_key = token == "{"
        elif token in "}]":
            if not stack:
                break
            stack.pop()
            keys.pop()
            expect_key = False
            if not stack:
                break  # the top-level object is complete
        elif token == ",":
            expect_key = bool(stack) and stack[-1] == "{"
        elif token == ":":
            path = tuple(k for k in keys if k is not None)
            if len(path) == len(keys) and path in _PATHS:
                _read_value(text, match.end(), _PATHS[path], values, kinds)
                if values.keys() >= _ENOUGH:
                    break  # all an answer needs: the rest may be megabytes of nesting
            expect_key = False
        elif expect_key:  # a string in key position
            try:
                keys[-1] = json.loads(token)
            except ValueError:
                break
            expect_key = False
        if not stack:
            break
    return Envelope(values, kinds)


def _read_value(text: str, at: int, name: str, values: dict[str, Any], kinds: dict[str, str]) -> None:
    at = _SPACE.match(text, at).end()  # type: ignore[union-attr]  # the pattern matches the empty string
    if at >= len(text):
        return
    if text[at] in "{[":
        kinds[name] = "an object" if text[at] == "{" else "a list"
        values.pop(name, None)
        return
    try:
        value, _ = _DECODER.raw_decode(text, at)  # a scalar: no recursion
    except ValueError:
        return
    kinds[name] = kind_of(value)
    values[name] = value


def rejected_request(request_id: str | int, method: str, name: str, rule: str, line_bytes: int,
                     sha256: str, sent: str | None = None) -> str:
    """The line handed to the SDK instead: the same id and tool, arguments replaced by the marker."""
    marker: dict[str, Any] = {"rule": rule, "bytes": line_bytes, "sha256": sha256}
    if sent is not None:
        marker["sent"] = sent
    params: dict[str, Any] = {"name": name, "arguments": {MARKER: marker}}
    if method != "tools/call":
        params = {"_meta": f"rejected: {rule}"}  # _meta must be an object: the SDK answers invalid params
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    return json.dumps(message, separators=(",", ":")) + "\n"


def rejection_errors(arguments: Any) -> list[dict[str, str]] | None:
    """For the gate: the errors of a call this edge disarmed (its arguments are only the marker), else None."""
    if not isinstance(arguments, Mapping) or list(arguments) != [MARKER]:
        return None
    marker = arguments[MARKER]
    rule = marker.get("rule") if isinstance(marker, Mapping) else None
    if not isinstance(rule, str) or rule not in RULES:
        return None
    field, message = RULES[rule]
    sent = marker.get("sent")
    if isinstance(sent, str) and sent in _KINDS.values():
        message = f"{message}; {sent} was sent"
    return [{"field": field, "rule": rule, "message": message}]


def envelope_of(message: Mapping[str, Any]) -> Envelope:
    """The envelope of a parsed request (scalar values only, as ``read_envelope`` reads them)."""
    params = message.get("params")
    found = {"id": message.get("id"), "method": message.get("method"),
             "name": params.get("name") if isinstance(params, dict) else None}
    return Envelope({k: v for k, v in found.items() if not isinstance(v, dict | list)}, {})


def envelope_problem(message: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """Why the SDK would reject this tools/call's envelope, as (rule, kind sent), or None if it would not."""
    if "params" not in message or message["params"] is None:
        return "params-missing", None
    params = message["params"]
    if not isinstance(params, dict):
        return "params-not-an-object", kind_of(params)
    if not isinstance(params.get("name"), str):
        return "name-not-a-string", kind_of(params.get("name"))
    arguments = params.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        return "arguments-not-an-object", kind_of(arguments)
    import mcp_types

    try:  # the rest of the envelope (_meta, task, ...) as the SDK sees it; the arguments' content is the gate's
        mcp_types.CallToolRequest.model_validate({"method": "tools/call", "params": {**params, "arguments": None}})
    except ValueError:
        return "invalid-envelope", None
    return None


def _disarm(envelope: Envelope, rule: str, sent: str | None, line: bytes | str, size: int | None = None,
            digest: str | None = None) -> str | None:
    request_id = envelope.request_id
    if request_id is None:
        return None  # nothing to answer: the SDK reports it as it does any unusable line
    if digest is None:
        data = line.encode("utf-8", "replace") if isinstance(line, str) else line
        digest, size = hashlib.sha256(data).hexdigest(), len(data)
    method = envelope.values.get("method")
    method = method if isinstance(method, str) else "tools/call"  # unreadable: the one method with a payload
    name = envelope.values.get("name")
    return rejected_request(request_id, method, name if isinstance(name, str) else NO_NAME, rule, size or 0,
                            digest, sent)


def screen_line(line: str, max_depth: int = MAX_DEPTH) -> str:
    """The line itself, or, for a request the SDK would drop or reject before the gate, the same request disarmed."""
    if line.count("[") + line.count("{") > max_depth and nesting_depth(line) > max_depth:
        return _disarm(read_envelope(line), "too-deep", None, line) or line
    if "\\" not in line and '"tools/call"' not in line:
        return line  # cannot be a tools/call (its method would be spelled out)
    try:
        message: Any = json.loads(line)
    except (ValueError, RecursionError):
        envelope = read_envelope(line)
        if envelope.values.get("method") != "tools/call":
            return line
        return _disarm(envelope, "not-json", None, line) or line
    if not isinstance(message, dict) or message.get("method") != "tools/call" or "id" not in message:
        return line
    problem = envelope_problem(message)
    if problem is None:
        return line
    rule, sent = problem
    return _disarm(envelope_of(message), rule, sent, line) or line


@dataclass(frozen=True)
class Oversized:
    """A line longer than the cap: its first ``HEAD_BYTES``, its length and its SHA-256."""

    head: bytes
    size: int
    sha256: str


class LineSplitter:
    """Bytes in, lines out (without their newline), never holding more than ``max_line`` bytes of one line."""

    def __init__(self, max_line: int = MAX_LINE_BYTES, head: int = HEAD_BYTES) -> None:
        self._max = max_line
        self._head_bytes = min(head, max_line)
        self._line = bytearray()
        self._over: tuple[bytes, int, Any] | None = None  # head, size so far, running hash

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        out: list[bytes | Oversized] = []
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]  # the newline ends the line; it is not in it
            start = len(chunk) if end < 0 else end + 1
            self._take(piece)
            if end >= 0:
                out.append(self._finish())
        return out

    def end(self) -> list[bytes | Oversized]:
        """At EOF: the last line, if it had no newline."""
        return [self._finish()] if self._line or self._over else []

    def _take(self, piece: bytes) -> None:
        if self._over is None and len(self._line) + len(piece) <= self._max:
            self._line += piece
            return
        if self._over is None:
            digest = hashlib.sha256(self._line)
            self._over = (bytes(self._line[: self._head_bytes]), len(self._line), digest)
            self._line = bytearray()
        head, size, digest = self._over
        if len(head) < self._head_bytes:
            head += piece[: self._head_bytes - len(head)]
        digest.update(piece)
        self._over = (head, size + len(piece), digest)

    def _finish(self) -> bytes | Oversized:
        if self._over is None:
            line, self._line = bytes(self._line), bytearray()
            return line
        head, size, digest = self._over
        self._over = None
        return Oversized(head, size, digest.hexdigest())


def screen_oversized(line: Oversized) -> tuple[str | None, dict[str, Any] | None]:
    """A too-long line: the request to hand the SDK (if an id can be read), and the audit facts for a line the
    gate will not record itself (not a tools/call, or no id to answer)."""
    envelope = read_envelope(line.head.decode("utf-8", "replace"))
    disarmed = _disarm(envelope, "line-too-long", None, line.head, line.size, line.sha256)
    method = envelope.values.get("method")
    to_gate = disarmed is not None and (not isinstance(method, str) or method == "tools/call")
    if to_gate:
        return disarmed, None
    facts: dict[str, Any] = {"rule": "line-too-long", "bytes": line.size, "sha256": line.sha256,
                             "max_line_bytes": MAX_LINE_BYTES, "answered": disarmed is not None}
    if envelope.request_id is not None:
        facts["id"] = envelope.request_id if isinstance(envelope.request_id, int) else envelope.request_id[:64]
    if isinstance(method, str):
        facts["method"] = method[:64]
    return disarmed, facts


Rejected = Callable[[dict[str, Any]], None]


class ScreenedStdin:
    """An async line source over stdin for ``stdio_server(stdin=...)``: bounded reads, on the loop or a thread.

    ``on_rejected`` is called (on the event loop) with the facts of each line that
    cannot reach the gate, for the audit log.
    """

    def __init__(self, on_rejected: Rejected | None = None, fd: int | None = None) -> None:
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._on_rejected = on_rejected

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        async for item in _polled(self._fd) if _pollable(self._fd) else _pumped(self._fd):
            if isinstance(item, Oversized):
                line, facts = screen_oversized(item)
                if facts is not None and self._on_rejected is not None:
                    self._on_rejected(facts)
                if line is not None:
                    yield line
            else:
                yield screen_line(item.decode("utf-8", "replace"))


def _pollable(fd: int) -> bool:
    """A pipe or a socket (what an MCP client gives): the event loop can wait for it to be readable. A file,
    /dev/null or a terminal is read by a thread instead (epoll refuses the first two)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _polled(fd: int) -> AsyncIterator[bytes | Oversized]:
    """Lines read on the event loop once it sees the pipe readable: no thread, no hop a request. A read after
    readiness does not block, and the next read waits until the server asks for a line (backpressure)."""
    splitter = LineSplitter()
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            continue
        except OSError:
            chunk = b""  # a hung-up pipe reads as the end of input
        for item in splitter.feed(chunk) if chunk else splitter.end():
            yield item
        if not chunk:
            return


async def _pumped(fd: int) -> AsyncIterator[bytes | Oversized]:
    """Lines read by a daemon thread (blocking reads), handed to the loop one at a time."""
    send: MemoryObjectSendStream[bytes | Oversized]
    receive: MemoryObjectReceiveStream[bytes | Oversized]
    send, receive = anyio.create_memory_object_stream[bytes | Oversized](1)
    token = anyio.lowlevel.current_token()
    threading.Thread(target=_pump, args=(fd, send, token), name="opsgate-stdin", daemon=True).start()
    async with receive:
        async for item in receive:
            yield item


class WireStdout:
    """Where the SDK's stdio transport writes its answers (``stdio_server(stdout=...)``): written on the event
    loop, where the SDK's own stdout hops to a worker thread twice an answer (write, then flush), about 0.2 ms
    a call on a busy machine.

    :func:`claim_stdout` makes one: the wire moves to a descriptor of its own and fd 1 points at stderr while
    serving, as the SDK does when it owns stdout, so a stray print (ours, a library's, a child's) cannot
    corrupt the stream. That descriptor is a second open of the pipe, made non-blocking (the flag is per
    open, so the client's end and stderr are untouched): when the client stops reading, a write waits for
    the pipe on the loop (``wait_writable``) instead of blocking it.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending: list[bytes] = []

    async def write(self, text: str) -> None:
        self._pending.append(text.encode("utf-8"))

    async def flush(self) -> None:
        data = memoryview(b"".join(self._pending))
        self._pending.clear()
        while data:
            try:
                data = data[os.write(self._fd, data) :]
            except BlockingIOError:
                await anyio.wait_writable(self._fd)


@contextlib.contextmanager
def claim_stdout() -> Iterator[WireStdout | None]:
    """Serve the wire from a non-blocking second open of the stdout pipe, fd 1 pointed at stderr meanwhile
    and restored after. None (the SDK's own stdout then) when stdout is not a pipe or cannot be opened again."""
    try:
        if not stat.S_ISFIFO(os.fstat(1).st_mode):
            yield None
            return
        wire = os.open("/proc/self/fd/1", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        try:
            yield WireStdout(wire)
        finally:
            os.dup2(saved, 1)
    finally:
        os.close(saved)
        os.close(wire)


def _pump(fd: int, send: MemoryObjectSendStream[bytes | Oversized], token: anyio.lowlevel.EventLoopToken) -> None:
    """The reading thread: blocking reads, each line handed to the loop (waiting while the loop is busy)."""
    splitter = LineSplitter()
    try:
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except OSError:
                chunk = b""  # a hung-up terminal reads as the end of input
            items = splitter.feed(chunk) if chunk else splitter.end()
            for item in items:
                anyio.from_thread.run(send.send, item, token=token)
            if not chunk:
                break
    except (anyio.RunFinishedError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return  # the server stopped listening
    finally:
        with contextlib.suppress(Exception):  # the loop is gone: nobody is left to tell
            anyio.from_thread.run_sync(send.close, token=token)
