"""Pure decisions behind the Deployment tools: no I/O, no ``kubernetes`` import.

Everything here works on Deployments and ReplicaSets as the JSON dicts the API
returns, so the same functions serve the real client, the sandbox and the
tests. Names and checks follow the API server (``k8s.io/apimachinery``
validation) and kubectl (``rollout undo``, ``rollout status``) so that what we
refuse here is exactly what the cluster would refuse, only earlier and with a
sentence the assistant can act on.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import ToolError
from .kube import guard, pointer

JSON = dict[str, Any]

HASH_LABEL: Final = "pod-template-hash"
REVISION_ANNOTATION: Final = "deployment.kubernetes.io/revision"
CHANGE_CAUSE_ANNOTATION: Final = "kubernetes.io/change-cause"
NAME_LABEL: Final = "app.kubernetes.io/name"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "opsgate"
RESERVED_LABELS: Final = frozenset({HASH_LABEL, NAME_LABEL})

#: Deployment annotations kubectl keeps from the Deployment (not the ReplicaSet) on rollback
#: (``annotationsToSkip`` in kubectl's rollback.go).
ROLLBACK_KEPT_ANNOTATIONS: Final = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
})

# --------------------------------------------------------------------------- names

DNS1123_LABEL_MAX: Final = 63
DNS1123_SUBDOMAIN_MAX: Final = 253
DNS1123_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_RE: Final = re.compile(DNS1123_LABEL_PATTERN)
_SUBDOMAIN_RE: Final = re.compile(DNS1123_SUBDOMAIN_PATTERN)

NameKind = Literal["label", "subdomain"]


def dns1123_problem(value: str, kind: NameKind) -> str | None:
    """Why ``value`` is not a DNS-1123 label/subdomain, or None when it is one.

    Labels (namespaces, container names) are one lowercase alphanumeric/'-' word of at most 63
    characters; subdomains (most object names) are dot-separated labels, at most 253 in all.
    """
    limit = DNS1123_LABEL_MAX if kind == "label" else DNS1123_SUBDOMAIN_MAX
    if not value:
        return "must not be empty"
    if len(value) > limit:
        return f"must be at most {limit} characters (got {len(value)})"
    if (_LABEL_RE if kind == "label" else _SUBDOMAIN_RE).fullmatch(value):
        return None
    allowed = "lowercase letters, digits and '-'" + (" and '.'" if kind == "subdomain" else "")
    return (f"{value!r} is not a valid DNS-1123 {kind}: use {allowed}, "
            "starting and ending with a letter or digit")


# Label keys and values (k8s.io/apimachinery/pkg/util/validation: IsQualifiedName, IsValidLabelValue).
_QUALIFIED_NAME_RE: Final = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f"label key {key!r} has an empty prefix before '/'"
    if slash:
        why = dns1123_problem(prefix, "subdomain")
        if why is not None:
            return f"label key prefix {prefix!r}: {why}"
    if not name or len(name) > 63 or not _QUALIFIED_NAME_RE.fullmatch(name):
        return (f"label key {key!r}: the name part must be 1-63 characters of letters, digits, '-', '_', '.', "
                "starting and ending with a letter or digit")
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value (empty is allowed), or None."""
    if value == "":
        return None
    if len(value) > 63 or not _QUALIFIED_NAME_RE.fullmatch(value):
        return (f"label value {value!r} must be at most 63 characters of letters, digits, '-', '_', '.', "
                "starting and ending with a letter or digit")
    return None


ENV_NAME_PATTERN: Final = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_ENV_NAME_RE: Final = re.compile(ENV_NAME_PATTERN)


def env_name_problem(name: str) -> str | None:
    if not name or len(name) > 256 or not _ENV_NAME_RE.fullmatch(name):
        return (f"environment variable name {name!r} must be letters, digits, '_', '-', '.', "
                "not starting with a digit")
    return None


# Image references, after github.com/distribution/reference: [domain[:port]/]path[:tag][@digest].
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_MAX: Final = 512
_IMAGE_RE: Final = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


def image_problem(image: str) -> str | None:
    """Why ``image`` is not a container image reference, or None."""
    if not image:
        return "must not be empty"
    if len(image) > IMAGE_MAX:
        return f"must be at most {IMAGE_MAX} characters"
    if any(ch.isspace() for ch in image):
        return "must not contain whitespace"
    if _IMAGE_RE.fullmatch(image) is None:
        return (f"{image!r} is not an image reference: expected [registry[:port]/]repository[:tag][@digest], "
                "with a lowercase repository path, e.g. 'ghcr.io/acme/web:1.4.2'")
    return None


