"""Decoding the protobuf request bodies kubectl's typed clients send (pure).

``kubectl create namespace`` and ``kubectl create deployment`` POST
``application/vnd.kubernetes.protobuf`` and do not fall back to JSON on 415,
so the sandbox reads that encoding for the built-in kinds: the ``k8s\\0``
envelope (``runtime.Unknown``), then the object by the field numbers of
``k8s.io/api`` ``generated.proto``. Only the fields those commands and common
pod templates use are mapped; a non-empty field outside the table is refused
(415) rather than dropped, so nothing is ever applied half-read. Responses
stay JSON, which the clients accept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, unsupported_media_type

PROTOBUF = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


@dataclass(frozen=True)
class F:
    """One field: JSON name, kind (string/int/bool/msg/map/time/intstr/quantity), message, repeated, pointer."""

    name: str
    kind: str
    msg: str = ""
    repeated: bool = False
    pointer: bool = False


SCHEMA: dict[str, dict[int, F]] = {
    "Unknown": {1: F("typeMeta", "msg", "TypeMeta"), 2: F("raw", "bytes"), 3: F("contentEncoding", "string"),
                4: F("contentType", "string")},
    "TypeMeta": {1: F("apiVersion", "string"), 2: F("kind", "string")},
    "ObjectMeta": {
        1: F("name", "string"), 2: F("generateName", "string"), 3: F("namespace", "string"),
        4: F("selfLink", "string"), 5: F("uid", "string"), 6: F("resourceVersion", "string"),
        7: F("generation", "int"), 8: F("creationTimestamp", "time"), 9: F("deletionTimestamp", "time"),
        10: F("deletionGracePeriodSeconds", "int", pointer=True), 11: F("labels", "map"),
        12: F("annotations", "map"), 13: F("ownerReferences", "msg", "OwnerReference", repeated=True),
        14: F("finalizers", "string", repeated=True),
    },
    "OwnerReference": {
        1: F("kind", "string"), 3: F("name", "string"), 4: F("uid", "string"), 5: F("apiVersion", "string"),
        6: F("controller", "bool", pointer=True), 7: F("blockOwnerDeletion", "bool", pointer=True),
    },
    "LabelSelector": {1: F("matchLabels", "map"), 2: F("matchExpressions", "msg", "Requirement", repeated=True)},
    "Requirement": {1: F("key", "string"), 2: F("operator", "string"), 3: F("values", "string", repeated=True)},
    "Namespace": {1: F("metadata", "msg", "ObjectMeta"), 2: F("spec", "msg", "NamespaceSpec"),
                  3: F("status", "msg", "NamespaceStatus")},
    "NamespaceSpec": {1: F("finalizers", "string", repeated=True)},
    "NamespaceStatus": {1: F("phase", "string")},
    "Deployment": {1: F("metadata", "msg", "ObjectMeta"), 2: F("spec", "msg", "DeploymentSpec"),
                   3: F("status", "msg", "Ignored")},
    "DeploymentSpec": {
        1: F("replicas", "int", pointer=True), 2: F("selector", "msg", "LabelSelector"),
        3: F("template", "msg", "PodTemplateSpec"), 4: F("strategy", "msg", "DeploymentStrategy"),
        5: F("minReadySeconds", "int"), 6: F("revisionHistoryLimit", "int", pointer=True),
        7: F("paused", "bool"), 9: F("progressDeadlineSeconds", "int", pointer=True),
    },
    "DeploymentStrategy": {1: F("type", "string"), 2: F("rollingUpdate", "msg", "RollingUpdateDeployment")},
    "RollingUpdateDeployment": {1: F("maxUnavailable", "intstr"), 2: F("maxSurge", "intstr")},
    "ReplicaSet": {1: F("metadata", "msg", "ObjectMeta"), 2: F("spec", "msg", "ReplicaSetSpec"),
                   3: F("status", "msg", "Ignored")},
    "ReplicaSetSpec": {1: F("replicas", "int", pointer=True), 2: F("selector", "msg", "LabelSelector"),
                       3: F("template", "msg", "PodTemplateSpec"), 4: F("minReadySeconds", "int")},
    "Pod": {1: F("metadata", "msg", "ObjectMeta"), 2: F("spec", "msg", "PodSpec"), 3: F("status", "msg", "Ignored")},
    "PodTemplateSpec": {1: F("metadata", "msg", "ObjectMeta"), 2: F("spec", "msg", "PodSpec")},
    "PodSpec": {
        2: F("containers", "msg", "Container", repeated=True), 3: F("restartPolicy", "string"),
        4: F("terminationGracePeriodSeconds", "int", pointer=True), 5: F("activeDeadlineSeconds", "int", pointer=True),
        6: F("dnsPolicy", "string"), 7: F("nodeSelector", "map"), 8: F("serviceAccountName", "string"),
        9: F("serviceAccount", "string"), 10: F("nodeName", "string"), 11: F("hostNetwork", "bool"),
        12: F("hostPID", "bool"), 13: F("hostIPC", "bool"), 15: F("imagePullSecrets", "msg", "LocalRef", repeated=True),
        16: F("hostname", "string"), 17: F("subdomain", "string"), 19: F("schedulerName", "string"),
        20: F("initContainers", "msg", "Container", repeated=True),
        21: F("automountServiceAccountToken", "bool", pointer=True), 24: F("priorityClassName", "string"),
        25: F("priority", "int", pointer=True), 29: F("runtimeClassName", "string", pointer=True),
        30: F("enableServiceLinks", "bool", pointer=True), 31: F("preemptionPolicy", "string", pointer=True),
    },
    "LocalRef": {1: F("name", "string")},
    "Container": {
        1: F("name", "string"), 2: F("image", "string"), 3: F("command", "string", repeated=True),
        4: F("args", "string", repeated=True), 5: F("workingDir", "string"),
        6: F("ports", "msg", "ContainerPort", repeated=True), 7: F("env", "msg", "EnvVar", repeated=True),
        8: F("resources", "msg", "ResourceRequirements"), 13: F("terminationMessagePath", "string"),
        14: F("imagePullPolicy", "string"), 16: F("stdin", "bool"), 17: F("stdinOnce", "bool"), 18: F("tty", "bool"),
        20: F("terminationMessagePolicy", "string"),
    },
    "ContainerPort": {1: F("name", "string"), 2: F("hostPort", "int"), 3: F("containerPort", "int"),
                      4: F("protocol", "string"), 5: F("hostIP", "string")},
    "EnvVar": {1: F("name", "string"), 2: F("value", "string")},
    "ResourceRequirements": {1: F("limits", "quantity"), 2: F("requests", "quantity")},
    # authorization.k8s.io/v1 reviews (kubectl auth can-i): answered, never stored.
    "AccessReview": {1: F("metadata", "msg", "ObjectMeta"), 2: F("spec", "msg", "AccessReviewSpec"),
                     3: F("status", "msg", "Ignored")},
    "AccessReviewSpec": {1: F("resourceAttributes", "msg", "ResourceAttributes"),
                         2: F("nonResourceAttributes", "msg", "NonResourceAttributes"), 3: F("user", "string"),
                         4: F("groups", "string", repeated=True), 6: F("uid", "string")},
    "ResourceAttributes": {1: F("namespace", "string"), 2: F("verb", "string"), 3: F("group", "string"),
                           4: F("version", "string"), 5: F("resource", "string"), 6: F("subresource", "string"),
                           7: F("name", "string")},
    "NonResourceAttributes": {1: F("path", "string"), 2: F("verb", "string")},
    "RulesReview": {1: F("metadata", "msg", "ObjectMeta"), 2: F("spec", "msg", "RulesReviewSpec"),
                    3: F("status", "msg", "Ignored")},
    "RulesReviewSpec": {1: F("namespace", "string")},
    # Status is the server's to write: read past it whatever it holds.
    "Ignored": {},
}

#: Kind -> root message, for the kinds a protobuf body may carry.
ROOTS = {"Namespace": "Namespace", "Deployment": "Deployment", "ReplicaSet": "ReplicaSet", "Pod": "Pod",
         "SelfSubjectAccessReview": "AccessReview", "SubjectAccessReview": "AccessReview",
         "LocalSubjectAccessReview": "AccessReview", "SelfSubjectRulesReview": "RulesReview"}


class _Unsupported(Exception):
    pass


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data):
            raise _Unsupported("truncated varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Split a message into (field number, wire type, raw value)."""
    out: list[tuple[int, int, Any]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, wire, value))
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise _Unsupported("truncated field")
            out.append((number, wire, data[i : i + size]))
            i += size
        elif wire == 5:
            out.append((number, wire, data[i : i + 4]))
            i += 4
        elif wire == 1:
            out.append((number, wire, data[i : i + 8]))
            i += 8
        else:
            raise _Unsupported(f"wire type {wire}")
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _string_map(data: bytes) -> tuple[str, str]:
    key = value = ""
    for number, _, raw in _fields(data):
        if number == 1:
            key = bytes(raw).decode()
        elif number == 2:
            value = bytes(raw).decode() if isinstance(raw, bytes) else str(raw)
    return key, value


