"""Validation of the served kinds (pure): names, Deployments, ReplicaSets, Namespaces.

Each check returns ``Cause`` records worded like ``k8s.io/apimachinery``'s
``field.ErrorList``, so a 422 from the sandbox reads like one from a real API
server ("Invalid value: -1: must be greater than or equal to 0").
"""

from __future__ import annotations

import json
from typing import Any

from opsgate.vocab.names import (
    DNS1123_LABEL,
    DNS1123_LABEL_MAX,
    DNS1123_SUBDOMAIN,
    DNS1123_SUBDOMAIN_MAX,
    LABEL_RE,
    QUALIFIED_NAME_MAX,
    QUALIFIED_NAME_RE,
    SUBDOMAIN_RE,
    is_qualified_name,
)

from .errors import Cause
from .selectors import selector_matches

JSON = dict[str, Any]

DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    f"'{DNS1123_LABEL}')"
)
DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{DNS1123_SUBDOMAIN}')"
)


def fmt_value(value: Any) -> str:
    """Render a value the way Go's ``%#v`` does in field errors (near enough)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(str(k))}:{json.dumps(str(v))}" for k, v in sorted(value.items()))
        return "map[string]string{" + inner + "}"
    if value is None:
        return "null"
    return str(value)


def invalid_value(path: str, value: Any, why: str) -> Cause:
    return Cause(path, f"Invalid value: {fmt_value(value)}: {why}", "FieldValueInvalid")


def required(path: str) -> Cause:
    return Cause(path, "Required value", "FieldValueRequired")


def duplicate(path: str, value: Any) -> Cause:
    return Cause(path, f"Duplicate value: {fmt_value(value)}", "FieldValueDuplicate")


def not_supported(path: str, value: Any, supported: list[str]) -> Cause:
    allowed = ", ".join(json.dumps(s) for s in supported)
    return Cause(path, f"Unsupported value: {fmt_value(value)}: supported values: {allowed}", "FieldValueNotSupported")


def dns1123_label(path: str, name: Any) -> list[Cause]:
    if not isinstance(name, str) or not name:
        return [required(path)]
    causes = []
    if len(name) > DNS1123_LABEL_MAX:
        causes.append(invalid_value(path, name, f"must be no more than {DNS1123_LABEL_MAX} characters"))
    if not LABEL_RE.fullmatch(name):
        causes.append(invalid_value(path, name, DNS1123_LABEL_MSG))
    return causes


def dns1123_subdomain(path: str, name: Any) -> list[Cause]:
    if not isinstance(name, str) or not name:
        return [required(path)]
    causes = []
    if len(name) > DNS1123_SUBDOMAIN_MAX:
        causes.append(invalid_value(path, name, f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters"))
    if not SUBDOMAIN_RE.fullmatch(name):
        causes.append(invalid_value(path, name, DNS1123_SUBDOMAIN_MSG))
    return causes


def _qualified_name(path: str, key: str) -> list[Cause]:
    prefix, slash, name = key.rpartition("/")
    causes: list[Cause] = []
    if slash and (not prefix or not SUBDOMAIN_RE.fullmatch(prefix)):
        causes.append(invalid_value(path, key, "prefix part " + DNS1123_SUBDOMAIN_MSG))
    if not name or len(name) > QUALIFIED_NAME_MAX or not QUALIFIED_NAME_RE.fullmatch(name):
        causes.append(
            invalid_value(
                path,
                key,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                "with an alphanumeric character, and be at most 63 characters",
            )
        )
    return causes


def labels(path: str, value: Any) -> list[Cause]:
    """Label keys are qualified names; values are empty or up to 63 name characters."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [invalid_value(path, value, "must be a map of strings")]
    causes: list[Cause] = []
    for key, val in value.items():
        causes += _qualified_name(path, str(key))
        if not isinstance(val, str) or (val and not is_qualified_name(val)):
            causes.append(
                invalid_value(
                    path,
                    val,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                    "'.', and must start and end with an alphanumeric character, and be at most 63 characters",
                )
            )
    return causes


def object_meta(obj: JSON, *, subdomain: bool = True) -> list[Cause]:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    causes = dns1123_subdomain("metadata.name", name) if subdomain else dns1123_label("metadata.name", name)
    causes += labels("metadata.labels", meta.get("labels"))
    annotations = meta.get("annotations")
    if annotations is not None and (
        not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values())
    ):
        causes.append(invalid_value("metadata.annotations", annotations, "must be a map of strings"))
    return causes


def _non_negative_int(path: str, value: Any, *, required_field: bool = False) -> list[Cause]:
    if value is None:
        return [required(path)] if required_field else []
    if not isinstance(value, int) or isinstance(value, bool):
        return [invalid_value(path, value, "must be an integer")]
    if value < 0:
        return [invalid_value(path, value, "must be greater than or equal to 0")]
    return []


