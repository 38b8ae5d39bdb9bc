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
Where a value is *plain* (dicts with string keys below U+E000, strings, ints
in the exact range, booleans, null, lists, and floats that every
shortest-round-trip writer formats the ECMAScript way), ``orjson`` with sorted keys produces the
very same bytes in about a tenth of the time of the standard library's C
encoder, so it is used; anything else goes through ``rfc8785``. Property tests
check the two agree, on values and on lines read back by verify.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import rfc8785

GENESIS_HASH = "0" * 64
"""The ``prev`` of the first record (seq 1)."""

CHAIN_KEYS = frozenset({"seq", "prev", "hash"})
"""Keys that :func:`seal` owns; a body must not carry them."""

_SAFE_INT = 2**53 - 1


_EXACT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER | orjson.OPT_PASSTHROUGH_SUBCLASS
"""orjson options under which it refuses, rather than writes differently, what RFC 8785 would
write otherwise: integers beyond 2**53, and str/int/dict/list subclasses (a str-keyed enum, say)."""

_LEAVES = frozenset({str, int, bool, type(None)})


def _plain(value: Any) -> bool:
    """True when ``orjson`` (with ``_EXACT``) writes ``value`` as RFC 8785 does or refuses it.

    Exact types only (anything else, a tuple or an enum say, goes the slow way).
    A float is plain when it is not integral (RFC 8785 writes ``2.0`` as ``2``)
    and in the range where both write no exponent (1e-4 <= |x| < 1e16; NaN and
    infinities fail that test). Integer range and key types are left to orjson,
    key order to :func:`_keys_below_e000`. Leaves are checked inline: this runs on
    every record, and a call per string would double its cost.
    """
    kind = type(value)
    if kind is dict:
        items: Any = value.values()
    elif kind is list:
        items = value
    elif kind in _LEAVES:
        return True
    else:
        return kind is float and 1e-4 <= abs(value) < 1e16 and not value.is_integer()
    for item in items:
        leaf = type(item)
        if leaf in _LEAVES:
            continue
        if leaf is dict or leaf is list:
            if not _plain(item):
                return False
        elif leaf is not float or not 1e-4 <= abs(item) < 1e16 or item.is_integer():
            return False
    return True


def _keys_below_e000(value: Any) -> bool:
    """No key anywhere holds a character from U+E000 up, where code-point and UTF-16 order part."""
    if type(value) is dict:
        return all((key.isascii() or max(key) < "\ue000") and _keys_below_e000(item) for key, item in value.items())
    if type(value) is list:
        return all(_keys_below_e000(item) for item in value)
    return True


def _dumps(value: Any) -> bytes:
    """RFC 8785 bytes of any JSON value: ``orjson`` when that is exact, else ``rfc8785``."""
    if _plain(value):
        try:
            out = orjson.dumps(value, option=_EXACT)
        except orjson.JSONEncodeError:  # a big integer, a non-str key, a lone surrogate, deep nesting
            pass
        else:
            if out.isascii() or _HIGH_BYTES.search(out) is None or _keys_below_e000(value):
                return out
    return rfc8785.dumps(value)


_HIGH_BYTES = re.compile(rb"[\xee-\xff]")  # UTF-8 lead bytes of U+E000 and above


def matches_canonical(obj: Any, line: bytes, *, floats_need_care: bool) -> bool:
    """``canonical(obj) == line``, decided without RFC 8785's slow path where that is exact.

    Only for an ``obj`` parsed from ``line`` by :func:`loads`-equivalent rules,
    with ``floats_need_care`` True when any float literal in it had an exponent
    or an integral value. Then ``orjson``'s output can equal ``line`` only if
    RFC 8785's does: integers are exact (bigger ones parse as floats, which
    orjson writes with a dot or exponent the literal lacks), a non-integral
    float that orjson writes without an exponent has RFC 8785's digits (both
    are shortest-round-trip; tested), escapes are the same, and without
    characters from U+E000 up code-point order is UTF-16 order. Any doubt or
    difference goes to :func:`canonical`. Raises ValueError like it.
    """
    if not floats_need_care and (line.isascii() or _HIGH_BYTES.search(line) is None):
        try:
            if orjson.dumps(obj, option=_EXACT) == line:
                return True
        except orjson.JSONEncodeError:  # a lone surrogate, or nested too deep
            pass
    return canonical(obj) == line


