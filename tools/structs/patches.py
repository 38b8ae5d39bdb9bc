"""JSON Patches (RFC 6902) opsgate sends for Deployments: guards, rollback and deploy, as kubectl builds them."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ToolError
from .objects import (
    CHANGE_CAUSE_ANNOTATION,
    JSON,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    ROLLBACK_KEPT_ANNOTATIONS,
    meta,
    spec_of,
)
from .templates import strip_hash, templates_equal

# --------------------------------------------------------------------------- guards


def pointer(key: str) -> str:
    """One JSON-pointer reference token (RFC 6901): ``~`` and ``/`` escaped."""
    return key.replace("~", "~0").replace("/", "~1")


def _at(obj: Any, path: str) -> tuple[bool, Any]:
    cur = obj
    for token in path.split("/")[1:]:
        key = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(cur, dict) or key not in cur:
            return False, None
        cur = cur[key]
    return True, cur


def guard(obj: Mapping[str, Any], *paths: str) -> list[JSON]:
    """JSON Patch ``test`` operations: the write applies only while ``obj``'s values at ``paths`` still hold. Pure.

    Guard with what the write was computed from, never the whole object's resourceVersion: a
    controller's status writes change that constantly, so a spec write guarded by it keeps losing
    (issue 15 item 12). Values are scalars (``metadata.generation``, replica counts, digit
    strings) or label maps, whose JSON text is the same from Python and Go: the API server's
    JSON Patch compares leaves byte by byte. A path the object lacks cannot be tested
    portably, so the guard falls back to the resourceVersion read.
    """
    ops: list[JSON] = []
    for path in paths:
        found, value = _at(obj, path)
        if not found:
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            return [{"op": "replace", "path": "/metadata/resourceVersion", "value": rv}]
        ops.append({"op": "test", "path": path, "value": value})
    return ops


def guard_broken(fresh: Mapping[str, Any], ops: list[JSON]) -> bool:
    """Would the guards among ``ops`` fail against ``fresh``? Pure.

    The API server answers a failed ``test`` with a bare 422 ("the server rejected our request due
    to an error in our request", no causes: the patch library's text is dropped), the same answer
    as any other patch that does not apply. A fresh read tells a guard that no longer holds apart.
    """
    for op in ops:
        if op.get("op") == "test":
            found, value = _at(fresh, str(op["path"]))
            if not found or value != op.get("value"):
                return True
        elif (op.get("op"), op.get("path")) == ("replace", "/metadata/resourceVersion") and (
                fresh.get("metadata") or {}).get("resourceVersion") != op.get("value"):
            return True
    return False


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
