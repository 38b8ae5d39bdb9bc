"""Hash-chain primitives for the audit log (pure: no I/O).

A record is a JSON object; its line in the log is its RFC 8785 canonical
form. ``hash`` is SHA-256 over the canonical bytes of the record *without*
``hash``, and ``prev`` is the ``hash`` of the record before it, so editing,
removing, inserting or reordering any line breaks the chain from there on.
RFC 8785 (not ``json.dumps(sort_keys=True)`` and not the ``canonicaljson``
package) is used because it pins number and string formatting too, so any
implementation in any language re-derives the same bytes.

Speed: the ``rfc8785`` package is pure Python (about 50 us for a decision
record), and this runs on every tool call and for every line ``verify`` reads.
Where a value is *plain* (dicts with ASCII string keys, strings, ints in the
exact range, booleans, null, lists, and floats that Python's ``repr`` already
writes the ECMAScript way), the C JSON encoder with sorted keys produces the
very same bytes, so it is used; anything else goes through ``rfc8785``. A
property test checks the two agree.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785

GENESIS_HASH = "0" * 64
"""The ``prev`` of the first record (seq 1)."""

CHAIN_KEYS = frozenset({"seq", "prev", "hash"})
"""Keys that :func:`seal` owns; a body must not carry them."""

_SAFE_INT = 2**53 - 1


def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _make_c_encoder() -> Callable[[Any], str]:
    """The C encoder with RFC 8785's separators, sorted keys and minimal escapes (ensure_ascii off)."""
    try:
        from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - CPython always has _json
        c_make_encoder = None
    if c_make_encoder is None or c_encode_basestring is None:  # pragma: no cover
        encoder = json.JSONEncoder(
            ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False, check_circular=False
        )
        return encoder.encode
    iterencode = c_make_encoder(None, _no_default, c_encode_basestring, None, ":", ",", True, False, False)

    def encode(value: Any) -> str:
        return "".join(iterencode(value, 0))

    return encode


_c_encode = _make_c_encoder()


def _plain(value: Any) -> bool:
    """True when the C encoder writes ``value`` exactly as RFC 8785 does (see the module doc).

    Exact types only (a str or int subclass, an enum say, goes the slow way).
    Keys must be ASCII so that code-point order equals RFC 8785's UTF-16 order.
    A float is plain when it is finite, not integral (RFC 8785 writes ``2.0`` as
    ``2``) and in the range where ``repr`` uses no exponent (1e-4 <= |x| < 1e16),
    since RFC 8785 then writes ``repr(x)`` unchanged. Leaves are checked inline:
    this runs on every record, and a call per string would double its cost.
    """
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            leaf = type(item)
            if leaf is str or item is None or leaf is bool:
                continue
            if leaf is int:
                if not -_SAFE_INT <= item <= _SAFE_INT:
                    return False
            elif not _plain(item):
                return False
        return True
    if kind is list:
        for item in value:
            leaf = type(item)
            if leaf is str or item is None or leaf is bool:
                continue
            if leaf is int:
                if not -_SAFE_INT <= item <= _SAFE_INT:
                    return False
            elif not _plain(item):
                return False
        return True
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_SAFE_INT <= value <= _SAFE_INT)
    if kind is float:
        return bool(math.isfinite(value) and not value.is_integer() and 1e-4 <= abs(value) < 1e16)
    return False


def _dumps(value: Any) -> bytes:
    """RFC 8785 bytes of any JSON value: the C encoder when that is exact, else ``rfc8785``."""
    if _plain(value):
        try:
            return _c_encode(value).encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate
            raise rfc8785.CanonicalizationError("input contains non-UTF-8 codepoints") from exc
    return rfc8785.dumps(value)


_HIGH_BYTES = re.compile(rb"[\xee-\xff]")  # UTF-8 lead bytes of U+E000 and above