def _float_literal(literal: str) -> Any:
    """A float as the decoder reads it for :func:`canonical_object`; one orjson cannot write as RFC 8785 does
    becomes a value orjson refuses, so the line goes the exact way.

    orjson writes a float with an exponent (``1e-6``, ``1e+16``: RFC 8785
    ``0.000001``, ``10000000000000000``) or, when it is integral, with ``.0``
    (``2.0``, ``-0.0``: RFC 8785 ``2``, ``0``); any other form of its output has
    RFC 8785's digits (both write the shortest round trip; tested). In a line
    that equals orjson's output, the literal is orjson's form.
    """
    value = float(literal)
    if "e" in literal or "E" in literal or value.is_integer():
        return _NOT_PLAIN
    return value


_NOT_PLAIN = object()


_decode_line: Callable[[bytes], Any] | None = None


def _line_decoder() -> Callable[[bytes], Any]:
    global _decode_line
    import msgspec  # only reading the log back needs it: serving does not pay for the import

    _decode_line = msgspec.json.Decoder(float_hook=_float_literal).decode
    return _decode_line


def canonical_object(line: bytes) -> dict[str, Any] | None:
    """The object of ``line`` when ``orjson`` alone shows that the line is its RFC 8785 form, else None (then
    :func:`loads` and :func:`matches_canonical` decide, as they always did).

    It does when the line decodes to a dict whose every float is one orjson
    writes as RFC 8785 does (:func:`_float_literal`), whose orjson output with
    sorted keys and strict integers is the line itself, and no key holds a
    character from U+E000 up. Floats are all that can differ: the decoder
    (``msgspec``, as fast as orjson's and the only one that shows each float's
    literal, so no walk over the values is needed) gives exact JSON types.
    Such an object is also what :func:`loads` returns (its integers are in the
    exact range, its floats round alike), so the verdicts do not change: only
    lines this cannot vouch for take the slow way.
    """
    try:
        obj = (_decode_line or _line_decoder())(line)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return None
    if type(obj) is not dict:
        return None
    try:
        if orjson.dumps(obj, option=_EXACT) != line:
            return None
    except orjson.JSONEncodeError:  # an integer beyond 2**53 - 1 (loads reads it as a float), or _NOT_PLAIN
        return None
    if not line.isascii() and _HIGH_BYTES.search(line) is not None and not _keys_below_e000(obj):
        return None
    return obj


def canonical_without_hash(obj: dict[str, Any]) -> bytes:
    """The RFC 8785 bytes of an object :func:`canonical_object` returned, without its ``hash`` member (which it
    must have): what the record's hash is taken over.

    One orjson call, exact here: dropping a member leaves every value as
    canonical_object found it. The member is put back before this returns.
    """
    digest = obj.pop("hash")
    try:
        return orjson.dumps(obj, option=_EXACT)
    finally:
        obj["hash"] = digest


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


# The stand-in for the three chain values while a body is serialised without knowing its place:
# random per process, so no body can contain it by design; that it occurs only where placed is checked.
_PLACE = "chain-" + secrets.token_hex(16)
_PLACE_VALUE = b'"' + _PLACE.encode() + b'"'


