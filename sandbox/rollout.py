"""The Deployment controller's decisions, as pure functions.

These mirror ``pkg/controller/deployment/util`` of kube-controller-manager:
the pod-template hash, which ReplicaSet is "new", which revision it gets
(max + 1; a reused old template is renumbered and its old number kept in
``revision-history``), which annotations are copied, the Deployment status
and its ``Progressing``/``Available`` conditions, and which old ReplicaSets
``revisionHistoryLimit`` prunes.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

JSON = dict[str, Any]

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
CHANGE_CAUSE = "kubernetes.io/change-cause"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MAX_REVISION_HISTORY_CHARS = 2000

#: Deployment annotations never copied onto its ReplicaSets (as ``skipCopyAnnotation``).
SKIPPED_ANNOTATIONS = frozenset(
    {LAST_APPLIED, REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS, "deprecated.deployment.rollback.to"}
)

_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def strip_hash(template: JSON | None) -> JSON:
    """The template without the ``pod-template-hash`` label (and without an emptied label map)."""
    out = copy.deepcopy(template or {})
    meta = out.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("labels"), dict):
        meta["labels"].pop(HASH_LABEL, None)
        if not meta["labels"]:
            del meta["labels"]
    return out


def template_hash(template: JSON | None, collision_count: int = 0) -> str:
    """Stable short hash of the canonical template, shaped like ``ComputeHash`` (FNV-32a, safe-encoded)."""
    canonical = json.dumps(strip_hash(template), sort_keys=True, separators=(",", ":"))
    value = _fnv32a(canonical.encode() + (str(collision_count).encode() if collision_count else b""))
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in str(value).encode())


def equal_ignore_hash(a: JSON | None, b: JSON | None) -> bool:
    return strip_hash(a) == strip_hash(b)


def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def revision(obj: JSON) -> int:
    value = (_meta(obj).get("annotations") or {}).get(REVISION, "")
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def max_revision(replicasets: list[JSON]) -> int:
    return max((revision(rs) for rs in replicasets), default=0)


def find_new_replicaset(deployment: JSON, replicasets: list[JSON]) -> JSON | None:
    """The ReplicaSet whose template equals the Deployment's, ignoring the hash label (oldest first)."""
    template = (deployment.get("spec") or {}).get("template")
    matches = [rs for rs in replicasets if equal_ignore_hash((rs.get("spec") or {}).get("template"), template)]
    matches.sort(key=lambda rs: (_meta(rs).get("creationTimestamp") or "", _meta(rs).get("name") or ""))
    return matches[0] if matches else None