def matches_canonical(obj: Any, line: bytes, *, floats_need_care: bool) -> bool:
    """``canonical(obj) == line``, decided without RFC 8785's slow path where that is exact.

    Only for an ``obj`` parsed from ``line`` by :func:`loads`-equivalent rules,
    with ``floats_need_care`` True when any float literal in it had an exponent
    or an integral value. Then the C encoder's output can equal ``line`` only if
    RFC 8785's does: integers are exact (bigger ones parse as floats, which the
    C encoder writes with a dot or exponent the literal lacks), the remaining
    floats are written by ``repr`` in both, escapes are the same, and without
    characters from U+E000 up code-point order is UTF-16 order. Any doubt or
    difference goes to :func:`canonical`. Raises ValueError like it.
    """
    if not floats_need_care and (line.isascii() or _HIGH_BYTES.search(line) is None):
        try:
            if _c_encode(obj).encode("utf-8") == line:
                return True
        except (UnicodeEncodeError, ValueError, TypeError, RecursionError):
            pass
    return canonical(obj) == line


def canonical(obj: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON bytes of ``obj``.

    Raises ``rfc8785.CanonicalizationError`` (a ``ValueError``) for values JSON
    cannot carry exactly: NaN/Infinity, integers beyond 2**53, non-string keys,
    lone surrogates, and non-JSON types. Nested mappings must be ``dict``.
    """
    return _dumps(obj if isinstance(obj, dict) else dict(obj))


def _parse_int(literal: str) -> int | float:
    # RFC 8785 writes an integral float such as 2.0**53 as "9007199254740992"; read back
    # as int it would be outside the exact range and fail to re-canonicalise, so an
    # honest record would look damaged. Outside the safe range, a number is a double.
    value = int(literal)
    return value if -_SAFE_INT <= value <= _SAFE_INT else float(literal)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(line: bytes | str) -> Any:
    """Parse one log line the way :func:`canonical` wrote it (strict: no NaN/Infinity).

    Raises ValueError for anything that is not JSON.
    """
    return json.loads(line, parse_int=_parse_int, parse_constant=_no_constant)


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical record without its ``hash`` key."""
    unhashed = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(unhashed)).hexdigest()


def is_hash(value: object) -> bool:
    """True for a lowercase 64-digit hex string, the only form ``prev``/``hash`` take."""
    return type(value) is str and len(value) == 64 and not value.strip("0123456789abcdef")


# Stand-ins for the chain fields while a body is serialised without knowing its place: random
# per process, so no body can contain them by design; their uniqueness is still checked.
_PLACE = secrets.token_hex(16)
_PLACE_BYTES = _PLACE.encode()
_PLACE_HASH = b'"hash":"h' + _PLACE.encode() + b'"'
_PLACE_PREV = b'"prev":"p' + _PLACE.encode() + b'"'
_PLACE_SEQ = b'"seq":"s' + _PLACE.encode() + b'"'


@dataclass(slots=True)
class Prepared:
    """A body serialised once, ready to be given its place in the chain.

    Serialising is the costly part of sealing and needs no seq or prev, so the
    writer does it in the caller's thread, outside any lock, and keeps only the
    cheap part (placing seq/prev, hashing) for the one thread that writes.
    ``parts`` is the canonical record cut around its ``hash``, ``prev`` and
    ``seq`` members (which RFC 8785 always orders so: h < p < s).
    """

    body: dict[str, Any]
    parts: tuple[bytes, bytes, bytes, bytes]
    size: int  # bytes of the line without the three chain members' values

    def seal(self, seq: int, prev: str) -> tuple[dict[str, Any], bytes]:
        """The record at ``seq`` after ``prev`` and its canonical line (no newline)."""
        _check_position(seq, prev)
        head, between, after_prev, tail = self.parts
        prev_m = b'"prev":"' + prev.encode() + b'"'
        seq_m = b'"seq":%d' % seq
        if head.endswith(b","):  # the hash member is cut out with the comma before it
            unhashed = b"".join((head[:-1], between, prev_m, after_prev, seq_m, tail))
        else:  # "hash" is the first key: drop the comma after it instead
            unhashed = b"".join((head, between[1:], prev_m, after_prev, seq_m, tail))
        digest = hashlib.sha256(unhashed).hexdigest()
        line = b"".join((head, b'"hash":"', digest.encode(), b'"', between, prev_m, after_prev, seq_m, tail))
        record = dict(self.body)
        record["seq"] = seq
        record["prev"] = prev
        record["hash"] = digest
        return record, line


