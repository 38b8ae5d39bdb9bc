"""Kubernetes object accessors and the labels/annotations opsgate reads and writes on them; pure, on API JSON dicts."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

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


_OPSGATE_CAUSE: Final = re.compile(r"opsgate: \S+ call ([0-9a-f]{8,64})")


def opsgate_call_of(cause: str | None) -> str | None:
    """The audit call id a change-cause :func:`change_cause` wrote names, or None (someone else's cause)."""
    match = _OPSGATE_CAUSE.fullmatch(cause) if cause else None
    return match[1] if match else None


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


def age_seconds(obj: Mapping[str, Any], now: datetime) -> int | None:
    """Seconds since the object was created (its creationTimestamp), or None when it has none."""
    stamp = meta(obj).get("creationTimestamp")
    if not isinstance(stamp, str):
        return None
    try:
        created = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return max(0, int((now - created).total_seconds()))
