"""The audit log as OCSF events, for a SIEM: one API Activity event a record, and the check of such an export.

OCSF (the Open Cybersecurity Schema Framework) version 1.3.0, class API Activity
(``class_uid`` 6003, category Application Activity, 6): the attributes used here
are the ones that version defines (ocsf-schema tag 1.3.0: ``events/application/api.json``,
``events/base_event.json``, ``objects/{actor,api,request,response,metadata,product,
resource_details,authorization,policy,network_endpoint}.json``). Every record
becomes one event, server events (start, stop, policy reloads, ...) included as
activity 99 Other, so the export holds the whole chain: ``unmapped.opsgate.record``
is the record's canonical line as the log holds it, and :func:`check_export`
re-verifies the chain from those lines alone (hash, seq, prev) and re-derives each
event from its record, so an edit of a mapped field shows as well. Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .chain import GENESIS_HASH, canonical, is_hash, loads, record_hash

__all__ = [
    "CLASS_UID",
    "OCSF_VERSION",
    "Events",
    "ExportCheck",
    "activity_of",
    "check_export",
    "to_ocsf",
]

OCSF_VERSION = "1.3.0"
CATEGORY_UID, CATEGORY_NAME = 6, "Application Activity"
CLASS_UID, CLASS_NAME = 6003, "API Activity"
CREATE, READ, UPDATE, DELETE, OTHER = 1, 2, 3, 4, 99
ACTIVITY_NAMES = {CREATE: "Create", READ: "Read", UPDATE: "Update", DELETE: "Delete", OTHER: "Other"}
SUCCESS, FAILURE, STATUS_OTHER = 1, 2, 99
STATUS_NAMES = {SUCCESS: "Success", FAILURE: "Failure", STATUS_OTHER: "Other"}
INFORMATIONAL, LOW, MEDIUM = 1, 2, 3
SEVERITY_NAMES = {INFORMATIONAL: "Informational", LOW: "Low", MEDIUM: "Medium"}

TOOL_ACTIVITY = {"deploy": CREATE, "deploy_model": CREATE, "scale": UPDATE, "rollback": UPDATE}
"""The tools that change things, by what they do; ``deploy`` creates or updates (create-or-replace, as CRUD
APIs name a put). A tool not named here is a read, unless its record's verb says ``write`` (Update) or
``unknown`` (Other)."""

_EVENT_TEXT = {
    "start": "server started",
    "stop": "server stopped",
    "policy_reload": "policy reloaded",
    "policy_reload_failed": "policy reload failed; the previous policy stays in force",
    "input_rejected": "input line rejected before any decision",
    "token_refused": "bearer token refused; nothing ran",
    "recovery": "a torn last line was sealed and named",
}
_EVENT_FAILED = frozenset({"policy_reload_failed", "input_rejected", "token_refused"})
_MAPPED = frozenset({"time", "principal", "session_id", "call_id", "tool", "arguments", "object", "duration_ms",
                     "outcome"})
"""Record fields carried by OCSF attributes; all the others go to ``unmapped.opsgate`` as they are."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def activity_of(record: Mapping[str, Any]) -> int:
    """The OCSF activity of a record: by tool for calls, Other for server events and unknown tools."""
    if record.get("stage") not in ("decision", "outcome"):
        return OTHER
    tool = record.get("tool")
    if isinstance(tool, str) and tool in TOOL_ACTIVITY:
        return TOOL_ACTIVITY[tool]
    verb = record.get("verb")
    if verb == "unknown":
        return OTHER
    return UPDATE if verb == "write" else READ


def _epoch_ms(value: Any) -> int:
    """RFC 3339 time as milliseconds since the epoch (OCSF ``timestamp_t``); 0 when there is none."""
    if not isinstance(value, str):
        return 0
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return 0
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(milliseconds=1)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _status(record: Mapping[str, Any]) -> tuple[int, int, str | None, str | None]:
    """(status_id, severity_id, status_code, status_detail) of a record."""
    stage = record.get("stage")
    if stage == "decision":
        decision = _dict(record.get("decision"))
        effect, reason = _text(decision.get("effect")), _text(decision.get("reason"))
        if effect == "allow":
            return SUCCESS, INFORMATIONAL, effect, reason
        return FAILURE, MEDIUM if effect == "deny" else LOW, effect, reason
    if stage == "outcome":
        outcome = _dict(record.get("outcome"))
        if outcome.get("status") == "ok":
            return SUCCESS, INFORMATIONAL, "ok", None
        error = _dict(outcome.get("error"))
        return FAILURE, LOW, _text(error.get("code")) or "error", _text(error.get("message"))
    if stage in _EVENT_FAILED:
        severity = LOW if stage == "input_rejected" else MEDIUM
        detail = _text(record.get("error")) or _text(record.get("message"))
        return FAILURE, severity, _text(record.get("rule")) or str(stage), detail
    if stage == "recovery":
        return STATUS_OTHER, MEDIUM, "recovery", None
    if stage == "stop" and record.get("forced") is True:
        return SUCCESS, LOW, "forced", None
    return SUCCESS, INFORMATIONAL, _text(stage), None