def _check_position(seq: int, prev: str) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= _SAFE_INT:
        raise ValueError(f"seq must be a positive integer, got {seq!r}")
    if not is_hash(prev):
        raise ValueError(f"prev must be 64 lowercase hex digits, got {prev!r}")


def prepare(body: Mapping[str, Any]) -> Prepared:
    """Serialise ``body`` (which must not hold chain keys).

    Raises ValueError (RFC 8785 cannot carry a value), TypeError (not JSON) or
    RecursionError (nested too deep).
    """
    clash = CHAIN_KEYS.intersection(body)
    if clash:
        raise ValueError(f"body must not contain chain keys: {sorted(clash)}")
    record: dict[str, Any] = dict(body)  # non-string keys: _dumps raises (rfc8785 refuses them)
    record["hash"] = "h" + _PLACE
    record["prev"] = "p" + _PLACE
    record["seq"] = "s" + _PLACE
    text = _dumps(record)
    del record["hash"], record["prev"], record["seq"]
    if text.count(_PLACE_BYTES) != 3:  # pragma: no cover - only a body holding the secret placeholder
        raise ValueError("body contains the writer's placeholder text")
    at_hash = text.find(_PLACE_HASH)
    at_prev = text.find(_PLACE_PREV, at_hash)
    at_seq = text.find(_PLACE_SEQ, at_prev)
    parts = (
        text[:at_hash],
        text[at_hash + len(_PLACE_HASH) : at_prev],
        text[at_prev + len(_PLACE_PREV) : at_seq],
        text[at_seq + len(_PLACE_SEQ) :],
    )
    return Prepared(record, parts, len(text) - len(_PLACE_HASH) - len(_PLACE_PREV) - len(_PLACE_SEQ))


def seal_line(body: Mapping[str, Any], seq: int, prev: str) -> tuple[dict[str, Any], bytes]:
    """Like :func:`seal`, and also return the record's canonical line (no newline).

    Each value is serialised once and the members are reused for the hash and the
    line, where ``seal`` + ``canonical`` would serialise the record twice: this is
    on the path of every tool call. The bytes equal ``canonical(record)`` (tested).
    """
    _check_position(seq, prev)
    return prepare(body).seal(seq, prev)


def seal(body: Mapping[str, Any], seq: int, prev: str) -> dict[str, Any]:
    """Return a new record: ``body`` plus ``seq``, ``prev`` and its ``hash``.

    The body must not already hold the chain keys: letting a caller supply
    them would let it forge a position in the chain. Raises ValueError for a
    bad body (including one RFC 8785 cannot serialise), seq or prev.
    """
    return seal_line(body, seq, prev)[0]


def unhashed_line(line: bytes, digest: str) -> bytes | None:
    """The canonical bytes of a record without ``hash``, cut out of its canonical ``line``.

    Removing one top-level member from RFC 8785 output leaves the RFC 8785 output
    of the object without it, so verify need not serialise the record a second
    time. Returns None when the member text occurs more than once (a nested
    object may carry the same key and value): the caller then re-serialises.
    Only valid for a ``line`` already known to be canonical.
    """
    member = b'"hash":"' + digest.encode() + b'"'
    at = line.find(member)
    if at < 0 or line.find(member, at + 1) >= 0:
        return None
    end = at + len(member)
    if line[at - 1 : at] == b",":
        return line[: at - 1] + line[end:]
    if line[end : end + 1] == b",":
        return line[:at] + line[end + 1 :]
    return line[:at] + line[end:]