@dataclass(slots=True)
class Prepared:
    """A body serialised once, ready to be given its place in the chain.

    Serialising is the costly part of sealing and needs no seq or prev, so the
    writer does it in the caller's thread, outside any lock, and keeps only the
    cheap part (placing seq/prev, hashing) for the one thread that writes.
    The canonical record is kept cut around the values of its ``hash``,
    ``prev`` and ``seq`` members (which RFC 8785 always orders so: h < p < s):
    ``to_hash`` up to the hash value's opening quote, ``to_prev`` from its
    closing quote to prev's opening one, ``to_seq`` from prev's closing quote
    to seq's value, ``tail`` the rest; ``unhashed_head`` is what precedes
    prev's value once the whole hash member is gone.
    """

    body: dict[str, Any]
    to_hash: bytes
    to_prev: bytes
    to_seq: bytes
    tail: bytes
    unhashed_head: bytes
    size: int  # bytes of the line without the three chain members' values

    def seal(self, seq: int, prev: str) -> tuple[dict[str, Any], bytes]:
        """The record at ``seq`` after ``prev`` and its canonical line (no newline).

        ``seq`` and ``prev`` are trusted: the writer passes its own chain head,
        which it computed or checked when it read the tail; :func:`seal_line`
        checks a position that comes from anywhere else.
        """
        prev_b = prev.encode()
        seq_b = b"%d" % seq
        digest = hashlib.sha256(b"".join((self.unhashed_head, prev_b, self.to_seq, seq_b, self.tail))).hexdigest()
        line = b"".join((self.to_hash, digest.encode(), self.to_prev, prev_b, self.to_seq, seq_b, self.tail))
        return {**self.body, "seq": seq, "prev": prev, "hash": digest}, line


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
    if "hash" in body or "prev" in body or "seq" in body:
        raise ValueError(f"body must not contain chain keys: {sorted(CHAIN_KEYS.intersection(body))}")
    record: dict[str, Any] = dict(body)  # non-string keys: _dumps raises (rfc8785 refuses them)
    record["hash"] = record["prev"] = record["seq"] = _PLACE
    text = _dumps(record)
    del record["hash"], record["prev"], record["seq"]
    pieces = text.split(_PLACE_VALUE)
    if len(pieces) != 4:  # pragma: no cover - only a body holding the secret stand-in
        raise ValueError("body contains the writer's placeholder text")
    head, between, after_prev, tail = pieces  # head ends '"hash":', between '"prev":', after_prev '"seq":'
    # The hash member goes with the comma before it, or, when "hash" is the first key, the one after it.
    unhashed_head = head[:-8] + between if head.endswith(b',"hash":') else head[:-7] + between[1:]
    return Prepared(
        record,
        head + b'"',
        b'"' + between + b'"',
        b'"' + after_prev,
        tail,
        unhashed_head + b'"',
        len(text) - 3 * len(_PLACE_VALUE),
    )


def seal_next(body: Mapping[str, Any], seq: int, prev: str) -> tuple[dict[str, Any], bytes]:
    """The record at ``seq`` after ``prev`` and its canonical line, in one pass.

    For the writer when it is the only one writing (its head is known, so the
    record is serialised with its real ``seq`` and ``prev`` and only ``hash``
    needs cutting out); :func:`prepare` is for callers that queue before their
    place is known. Both give the very same bytes (tested). The position is
    trusted, as in :meth:`Prepared.seal`. Raises like :func:`prepare`.
    """
    if "hash" in body or "prev" in body or "seq" in body:
        raise ValueError(f"body must not contain chain keys: {sorted(CHAIN_KEYS.intersection(body))}")
    record: dict[str, Any] = {**body, "hash": _PLACE, "prev": prev, "seq": seq}
    text = _dumps(record)
    value_at = text.find(_PLACE_VALUE)
    if value_at < 0 or text.rfind(_PLACE_VALUE) != value_at:  # pragma: no cover - a body holding the stand-in
        raise ValueError("body contains the writer's placeholder text")
    at, end = value_at - 7, value_at + len(_PLACE_VALUE)  # the member: '"hash":' and the value
    # The hash member goes with the comma before it, or, when "hash" is the first key, the one after it.
    unhashed = text[: at - 1] + text[end:] if text[at - 1] == 0x2C else text[:at] + text[end + 1 :]
    digest = hashlib.sha256(unhashed).hexdigest()
    record["hash"] = digest
    return record, b"".join((text[:at], b'"hash":"', digest.encode(), b'"', text[end:]))


def seal_line(body: Mapping[str, Any], seq: int, prev: str) -> tuple[dict[str, Any], bytes]:
    """Like :func:`seal`, and also return the record's canonical line (no newline).

    Each value is serialised once and the members are reused for the hash and the
    line, where ``seal`` + ``canonical`` would serialise the record twice: this is
    on the path of every tool call. The bytes equal ``canonical(record)`` (tested).
    """
    _check_position(seq, prev)
    return seal_next(body, seq, prev)


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