def image_registry(image: str) -> str:
    """The registry host an image is pulled from ("docker.io" when none is named), for policy bounds.

    As Docker does: the first path component is a registry only when it has a '.' or ':' or is
    'localhost'; otherwise the image is on Docker Hub.
    """
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return "docker.io"


# --------------------------------------------------------------------------- quantities

_QUANTITY_RE: Final = re.compile(
    r"^(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]{1,3})?$"
)
_SUFFIX_VALUES: Final[dict[str, Decimal]] = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "1.5", "128Mi", "1e3") as a Decimal; ValueError if not one.

    Negative quantities are refused: no container resource can be negative.
    """
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity (e.g. '250m', '1', '512Mi', '2Gi')")
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["num"])
        scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else _SUFFIX_VALUES[suffix]
    except (InvalidOperation, KeyError) as exc:
        raise ValueError(f"{text!r} is not a quantity") from exc
    return number * scale


# --------------------------------------------------------------------------- object access


def meta(obj: Mapping[str, Any] | None) -> JSON:
    value = (obj or {}).get("metadata")
    return value if isinstance(value, dict) else {}


def spec_of(obj: Mapping[str, Any] | None) -> JSON:
    value = (obj or {}).get("spec")
    return value if isinstance(value, dict) else {}


def status_of(obj: Mapping[str, Any] | None) -> JSON:
    value = (obj or {}).get("status")
    return value if isinstance(value, dict) else {}


def revision_of(obj: Mapping[str, Any] | None) -> int:
    """The ``deployment.kubernetes.io/revision`` annotation, 0 when absent or not a number."""
    value = (meta(obj).get("annotations") or {}).get(REVISION_ANNOTATION)
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def images_of(template: Mapping[str, Any] | None) -> list[str]:
    """Images of a pod template's containers, in container order."""
    containers = spec_of(template).get("containers") or []
    return [str(c.get("image", "")) for c in containers if isinstance(c, dict)]


def change_cause(principal: str, call_id: str) -> str:
    """What every opsgate change writes to ``kubernetes.io/change-cause``: who, and the audit record."""
    return f"opsgate: {principal} call {call_id}"


def owned_by(objects: Iterable[Mapping[str, Any]], owner_uid: str) -> list[JSON]:
    """Objects whose ownerReferences name ``owner_uid``, as kubectl's rollout tools select ReplicaSets.

    By uid, not by selector: another Deployment with an overlapping selector, or an orphan
    ReplicaSet, must never become a rollback target.
    """
    out: list[JSON] = []
    for obj in objects:
        refs = meta(obj).get("ownerReferences") or []
        if any(isinstance(r, dict) and r.get("uid") == owner_uid for r in refs):
            out.append(dict(obj))
    return out


def selector_string(selector: Mapping[str, Any] | None) -> str | None:
    """A ``matchLabels``-only selector as a list query string; None when it cannot be said that way."""
    if not selector or selector.get("matchExpressions"):
        return None
    labels = selector.get("matchLabels") or {}
    if not labels:
        return None
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


# --------------------------------------------------------------------------- templates


def strip_hash(template: Mapping[str, Any] | None) -> JSON:
    """A deep copy of the template without the ``pod-template-hash`` label (and no emptied label map)."""
    out: JSON = copy.deepcopy(dict(template or {}))
    labels = meta(out).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
        if not labels:
            del out["metadata"]["labels"]
    return out


def _quantities(amounts: Mapping[str, Any]) -> JSON:
    out: JSON = {}
    for k, v in amounts.items():
        try:
            out[k] = parse_quantity(v) if isinstance(v, str) else v
        except ValueError:
            out[k] = v
    return out