def container(path: str, c: Any, seen: set[str]) -> list[Cause]:
    if not isinstance(c, dict):
        return [invalid_value(path, c, "must be an object")]
    causes = dns1123_label(f"{path}.name", c.get("name"))
    name = c.get("name")
    if isinstance(name, str) and name:
        if name in seen:
            causes.append(duplicate(f"{path}.name", name))
        seen.add(name)
    image = c.get("image")
    if not isinstance(image, str) or not image.strip():
        causes.append(required(f"{path}.image"))
    for i, port in enumerate(c.get("ports") or []):
        number = port.get("containerPort") if isinstance(port, dict) else None
        ppath = f"{path}.ports[{i}].containerPort"
        if number is None:
            causes.append(required(ppath))
        elif not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(invalid_value(ppath, number, "must be between 1 and 65535, inclusive"))
    for i, env in enumerate(c.get("env") or []):
        if not isinstance(env, dict) or not env.get("name"):
            causes.append(required(f"{path}.env[{i}].name"))
    return causes


def pod_spec(path: str, spec: Any, *, restart_always: bool) -> list[Cause]:
    if not isinstance(spec, dict):
        return [required(path)]
    causes: list[Cause] = []
    containers = spec.get("containers")
    if not containers:
        causes.append(required(f"{path}.containers"))
    elif not isinstance(containers, list):
        causes.append(invalid_value(f"{path}.containers", containers, "must be a list"))
    else:
        seen: set[str] = set()
        for i, c in enumerate(containers):
            causes += container(f"{path}.containers[{i}]", c, seen)
    policy = spec.get("restartPolicy")
    if restart_always and policy not in (None, "Always"):
        causes.append(not_supported(f"{path}.restartPolicy", policy, ["Always"]))
    return causes


def _selector_and_template(kind_path: str, spec: JSON) -> list[Cause]:
    causes: list[Cause] = []
    selector = spec.get("selector")
    template = spec.get("template")
    if not isinstance(template, dict):
        return [required(f"{kind_path}.template")]
    tlabels = (template.get("metadata") or {}).get("labels") or {}
    causes += labels(f"{kind_path}.template.metadata.labels", tlabels)
    if not isinstance(selector, dict):
        causes.append(required(f"{kind_path}.selector"))
    elif not selector.get("matchLabels") and not selector.get("matchExpressions"):
        causes.append(invalid_value(f"{kind_path}.selector", selector, "empty selector is invalid for deployment"))
    elif not selector_matches(selector, tlabels):
        why = "`selector` does not match template `labels`"
        causes.append(invalid_value(f"{kind_path}.template.metadata.labels", tlabels, why))
    causes += pod_spec(f"{kind_path}.template.spec", template.get("spec"), restart_always=True)
    return causes


def deployment(obj: JSON, old: JSON | None) -> list[Cause]:
    """apps/v1 Deployment: name, replicas, selector vs template, containers, strategy, immutables."""
    causes = object_meta(obj)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [*causes, required("spec")]
    causes += _non_negative_int("spec.replicas", spec.get("replicas"))
    causes += _non_negative_int("spec.revisionHistoryLimit", spec.get("revisionHistoryLimit"))
    causes += _non_negative_int("spec.minReadySeconds", spec.get("minReadySeconds"))
    causes += _selector_and_template("spec", spec)
    strategy = spec.get("strategy") or {}
    stype = strategy.get("type") if isinstance(strategy, dict) else None
    if stype not in (None, "RollingUpdate", "Recreate"):
        causes.append(not_supported("spec.strategy.type", stype, ["Recreate", "RollingUpdate"]))
    if stype == "Recreate" and strategy.get("rollingUpdate"):
        causes.append(
            Cause("spec.strategy.rollingUpdate", "Forbidden: may not be specified when strategy `type` is 'Recreate'",
                  "FieldValueForbidden")
        )
    deadline = spec.get("progressDeadlineSeconds")
    if deadline is not None:
        if not isinstance(deadline, int) or deadline <= 0:
            causes.append(invalid_value("spec.progressDeadlineSeconds", deadline, "must be greater than 0"))
        elif isinstance(spec.get("minReadySeconds"), int) and deadline <= spec["minReadySeconds"]:
            causes.append(
                invalid_value("spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds")
            )
    if old is not None:
        causes += immutable("spec.selector", spec.get("selector"), (old.get("spec") or {}).get("selector"))
    return causes


def replicaset(obj: JSON, old: JSON | None) -> list[Cause]:
    causes = object_meta(obj)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [*causes, required("spec")]
    causes += _non_negative_int("spec.replicas", spec.get("replicas"))
    causes += _selector_and_template("spec", spec)
    if old is not None:
        causes += immutable("spec.selector", spec.get("selector"), (old.get("spec") or {}).get("selector"))
    return causes


def namespace(obj: JSON, old: JSON | None) -> list[Cause]:
    return object_meta(obj, subdomain=False)


def pod(obj: JSON, old: JSON | None) -> list[Cause]:
    causes = object_meta(obj)
    causes += pod_spec("spec", obj.get("spec"), restart_always=False)
    return causes


def immutable(path: str, new: Any, old: Any) -> list[Cause]:
    if new != old:
        return [invalid_value(path, new, "field is immutable")]
    return []
