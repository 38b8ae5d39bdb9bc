"""What a write changes in a Deployment, as a flat list of field changes, with env values hidden."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ToolError
from .objects import (
    HASH_LABEL,
    JSON,
    meta,
    spec_of,
)
from .patches import main_container_index
from .templates import normalize, strip_hash


class FieldChange(BaseModel):
    """One field that changed (or would change). Env values are never shown, only whether they changed."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description='Field path, e.g. "replicas", "containers.web.image", "labels[\\"team\\"]".')
    before: Any = Field(default=None, description="Value before; null when the field was absent.")
    after: Any = Field(default=None, description="Value after; null when the field is absent after.")


HIDDEN: Final = "(hidden)"
HIDDEN_CHANGED: Final = "(hidden, changed)"
_PLAIN_KEY: Final = re.compile(r"^[A-Za-z0-9_-]+$")


def _env_view(env: Sequence[Any]) -> JSON:
    out: JSON = {}
    for e in env:
        if not isinstance(e, dict) or "name" not in e:
            continue
        if "valueFrom" in e and isinstance(e["valueFrom"], dict):
            src = e["valueFrom"]
            kind = next(iter(src), "valueFrom")
            ref = src.get(kind) or {}
            where = "/".join(str(ref[k]) for k in ("name", "key", "fieldPath", "resource") if k in ref)
            out[e["name"]] = {"from": f"{kind} {where}".strip()}
        else:
            out[e["name"]] = {"value": e.get("value", "")}
    return out


def _ports_view(ports: Sequence[Any]) -> list[str] | None:
    shown = sorted(f"{p.get('containerPort')}/{p.get('protocol', 'TCP')}" for p in ports if isinstance(p, dict))
    return shown or None


def _rest_fingerprint(template: Mapping[str, Any]) -> str | None:
    """A short hash of the template fields the view does not show, so any other change is still seen."""
    rest = strip_hash(template)
    meta(rest).pop("labels", None)
    for c in spec_of(rest).get("containers") or []:
        if isinstance(c, dict):
            for k in ("image", "env", "ports", "resources"):
                c.pop(k, None)
    normalized = normalize(rest)
    if not normalized:
        return None
    canonical = json.dumps(normalized, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:12]


def deployment_view(obj: Mapping[str, Any] | None) -> JSON:
    """The fields of a Deployment that tools report changes of, keyed for readable paths."""
    if not obj:
        return {}
    spec = spec_of(obj)
    template = spec.get("template") or {}
    containers: JSON = {}
    for c in spec_of(template).get("containers") or []:
        if not isinstance(c, dict):
            continue
        containers[str(c.get("name"))] = {
            "image": c.get("image"),
            "env": _env_view(c.get("env") or []),
            "ports": _ports_view(c.get("ports") or []),
            "resources": c.get("resources") or {},
        }
    template_labels = dict(meta(template).get("labels") or {})
    template_labels.pop(HASH_LABEL, None)
    return {
        "replicas": spec.get("replicas"),
        "paused": spec.get("paused") or None,
        "labels": dict(meta(obj).get("labels") or {}),
        "template_labels": template_labels,
        "containers": containers,
        "template_other": _rest_fingerprint(template),
    }


def _is_env(parts: tuple[str, ...]) -> bool:
    return len(parts) == 4 and parts[0] == "containers" and parts[2] == "env"


def _flatten(value: Any, prefix: tuple[str, ...], out: dict[tuple[str, ...], Any]) -> None:
    if isinstance(value, dict) and value and not _is_env(prefix):
        for k, v in value.items():
            _flatten(v, (*prefix, str(k)), out)
    elif value is not None and value != {}:
        out[prefix] = value


def render_path(parts: Sequence[str]) -> str:
    """``("labels", "app.kubernetes.io/name")`` -> ``labels["app.kubernetes.io/name"]``."""
    text = ""
    for part in parts:
        if _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += json.dumps([part])
    return text


def _shown_env(entry: Any, changed: bool) -> Any:
    if not isinstance(entry, dict):
        return None
    if "from" in entry:
        return entry["from"]
    return HIDDEN_CHANGED if changed else HIDDEN


def diff_views(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[FieldChange]:
    """Fields that differ between two ``deployment_view``s, sorted by path; env values hidden.

    An env variable's literal value shows only as "(hidden)" / "(hidden, changed)": results and
    the audit log are read by people who must not learn the secrets passed to a workload.
    References (``valueFrom``) are not secret and are shown.
    """
    flat_before: dict[tuple[str, ...], Any] = {}
    flat_after: dict[tuple[str, ...], Any] = {}
    _flatten(dict(before), (), flat_before)
    _flatten(dict(after), (), flat_after)
    changes: list[FieldChange] = []
    for key in sorted(set(flat_before) | set(flat_after)):
        b, a = flat_before.get(key), flat_after.get(key)
        if b == a:
            continue
        if _is_env(key):
            both_literal = isinstance(b, dict) and "value" in b and isinstance(a, dict) and "value" in a
            b, a = _shown_env(b, False), _shown_env(a, both_literal)
        changes.append(FieldChange(path=render_path(key), before=b, after=a))
    return changes


def diff_deployments(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[FieldChange]:
    """What changed from ``before`` (None: nothing existed) to ``after``.

    On a create the fingerprint of unviewed template fields says nothing useful, so it is left out.
    """
    changes = diff_views(deployment_view(before), deployment_view(after))
    if not before:
        changes = [c for c in changes if c.path != "template_other"]
    return changes



def env_names(obj: Mapping[str, Any] | None, name: str) -> list[str]:
    """Env var names of the Deployment's main container (as ``deploy`` picks it); never the values."""
    template = spec_of(obj).get("template") or {}
    containers = spec_of(template).get("containers") or []
    try:
        container = containers[main_container_index(template, name)]
    except (ToolError, IndexError):
        return []
    return [str(e.get("name")) for e in container.get("env") or [] if isinstance(e, dict)]