def resolve_fraction(value: Any, total: int, *, round_up: bool) -> int:
    """An int-or-percent field (``maxSurge: 25%``) against ``total``."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.endswith("%"):
        try:
            fraction = int(value[:-1]) * total / 100
        except ValueError:
            return 0
        return math.ceil(fraction) if round_up else math.floor(fraction)
    return 0


def surge_and_unavailable(deployment: JSON) -> tuple[int, int]:
    """``(maxSurge, maxUnavailable)`` as the controller resolves them (never both zero)."""
    spec = deployment.get("spec") or {}
    desired = int(spec.get("replicas") or 0)
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return 0, 0
    rolling = strategy.get("rollingUpdate") or {}
    surge = resolve_fraction(rolling.get("maxSurge", "25%"), desired, round_up=True)
    unavailable = resolve_fraction(rolling.get("maxUnavailable", "25%"), desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, desired)


def new_replicaset_annotations(deployment: JSON, rs: JSON, new_revision: int) -> dict[str, str]:
    """Annotations the new/reused ReplicaSet must carry (``SetNewReplicaSetAnnotations``)."""
    annotations = dict(_meta(rs).get("annotations") or {})
    for key, value in (_meta(deployment).get("annotations") or {}).items():
        if key not in SKIPPED_ANNOTATIONS:
            annotations[key] = value
    old = annotations.get(REVISION, "")
    try:
        old_number = int(old)
    except ValueError:
        old_number = 0
    if old_number < new_revision:
        annotations[REVISION] = str(new_revision)
        if old:
            history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
            history.append(old)
            while history and len(",".join(history)) > MAX_REVISION_HISTORY_CHARS:
                history.pop(0)
            annotations[REVISION_HISTORY] = ",".join(history)
    spec = deployment.get("spec") or {}
    desired = int(spec.get("replicas") or 0)
    surge, _ = surge_and_unavailable(deployment)
    annotations[DESIRED_REPLICAS] = str(desired)
    annotations[MAX_REPLICAS] = str(desired + surge)
    return annotations


def replicasets_to_prune(deployment: JSON, old_replicasets: list[JSON]) -> list[JSON]:
    """Oldest zero-replica old ReplicaSets beyond ``revisionHistoryLimit`` (default 10)."""
    limit = (deployment.get("spec") or {}).get("revisionHistoryLimit")
    limit = 10 if not isinstance(limit, int) else limit
    idle = [
        rs
        for rs in old_replicasets
        if int((rs.get("spec") or {}).get("replicas") or 0) == 0
        and int((rs.get("status") or {}).get("replicas") or 0) == 0
        and not _meta(rs).get("deletionTimestamp")
    ]
    excess = len(idle) - limit
    if excess <= 0:
        return []
    idle.sort(key=lambda rs: (revision(rs), _meta(rs).get("creationTimestamp") or ""))
    return idle[:excess]


def _count(rs: JSON | None, field: str) -> int:
    if rs is None:
        return 0
    return int((rs.get("status") or {}).get(field) or 0)


def _set_condition(conditions: list[JSON], cond: JSON, now: str) -> list[JSON]:
    """``SetDeploymentCondition``: same status and reason is a no-op; same status keeps the transition time."""
    current = next((c for c in conditions if c.get("type") == cond["type"]), None)
    if current is not None and current.get("status") == cond["status"] and current.get("reason") == cond["reason"]:
        return conditions
    new = dict(cond, lastUpdateTime=now, lastTransitionTime=now)
    if current is not None and current.get("status") == cond["status"]:
        new["lastTransitionTime"] = current.get("lastTransitionTime", now)
    return [c for c in conditions if c.get("type") != cond["type"]] + [new]


def deployment_complete(deployment: JSON, status: JSON) -> bool:
    desired = int((deployment.get("spec") or {}).get("replicas") or 0)
    return (
        int(status.get("updatedReplicas") or 0) == desired
        and int(status.get("replicas") or 0) == desired
        and int(status.get("availableReplicas") or 0) == desired
        and int(status.get("observedGeneration") or 0) >= int(_meta(deployment).get("generation") or 0)
    )


def deployment_status(
    deployment: JSON,
    new_rs: JSON | None,
    all_rs: list[JSON],
    *,
    now: str,
    created_new: bool = False,
) -> JSON:
    """``calculateStatus`` + ``syncRolloutStatus``: counts, observedGeneration and conditions."""
    spec = deployment.get("spec") or {}
    old_status = deployment.get("status") or {}
    desired = int(spec.get("replicas") or 0)
    available = sum(_count(rs, "availableReplicas") for rs in all_rs)
    total_spec = sum(int((rs.get("spec") or {}).get("replicas") or 0) for rs in all_rs)
    counts = {
        "replicas": sum(_count(rs, "replicas") for rs in all_rs),
        "updatedReplicas": _count(new_rs, "replicas"),
        "readyReplicas": sum(_count(rs, "readyReplicas") for rs in all_rs),
        "availableReplicas": available,
        "unavailableReplicas": max(total_spec - available, 0),
    }
    status: JSON = {"observedGeneration": int(_meta(deployment).get("generation") or 0)}
    status.update({k: v for k, v in counts.items() if v})
    if "collisionCount" in old_status:
        status["collisionCount"] = old_status["collisionCount"]
    conditions: list[JSON] = copy.deepcopy(old_status.get("conditions") or [])
    _, max_unavailable = surge_and_unavailable(deployment)
    if available >= desired - max_unavailable:
        avail = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "message": "Deployment has minimum availability."}
    else:
        avail = {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                 "message": "Deployment does not have minimum availability."}
    conditions = _set_condition(conditions, avail, now)
    rs_name = _meta(new_rs).get("name", "") if new_rs else ""
    progressing = next((c for c in conditions if c.get("type") == "Progressing"), None)
    progress: JSON | None = None
    if spec.get("paused"):
        progress = {"type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused",
                    "message": "Deployment is paused"}
    elif progressing is not None and progressing.get("reason") == "DeploymentPaused":
        progress = {"type": "Progressing", "status": "Unknown", "reason": "DeploymentResumed",
                    "message": "Deployment is resumed"}
    elif new_rs is not None and deployment_complete(deployment, status):
        progress = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                    "message": f'ReplicaSet "{rs_name}" has successfully progressed.'}
    elif created_new:
        progress = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated",
                    "message": f'Created new replica set "{rs_name}"'}
    elif new_rs is not None and any(counts[k] != int(old_status.get(k) or 0) for k in counts):
        progress = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                    "message": f'ReplicaSet "{rs_name}" is progressing.'}
    elif new_rs is not None and progressing is None:
        progress = {"type": "Progressing", "status": "True", "reason": "FoundNewReplicaSet",
                    "message": f'Found new replica set "{rs_name}"'}
    if progress is not None:
        conditions = _set_condition(conditions, progress, now)
    order = {"Available": 0, "Progressing": 1}
    status["conditions"] = sorted(conditions, key=lambda c: order.get(str(c.get("type")), 2))
    return status
