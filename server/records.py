"""Audit record bodies, built by pure functions so their shape is tested apart from I/O.

The writer (``opsgate.audit.AuditLog``) adds ``seq``, ``prev`` and ``hash``;
everything a reviewer reads is decided here. The schema is in audit/SCHEMA.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opsgate.audit import SCHEMA_VERSION, canonical, redact

# Arguments bigger than this are stored as a digest: an inference batch is data, not an audit fact.
MAX_ARGUMENT_BYTES = 8192


@dataclass(frozen=True)
class Caller:
    principal: str
    principal_source: str
    os_user: str
    client_name: str | None
    client_version: str | None
    session_id: str
    groups: tuple[str, ...] = ()  # policy subjects a verified token puts the principal in (group:platform)

    def fields(self) -> dict[str, Any]:
        fields = {
            "principal": self.principal,
            "principal_source": self.principal_source,
            "os_user": self.os_user,
            "client": {"name": self.client_name, "version": self.client_version},
            "session_id": self.session_id,
        }
        if self.groups:
            fields["groups"] = list(self.groups)
        return fields


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """Make any argument value JSON- and RFC 8785-safe: non-finite floats and odd types become text."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
        return str(value)  # RFC 8785 numbers are IEEE doubles
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def safe_arguments(arguments: Any) -> Any:
    """Redacted, JSON-safe and size-capped: what the audit log may hold of a call's input."""
    cleaned = redact(jsonable(arguments))
    body = canonical({"a": cleaned})
    if len(body) <= MAX_ARGUMENT_BYTES:
        return cleaned
    return {"truncated": True, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def decision_record(
    *,
    call_id: str,
    caller: Caller,
    tool: str,
    verb: str,
    namespace: str,
    arguments: Any,
    decision: Mapping[str, Any],
    object_ref: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    record = {
        "v": SCHEMA_VERSION,
        "stage": "decision",
        "time": now(),
        "call_id": call_id,
        **caller.fields(),
        "tool": tool,
        "verb": verb,
        "namespace": namespace,
        "arguments": safe_arguments(arguments),
        "decision": redact(jsonable(dict(decision))),  # reasons and errors may quote what the caller sent
    }
    if object_ref is not None:
        record["object"] = jsonable(dict(object_ref))
    return record


def outcome_record(
    *,
    call_id: str,
    caller: Caller,
    tool: str,
    status: str,
    duration_ms: float,
    error: Mapping[str, Any] | None = None,
    result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    outcome: dict[str, Any] = {"status": status}
    if error is not None:
        outcome["error"] = redact(jsonable(dict(error)))  # the cluster's or a model server's text, a URL
    if result is not None:
        outcome["result"] = safe_arguments(result)
    return {
        "v": SCHEMA_VERSION,
        "stage": "outcome",
        "time": now(),
        "call_id": call_id,
        "principal": caller.principal,
        "session_id": caller.session_id,
        "tool": tool,
        "outcome": outcome,
        "duration_ms": round(duration_ms, 3),
    }


def server_record(stage: str, caller: Caller, **details: Any) -> dict[str, Any]:
    """Server events (start, stop) so a reviewer sees sessions begin and end."""
    return {"v": SCHEMA_VERSION, "stage": stage, "time": now(), **caller.fields(), **redact(jsonable(details))}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
