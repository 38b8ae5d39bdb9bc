"""Hash-chain primitives for the audit log (pure: no I/O).

A record is a JSON object; its line in the log is its RFC 8785 canonical
form. ``hash`` is SHA-256 over the canonical bytes of the record *without*
``hash``, and ``prev`` is the ``hash`` of the record before it, so editing,
removing, inserting or reordering any line breaks the chain from there on.
RFC 8785 (not ``json.dumps(sort_keys=True)`` and not the ``canonicaljson``
package) is used because it pins number and string formatting too, so any
implementation in any language re-derives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import rfc8785

GENESIS_HASH = "0" * 64
"""The ``prev`` of the first record (seq 1)."""

CHAIN_KEYS = frozenset({"seq", "prev", "hash"})
"""Keys that :func:`seal` owns; a body must not carry them."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SAFE_INT = 2**53 - 1


def canonical(obj: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON bytes of ``obj``.

    Raises ``rfc8785.CanonicalizationError`` (a ``ValueError``) for values JSON
    cannot carry exactly: NaN/Infinity, integers beyond 2**53, non-string keys,
    lone surrogates, and non-JSON types. Nested mappings must be ``dict``.
    """
    return rfc8785.dumps(obj if isinstance(obj, dict) else dict(obj))


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
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _member(key: str, value: Any) -> bytes:
    return rfc8785.dumps(key) + b":" + rfc8785.dumps(value)


def _utf16(member: tuple[str, bytes]) -> bytes:
    return member[0].encode("utf-16be")  # RFC 8785 orders keys by UTF-16 code units


def seal_line(body: Mapping[str, Any], seq: int, prev: str) -> tuple[dict[str, Any], bytes]:
    """Like :func:`seal`, and also return the record's canonical line (no newline).

    Each value is serialised once and the members are reused for the hash and the
    line, where ``seal`` + ``canonical`` would serialise the record twice: this is
    on the path of every tool call. The bytes equal ``canonical(record)`` (tested).
    """
    clash = CHAIN_KEYS.intersection(body)
    if clash:
        raise ValueError(f"body must not contain chain keys: {sorted(clash)}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"seq must be a positive integer, got {seq!r}")
    if not is_hash(prev):
        raise ValueError(f"prev must be 64 lowercase hex digits, got {prev!r}")
    record: dict[str, Any] = dict(body)
    record["seq"] = seq
    record["prev"] = prev
    if not all(isinstance(key, str) for key in record):
        raise rfc8785.CanonicalizationError("object keys must be strings")
    members = sorted(((key, _member(key, value)) for key, value in record.items()), key=_utf16)
    digest = hashlib.sha256(b"{" + b",".join(m for _, m in members) + b"}").hexdigest()
    record["hash"] = digest
    members.append(("hash", _member("hash", digest)))
    members.sort(key=_utf16)
    return record, b"{" + b",".join(m for _, m in members) + b"}"


def seal(body: Mapping[str, Any], seq: int, prev: str) -> dict[str, Any]:
    """Return a new record: ``body`` plus ``seq``, ``prev`` and its ``hash``.

    The body must not already hold the chain keys: letting a caller supply
    them would let it forge a position in the chain. Raises ValueError for a
    bad body (including one RFC 8785 cannot serialise), seq or prev.
    """
    return seal_line(body, seq, prev)[0]