def _normalize(value: Any, key: str | None = None) -> Any:
    """Drop map entries that are null, {} or [] and compare quantities by value ("1000m" == "1"),
    as Go's ``Semantic.DeepEqual`` does."""
    if isinstance(value, dict):
        if key in ("limits", "requests") and all(isinstance(v, str) for v in value.values()):
            value = _quantities(value)
        out = {}
        for k, v in value.items():
            n = _normalize(v, k)
            if n is None or n == {} or n == []:
                continue
            out[k] = n
        return out
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def templates_equal(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """kubectl's ``EqualIgnoreHash``: pod templates equal apart from ``pod-template-hash``."""
    return bool(_normalize(strip_hash(a)) == _normalize(strip_hash(b)))


# --------------------------------------------------------------------------- rollback


def choose_rollback_revision(revisions: Iterable[int], to_revision: int | None) -> int:
    """The revision ``rollout undo`` goes back to: ``to_revision`` when given, else the second-highest.

    Raises ToolError: an unknown ``to_revision`` lists the revisions there are; with no explicit
    target and fewer than two revisions there is nothing to go back to.
    """
    known = sorted({r for r in revisions if r > 0})
    if to_revision is not None:
        if to_revision in known:
            return to_revision
        listed = ", ".join(map(str, known)) or "none"
        raise ToolError(
            f"revision {to_revision} not found; the revisions there are: {listed}",
            code="invalid_arguments", field="to_revision", rule="unknown-revision",
        )
    if len(known) < 2:
        only = f" (only revision {known[0]})" if known else ""
        raise ToolError(
            f"no previous revision to roll back to{only}",
            code="failed_precondition", rule="no-previous-revision",
        )
    return known[-2]


def rollback_annotations(deployment: Mapping[str, Any], replicaset: Mapping[str, Any], cause: str) -> dict[str, str]:
    """kubectl's rollback annotations: the Deployment's bookkeeping ones, the ReplicaSet's others, our cause."""
    current = meta(deployment).get("annotations") or {}
    out = {k: v for k, v in current.items() if k in ROLLBACK_KEPT_ANNOTATIONS}
    for k, v in (meta(replicaset).get("annotations") or {}).items():
        if k not in ROLLBACK_KEPT_ANNOTATIONS:
            out[k] = v
    out[CHANGE_CAUSE_ANNOTATION] = cause
    return out


def rollback_patch(deployment: Mapping[str, Any], replicaset: Mapping[str, Any], cause: str) -> list[JSON]:
    """The one JSON Patch of a rollback, as kubectl sends it, plus an optimistic-concurrency guard.

    JSON Patch ``replace`` swaps the whole template, so fields the old revision did not have
    (an env var, a volume) really go; a strategic merge would merge lists by key and keep them.
    The guard tests ``metadata.generation``, which the API server bumps on every change to a
    Deployment's spec or annotations (the template and revision this patch was computed from)
    and never on the controller's status writes (issue 15 item 12).
    """
    return [
        *guard(deployment, "/metadata/generation"),
        {"op": "replace", "path": "/spec/template", "value": strip_hash(spec_of(replicaset).get("template"))},
        # "add" replaces an existing member and also works when there are no annotations yet.
        {"op": "add", "path": "/metadata/annotations", "value": rollback_annotations(deployment, replicaset, cause)},
    ]


# --------------------------------------------------------------------------- deploy


@dataclass(frozen=True)
class DeploySpec:
    """What ``deploy`` was asked to set. None means "leave as it is" (or the default on create)."""

    name: str
    image: str
    replicas: int | None = None
    env: Mapping[str, str] | None = None
    ports: Sequence[int] | None = None
    resources: Mapping[str, Mapping[str, str]] | None = None
    labels: Mapping[str, str] | None = None


def _container(spec: DeploySpec, base: Mapping[str, Any] | None) -> JSON:
    """The main container with the requested fields applied over ``base`` (empty on create)."""
    c: JSON = copy.deepcopy(dict(base or {}))
    c.setdefault("name", spec.name)
    c["image"] = spec.image
    if spec.env is not None:
        env = [dict(e) for e in c.get("env") or [] if isinstance(e, dict)]
        index = {e.get("name"): i for i, e in enumerate(env)}
        for k, v in spec.env.items():
            entry = {"name": k, "value": v} if v != "" else {"name": k}  # the API omits an empty value
            if k in index:
                env[index[k]] = entry
            else:
                env.append(entry)
        c["env"] = env
    if spec.ports is not None:
        old = {p.get("containerPort"): p for p in c.get("ports") or [] if isinstance(p, dict)}
        c["ports"] = [old.get(p) or {"containerPort": p, "protocol": "TCP"} for p in spec.ports]
        if not c["ports"]:
            del c["ports"]
    if spec.resources is not None:
        res: JSON = copy.deepcopy(c.get("resources") or {})
        for section, amounts in spec.resources.items():
            res.setdefault(section, {}).update(amounts)
        c["resources"] = res
    return c


def new_deployment(spec: DeploySpec, namespace: str, cause: str) -> JSON:
    """The Deployment ``deploy`` creates. The selector is fixed here, once: a selector never changes."""
    labels = {NAME_LABEL: spec.name, **(spec.labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": spec.name,
            "namespace": namespace,
            "labels": {**labels, MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {CHANGE_CAUSE_ANNOTATION: cause},
        },
        "spec": {
            "replicas": 1 if spec.replicas is None else spec.replicas,
            "selector": {"matchLabels": {NAME_LABEL: spec.name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [_container(spec, None)]},
            },
        },
    }


def main_container_index(template: Mapping[str, Any], name: str) -> int:
    """Which container ``deploy`` updates: the one named like the Deployment, or the only one."""
    containers = spec_of(template).get("containers") or []
    for i, c in enumerate(containers):
        if isinstance(c, dict) and c.get("name") == name:
            return i
    if len(containers) == 1:
        return 0
    names = ", ".join(str(c.get("name")) for c in containers if isinstance(c, dict)) or "none"
    raise ToolError(
        f"deployment {name!r} has no container named {name!r} and more than one container ({names}); "
        "deploy only updates a Deployment's main container",
        code="failed_precondition", rule="ambiguous-container",
    )


def updated_deployment(current: Mapping[str, Any], spec: DeploySpec) -> JSON:
    """``current`` with the requested fields applied: image/env/ports/resources of the main container,
    labels added to the Deployment and its template, replicas. The selector is never touched."""
    new: JSON = copy.deepcopy(dict(current))
    new_spec = new.setdefault("spec", {})
    template = strip_hash(new_spec.get("template"))
    i = main_container_index(template, spec.name)
    template["spec"]["containers"][i] = _container(spec, template["spec"]["containers"][i])
    if spec.labels:
        template.setdefault("metadata", {}).setdefault("labels", {}).update(spec.labels)
        new.setdefault("metadata", {}).setdefault("labels", {}).update(spec.labels)
    new_spec["template"] = template
    if spec.replicas is not None:
        new_spec["replicas"] = spec.replicas
    return new


def deploy_is_noop(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """True when applying the request would change nothing we manage (template, replicas, labels)."""
    return (
        templates_equal(spec_of(current).get("template"), spec_of(desired).get("template"))
        and spec_of(current).get("replicas") == spec_of(desired).get("replicas")
        and (meta(current).get("labels") or {}) == (meta(desired).get("labels") or {})
    )


def update_patch(current: Mapping[str, Any], desired: Mapping[str, Any], cause: str) -> list[JSON]:
    """One JSON Patch from ``current`` to ``desired`` on the fields deploy manages, guarded on what it read.

    The template is replaced whole (it was computed from the template we read, so nothing is lost)
    and the change-cause set on the Deployment, which the controller copies to the new ReplicaSet.
    The guard tests ``metadata.generation`` (bumped by any spec or annotation change, never by
    status writes), and the labels when they are rewritten (label text is the same in any JSON).
    """
    labels_change = (meta(current).get("labels") or {}) != (meta(desired).get("labels") or {})
    ops: list[JSON] = [
        *guard(current, "/metadata/generation", *(["/metadata/labels"] if labels_change else [])),
        {"op": "replace", "path": "/spec/template", "value": spec_of(desired).get("template")},
    ]
    if spec_of(desired).get("replicas") != spec_of(current).get("replicas"):
        ops.append({"op": "add", "path": "/spec/replicas", "value": spec_of(desired).get("replicas")})
    if labels_change:
        ops.append({"op": "add", "path": "/metadata/labels", "value": meta(desired).get("labels") or {}})
    if meta(current).get("annotations"):
        ops.append({"op": "add", "path": f"/metadata/annotations/{pointer(CHANGE_CAUSE_ANNOTATION)}",
                    "value": cause})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {CHANGE_CAUSE_ANNOTATION: cause}})
    return ops


# --------------------------------------------------------------------------- diff


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
    normalized = _normalize(rest)
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


def rollout_progress(desired: int, replicas: int, updated: int, available: int) -> tuple[float, float]:
    """(progress, total) of a rollout in three steps per replica: updated, available, old one gone.

    Monotone as a rolling update advances, and equal to total only when kubectl would say done.
    """
    total = 3 * max(desired, 1)
    pending_old = max(replicas - updated, 0)
    value = min(updated, desired) + min(available, updated, desired) + max(desired - pending_old, 0)
    if desired == 0:
        value = 3 if replicas == 0 else 0
    return float(min(value, total)), float(total)


def env_names(obj: Mapping[str, Any] | None, name: str) -> list[str]:
    """Env var names of the Deployment's main container (as ``deploy`` picks it); never the values."""
    template = spec_of(obj).get("template") or {}
    containers = spec_of(template).get("containers") or []
    try:
        container = containers[main_container_index(template, name)]
    except (ToolError, IndexError):
        return []
    return [str(e.get("name")) for e in container.get("env") or [] if isinstance(e, dict)]


# --------------------------------------------------------------------------- rollout status


@dataclass(frozen=True)
class RolloutState:
    summary: str
    done: bool
    failed: bool


def rollout_state(deployment: Mapping[str, Any]) -> RolloutState:
    """kubectl's ``rollout status`` verdict for a Deployment (DeploymentStatusViewer), as one line."""
    name = meta(deployment).get("name", "")
    spec, status = spec_of(deployment), status_of(deployment)
    generation = int(meta(deployment).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    if generation > observed:
        return RolloutState("Waiting for deployment spec update to be observed...", False, False)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return RolloutState(f'deployment "{name}" exceeded its progress deadline', False, True)
    desired = spec.get("replicas")
    updated = int(status.get("updatedReplicas") or 0)
    replicas = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    if desired is not None and updated < int(desired):
        return RolloutState(f"{waiting}{updated} out of {desired} new replicas have been updated...", False, False)
    if replicas > updated:
        return RolloutState(f"{waiting}{replicas - updated} old replicas are pending termination...", False, False)
    if available < updated:
        return RolloutState(f"{waiting}{available} of {updated} updated replicas are available...", False, False)
    return RolloutState(f'deployment "{name}" successfully rolled out', True, False)


# --------------------------------------------------------------------------- pagination

PAGE_BUDGET_BYTES: Final = 4096


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON, the unit of the page budget."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode())


def fit_page(sizes: Sequence[int], budget: int = PAGE_BUDGET_BYTES) -> int:
    """How many leading items fit in ``budget`` bytes (one comma between items); always at least one.

    At least one, so a single oversized row still makes progress instead of an empty page forever.
    """
    used = 0
    for count, size in enumerate(sizes):
        cost = size + (1 if count else 0)
        if count and used + cost > budget:
            return count
        used += cost
    return len(sizes)


_CURSOR_VERSION: Final = 1
CURSOR_MAX: Final = 1024


def encode_cursor(namespace: str, kind: str | None, after: str) -> str:
    """An opaque cursor: resume after object ``after`` in this namespace and kind filter."""
    body = json.dumps({"v": _CURSOR_VERSION, "ns": namespace, "k": kind, "a": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, namespace: str, kind: str | None) -> str:
    """The name to resume after. A cursor that is malformed, or from another listing, is refused."""

    def bad(why: str) -> ToolError:
        return ToolError(f"invalid cursor: {why}; pass next_cursor exactly as returned, or omit it to start over",
                         code="invalid_arguments", field="cursor", rule="invalid-cursor")

    if len(cursor) > CURSOR_MAX:
        raise bad("too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad("not a cursor from list_workloads") from None
    if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION or not isinstance(data.get("a"), str):
        raise bad("not a cursor from list_workloads")
    if data.get("ns") != namespace or data.get("k") != kind:
        raise bad("it belongs to a listing of another namespace or kind")
    after: str = data["a"]
    return after


__all__ = [
    "CHANGE_CAUSE_ANNOTATION",
    "DNS1123_LABEL_PATTERN",
    "DNS1123_SUBDOMAIN_PATTERN",
    "HASH_LABEL",
    "NAME_LABEL",
    "PAGE_BUDGET_BYTES",
    "REVISION_ANNOTATION",
    "DeploySpec",
    "FieldChange",
    "RolloutState",
    "change_cause",
    "choose_rollback_revision",
    "decode_cursor",
    "deploy_is_noop",
    "deployment_view",
    "diff_deployments",
    "diff_views",
    "dns1123_problem",
    "encode_cursor",
    "env_name_problem",
    "fit_page",
    "image_problem",
    "image_registry",
    "images_of",
    "json_size",
    "label_key_problem",
    "label_value_problem",
    "new_deployment",
    "owned_by",
    "parse_quantity",
    "revision_of",
    "rollback_annotations",
    "rollback_patch",
    "rollout_progress",
    "rollout_state",
    "selector_string",
    "strip_hash",
    "templates_equal",
    "update_patch",
    "updated_deployment",
]