def _quantity_entry(data: bytes) -> tuple[str, str]:
    key = value = ""
    for number, _, raw in _fields(data):
        if number == 1:
            key = bytes(raw).decode()
        elif number == 2:
            for inner, _, qraw in _fields(bytes(raw)):
                if inner == 1:
                    value = bytes(qraw).decode()
    return key, value


def _time(data: bytes) -> str | None:
    seconds = 0
    for number, _, raw in _fields(data):
        if number == 1:
            seconds = _signed(raw)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds else None


def _intstr(data: bytes) -> int | str:
    kind, int_val, str_val = 0, 0, ""
    for number, _, raw in _fields(data):
        if number == 1:
            kind = raw
        elif number == 2:
            int_val = _signed(raw)
        elif number == 3:
            str_val = bytes(raw).decode()
    return str_val if kind == 1 else int_val


def _is_empty(wire: int, raw: Any) -> bool:
    return (wire == 0 and raw == 0) or (wire == 2 and len(raw) == 0)


def decode_message(data: bytes, message: str) -> dict[str, Any]:
    """Decode ``data`` as ``message`` into the JSON shape (zero values of non-pointer fields omitted)."""
    schema = SCHEMA[message]
    out: dict[str, Any] = {}
    for number, wire, raw in _fields(data):
        field = schema.get(number)
        if field is None:
            if message != "Ignored" and not _is_empty(wire, raw):
                raise _Unsupported(f"field {number} of {message}")
            continue
        value: Any
        if field.kind in ("map", "quantity"):
            entry = _string_map(bytes(raw)) if field.kind == "map" else _quantity_entry(bytes(raw))
            out.setdefault(field.name, {})[entry[0]] = entry[1]
            continue
        if field.kind == "string":
            value = bytes(raw).decode()
            keep = bool(value) or field.pointer
        elif field.kind == "bytes":
            value = bytes(raw)
            keep = True
        elif field.kind == "int":
            value = _signed(raw)
            keep = value != 0 or field.pointer
        elif field.kind == "bool":
            value = bool(raw)
            keep = value or field.pointer
        elif field.kind == "time":
            value = _time(bytes(raw))
            keep = value is not None
        elif field.kind == "intstr":
            value = _intstr(bytes(raw))
            keep = True
        else:
            value = decode_message(bytes(raw), field.msg)
            keep = field.repeated or bool(value) or field.pointer
        if field.repeated:
            out.setdefault(field.name, []).append(value)
        elif keep:
            out[field.name] = value
    return out


def decode_object(body: bytes, content_type: str) -> dict[str, Any]:
    """A protobuf request body as a JSON object; 415 when it is not one the sandbox can read in full."""
    try:
        if not body.startswith(MAGIC):
            raise _Unsupported("missing the k8s protobuf envelope")
        envelope = decode_message(body[len(MAGIC) :], "Unknown")
        type_meta = envelope.get("typeMeta") or {}
        kind = str(type_meta.get("kind", ""))
        root = ROOTS.get(kind)
        if root is None or envelope.get("contentEncoding"):
            raise _Unsupported(f"kind {kind or '?'}")
        obj = decode_message(bytes(envelope.get("raw") or b""), root)
    except (_Unsupported, UnicodeDecodeError) as exc:
        error: ApiError = unsupported_media_type(content_type, ["application/json"])
        error.message += f" (the sandbox reads protobuf only for common fields of built-in kinds: {exc})"
        raise error from exc
    obj.pop("status", None)
    return {"apiVersion": type_meta.get("apiVersion", ""), "kind": kind, **obj}