def _resources(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    ref = record.get("object")
    if isinstance(ref, dict):
        resource = {key: ref[src] for key, src in (("type", "kind"), ("name", "name"), ("namespace", "namespace"))
                    if _text(ref.get(src))}
        if resource:
            return [resource]
    namespace = _text(record.get("namespace"))
    return [{"type": "Namespace", "name": namespace}] if namespace and namespace != "-" else []


def _authorization(record: Mapping[str, Any]) -> dict[str, Any] | None:
    decision = record.get("decision")
    if record.get("stage") != "decision" or not isinstance(decision, dict):
        return None
    policy = {key: decision[src] for key, src in (("name", "rule"), ("desc", "source"), ("uid", "policy_hash"))
              if _text(decision.get(src))}
    found: dict[str, Any] = {"decision": str(decision.get("effect"))}
    if policy:
        found["policy"] = policy
    return found


def _api(record: Mapping[str, Any]) -> dict[str, Any]:
    stage = str(record.get("stage"))
    tool = _text(record.get("tool"))
    api: dict[str, Any] = {"operation": tool or stage, "service": {"name": "opsgate"}}
    call_id = _text(record.get("call_id"))
    if call_id:
        request: dict[str, Any] = {"uid": call_id}
        if isinstance(record.get("arguments"), dict):
            request["data"] = record["arguments"]
        api["request"] = request
    outcome = record.get("outcome")
    if stage == "outcome" and isinstance(outcome, dict):
        response: dict[str, Any] = {"message": str(outcome.get("status"))}
        error = outcome.get("error")
        if isinstance(error, dict):
            response |= {key: error[src] for key, src in (("error", "code"), ("error_message", "message"))
                         if _text(error.get(src))}
            status = error.get("http_status")
            if isinstance(status, int) and not isinstance(status, bool):
                response["code"] = status
        if "result" in outcome:
            response["data"] = outcome["result"]
        api["response"] = response
    return api


def _actor(record: Mapping[str, Any]) -> dict[str, Any]:
    actor: dict[str, Any] = {}
    principal = _text(record.get("principal"))
    if principal and principal != "-":  # "-": no one known (a refused token)
        actor["user"] = {"name": principal, "uid": principal}
    session = _text(record.get("session_id"))
    if session:
        actor["session"] = {"uid": session}
    client = record.get("client")
    if isinstance(client, dict) and _text(client.get("name")):
        actor["app_name"] = client["name"]
    authorization = _authorization(record)
    if authorization is not None:
        actor["authorizations"] = [authorization]
    return actor or {"app_name": "opsgate"}  # a server event with no principal: the server itself acted


def to_ocsf(record: Mapping[str, Any], line: str, called: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The OCSF API Activity event for one audit record; ``line`` is its canonical text, kept to verify it by.

    ``called``: for an outcome, the resources its decision named (an outcome record names no object).
    """
    activity = activity_of(record)
    status_id, severity_id, status_code, detail = _status(record)
    time_ms = _epoch_ms(record.get("time"))
    stage = str(record.get("stage"))
    client = record.get("client")
    source: dict[str, Any] = {"svc_name": "mcp"}
    if isinstance(client, dict) and _text(client.get("name")):
        source["name"] = client["name"]
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": "opsgate", "vendor_name": "opsgate", "feature": {"name": "audit"}},
        "log_name": "opsgate.audit",
        "log_version": f"opsgate.audit/v{record.get('v')}",
        "original_time": str(record.get("time")),
        "uid": str(record.get("hash")),
    }
    seq = record.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool):
        metadata["sequence"] = seq
    if _text(record.get("call_id")):
        metadata["correlation_uid"] = record["call_id"]
    event: dict[str, Any] = {
        "activity_id": activity,
        "activity_name": ACTIVITY_NAMES[activity],
        "category_uid": CATEGORY_UID,
        "category_name": CATEGORY_NAME,
        "class_uid": CLASS_UID,
        "class_name": CLASS_NAME,
        "type_uid": CLASS_UID * 100 + activity,
        "type_name": f"{CLASS_NAME}: {ACTIVITY_NAMES[activity]}",
        "time": time_ms,
        "timezone_offset": 0,
        "severity_id": severity_id,
        "severity": SEVERITY_NAMES[severity_id],
        "status_id": status_id,
        "status": STATUS_NAMES[status_id],
        "message": detail or _EVENT_TEXT.get(stage) or f"{record.get('tool')} {status_code}",
        "metadata": metadata,
        "actor": _actor(record),
        "api": _api(record),
        "src_endpoint": source,
        "unmapped": {"opsgate": {**{k: v for k, v in record.items() if k not in _MAPPED}, "record": line}},
    }
    if status_code:
        event["status_code"] = status_code
    if detail:
        event["status_detail"] = detail
    resources = _resources(record) or (called or [])
    if resources:
        event["resources"] = resources
    duration = record.get("duration_ms")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        event["duration"] = round(duration)
    return event


PENDING_CALLS = 10_000
"""Allowed calls whose outcome has not been read, remembered for their resources (the oldest are let go)."""


class Events:
    """Records to events, in log order: an outcome gets the resources its call's decision named.

    Pure but for that memory, so the export and :func:`check_export` derive the same events from the same
    records. At most ``PENDING_CALLS`` calls are remembered; a denial has no outcome and is not remembered.
    """

    def __init__(self) -> None:
        self._pending: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def event(self, record: Mapping[str, Any], line: str) -> dict[str, Any]:
        call_id, stage = record.get("call_id"), record.get("stage")
        called = None
        if isinstance(call_id, str):
            if stage == "outcome":
                called = self._pending.pop(call_id, None)
            elif stage == "decision" and _dict(record.get("decision")).get("effect") == "allow":
                self._pending[call_id] = _resources(record)
                if len(self._pending) > PENDING_CALLS:
                    self._pending.popitem(last=False)
        return to_ocsf(record, line, called)

    def line(self, record: Mapping[str, Any], raw: bytes) -> bytes:
        """One line of the export (with its newline): the event of the record whose canonical line is ``raw``."""
        return orjson.dumps(self.event(record, raw.decode("utf-8")), option=orjson.OPT_APPEND_NEWLINE)


# --- checking an export ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportCheck:
    """What :func:`check_export` found. ``line`` is 1-based in the export; seqs are the records'."""

    ok: bool
    records: int  # events whose record was intact and in place, before the first problem
    first_seq: int | None
    last_seq: int | None
    head_hash: str
    anchored: int  # checkpointed seqs inside the export whose signed hash matched
    problem: str | None = None
    line: int | None = None
    detail: str | None = None


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b or a[key] != b[key]:
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return path or "(the event)"


def _event_record(event: Any) -> tuple[str, dict[str, Any]]:
    """The canonical line an event carries and the record parsed from it; ValueError(problem, detail)."""
    if not isinstance(event, dict):
        raise ValueError("not-json", "the line is not a JSON object")
    unmapped = event.get("unmapped")
    opsgate = unmapped.get("opsgate") if isinstance(unmapped, dict) else None
    text = opsgate.get("record") if isinstance(opsgate, dict) else None
    if not isinstance(text, str):
        raise ValueError("no-record", "the event has no unmapped.opsgate.record (the audit record's canonical line)")
    try:
        record = loads(text)
    except ValueError:
        raise ValueError("not-json", "unmapped.opsgate.record is not JSON") from None
    if not isinstance(record, dict):
        raise ValueError("not-json", "unmapped.opsgate.record is not a JSON object")
    try:
        exact = canonical(record) == text.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError):
        exact = False
    if not exact:
        raise ValueError("not-canonical", "unmapped.opsgate.record is not the RFC 8785 form of the record")
    return text, record


def check_export(lines: Iterable[bytes], anchors: Mapping[int, str] | None = None) -> ExportCheck:
    """Re-verify an OCSF export: each record intact (canonical, hash), in chain order (seq, prev), its event
    the one :func:`to_ocsf` makes of it, and each seq in ``anchors`` (from signed checkpoints) with that hash.

    An export may start past seq 1 (a time range); its first record's ``prev`` is then taken as given.
    """
    wanted = anchors or {}
    derive = Events()
    records = anchored = 0
    first: int | None = None
    seq, prev = 0, GENESIS_HASH

    def result(problem: str | None = None, number: int | None = None, detail: str | None = None) -> ExportCheck:
        return ExportCheck(problem is None, records, first, seq if first is not None else None, prev, anchored,
                           problem, number, detail)

    for number, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r\n")
        if not raw:
            continue
        try:
            event = orjson.loads(raw)
            text, record = _event_record(event)
        except orjson.JSONDecodeError:
            return result("not-json", number, "the line is not JSON")
        except ValueError as exc:
            return result(str(exc.args[0]), number, str(exc.args[1]) if len(exc.args) > 1 else None)
        claimed, claimed_prev, digest = record.get("seq"), record.get("prev"), record.get("hash")
        if not is_hash(digest) or record_hash(record) != digest:
            return result("hash-mismatch", number, f"record seq {claimed!r}: hash is not the SHA-256 of the record")
        if isinstance(claimed, bool) or not isinstance(claimed, int) or claimed < 1:
            return result("seq-gap", number, f"seq {claimed!r} is not a positive integer")
        if first is None:
            first, seq = claimed, claimed - 1
            prev = str(claimed_prev) if claimed != 1 and is_hash(claimed_prev) else GENESIS_HASH
        if claimed != seq + 1:
            return result("seq-gap", number, f"seq {claimed} where {seq + 1} was expected: a record removed, "
                          "inserted or moved")
        if claimed_prev != prev:
            return result("prev-mismatch", number, f"record {claimed}: prev is not the hash of record {seq}")
        derived = derive.event(record, text)
        if event != derived:
            where = _first_difference(event, derived)
            return result("event-mismatch", number, f"record {claimed}: {where} is not what the record says")
        if claimed in wanted:
            if wanted[claimed] != digest:
                return result("checkpoint-mismatch", number, f"record {claimed} is not the one a checkpoint signed")
            anchored += 1
        records, seq, prev = records + 1, claimed, digest
    return result()
