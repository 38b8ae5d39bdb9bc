"""Kinds a deployment applies besides workloads: ServiceAccount, ConfigMap, Secret, ClusterRole,
ClusterRoleBinding, Role, RoleBinding, PodDisruptionBudget.

Served so ``kubectl apply --server-side --dry-run=server`` of a real install (opsgate's own
``deploy/``) is checked here as a cluster would check it: the group, version and scope of each
kind, and the validation essentials that turn a wrong manifest into the API server's 422
(``k8s.io/kubernetes/pkg/apis/{core,rbac,policy}/validation``): ConfigMap and Secret keys, Secret
data that is not base64, an RBAC rule without verbs, resources or API groups, a binding whose
``roleRef`` is missing, of the wrong kind or changed, a subject of an unknown kind or a
ServiceAccount subject without a namespace, a PodDisruptionBudget with both ``minAvailable``
and ``maxUnavailable``. Nothing acts on them (no token controller, no RBAC from these objects:
``impersonation.py`` holds the sandbox's own small RBAC), as nothing routes to a Service.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from .errors import Cause
from .kinds import _dict, _path, _spec, _status
from .resources import POD_MERGE_KEYS, Column, ResourceType
from .selectors import selector_string
from .tables import AGE_COLUMN
from .validation import immutable, invalid_value, labels, not_supported, object_meta, required

JSON = dict[str, Any]

_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_CONFIG_KEY_MSG = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  " \
    "or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
RBAC_GROUP = "rbac.authorization.k8s.io"


def _config_keys(path: str, data: Any, seen: set[str], *, base64_values: bool) -> list[Cause]:
    if data is None:
        return []
    if not isinstance(data, dict):
        return [invalid_value(path, data, "must be a map of strings")]
    causes: list[Cause] = []
    for key, value in data.items():
        if len(key) > 253 or not _CONFIG_KEY.fullmatch(key):
            causes.append(invalid_value(f"{path}[{key}]", key, _CONFIG_KEY_MSG))
        if key in seen:
            causes.append(invalid_value(f"{path}[{key}]", key, "duplicate of key present in data or binaryData"))
        seen.add(key)
        if not isinstance(value, str):
            causes.append(invalid_value(f"{path}[{key}]", value, "must be a string"))
        elif base64_values:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                causes.append(invalid_value(f"{path}[{key}]", "<value omitted>", "illegal base64 data"))
    return causes


def configmap(obj: JSON, old: JSON | None) -> list[Cause]:
    seen: set[str] = set()
    causes = object_meta(obj)
    causes += _config_keys("data", obj.get("data"), seen, base64_values=False)
    causes += _config_keys("binaryData", obj.get("binaryData"), seen, base64_values=True)
    if old is not None and old.get("immutable") is True:
        causes += immutable("data", obj.get("data"), old.get("data"))
        if obj.get("immutable") is not True:
            causes.append(invalid_value("immutable", obj.get("immutable"),
                                        "field is immutable when `immutable` is set"))
    return causes


def default_secret(obj: JSON) -> None:
    """``type`` Opaque; ``stringData`` written into ``data`` (base64) and dropped, as the API server stores it."""
    obj.setdefault("type", "Opaque")
    strings = obj.pop("stringData", None)
    if isinstance(strings, dict):
        data = _dict(obj, "data")
        for key, value in strings.items():
            if isinstance(value, str):
                data[key] = base64.b64encode(value.encode()).decode()


def secret(obj: JSON, old: JSON | None) -> list[Cause]:
    causes = object_meta(obj)
    causes += _config_keys("data", obj.get("data"), set(), base64_values=True)
    if old is not None:
        causes += immutable("type", obj.get("type"), old.get("type"))
    return causes


def serviceaccount(obj: JSON, old: JSON | None) -> list[Cause]:
    return object_meta(obj)


def _rbac_name(obj: JSON) -> list[Cause]:
    """RBAC objects take any path-segment name (``system:aggregate-to-view``), not a DNS subdomain."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return [required("metadata.name")]
    if name in (".", "..") or "/" in name or "%" in name:
        return [invalid_value("metadata.name", name, "may not be '.' or '..' and may not contain '/' or '%'")]
    return labels("metadata.labels", meta.get("labels"))


def _rules(obj: JSON, *, cluster: bool) -> list[Cause]:
    rules = obj.get("rules")
    if rules is None:
        return []
    if not isinstance(rules, list):
        return [invalid_value("rules", rules, "must be a list")]
    causes: list[Cause] = []
    for i, rule in enumerate(rules):
        path = f"rules[{i}]"
        if not isinstance(rule, dict):
            causes.append(invalid_value(path, rule, "must be an object"))
            continue
        if not rule.get("verbs"):
            causes.append(required_because(f"{path}.verbs", "verbs must contain at least one value"))
        if rule.get("nonResourceURLs"):
            if not cluster:
                causes.append(invalid_value(f"{path}.nonResourceURLs", rule["nonResourceURLs"],
                                            "namespaced rules cannot apply to non-resource URLs"))
            if rule.get("apiGroups") or rule.get("resources"):
                causes.append(invalid_value(f"{path}.nonResourceURLs", rule["nonResourceURLs"],
                                            "rules cannot apply to both regular resources and non-resource URLs"))
            continue
        if not rule.get("apiGroups"):
            causes.append(required_because(f"{path}.apiGroups", "resource rules must supply at least one api group"))
        if not rule.get("resources"):
            causes.append(required_because(f"{path}.resources", "resource rules must supply at least one resource"))
    return causes


def required_because(path: str, why: str) -> Cause:
    """field.Required with its detail, as RBAC validation words it."""
    return Cause(path, f"Required value: {why}", "FieldValueRequired")


def clusterrole(obj: JSON, old: JSON | None) -> list[Cause]:
    return _rbac_name(obj) + _rules(obj, cluster=True)


def role(obj: JSON, old: JSON | None) -> list[Cause]:
    return _rbac_name(obj) + _rules(obj, cluster=False)


def _binding(obj: JSON, old: JSON | None, *, kinds: tuple[str, ...]) -> list[Cause]:
    causes = _rbac_name(obj)
    ref = obj.get("roleRef")
    if not isinstance(ref, dict):
        causes.append(required("roleRef"))
    else:
        if ref.get("apiGroup") != RBAC_GROUP:
            causes.append(not_supported("roleRef.apiGroup", ref.get("apiGroup"), [RBAC_GROUP]))
        if ref.get("kind") not in kinds:
            causes.append(not_supported("roleRef.kind", ref.get("kind"), list(kinds)))
        if not ref.get("name"):
            causes.append(required("roleRef.name"))
    if old is not None and ref != old.get("roleRef"):
        causes.append(invalid_value("roleRef", ref, "cannot change roleRef"))
    for i, subject in enumerate(obj.get("subjects") or []):
        path = f"subjects[{i}]"
        if not isinstance(subject, dict):
            causes.append(invalid_value(path, subject, "must be an object"))
            continue
        kind = subject.get("kind")
        if not subject.get("name"):
            causes.append(required(f"{path}.name"))
        if kind == "ServiceAccount":
            if subject.get("apiGroup"):
                causes.append(not_supported(f"{path}.apiGroup", subject["apiGroup"], [""]))
            if not subject.get("namespace"):
                causes.append(required(f"{path}.namespace"))
        elif kind in ("User", "Group"):
            if subject.get("apiGroup") != RBAC_GROUP:
                causes.append(not_supported(f"{path}.apiGroup", subject.get("apiGroup"), [RBAC_GROUP]))
        else:
            causes.append(not_supported(f"{path}.kind", kind, ["ServiceAccount", "User", "Group"]))
    return causes


def clusterrolebinding(obj: JSON, old: JSON | None) -> list[Cause]:
    return _binding(obj, old, kinds=("ClusterRole",))


def rolebinding(obj: JSON, old: JSON | None) -> list[Cause]:
    return _binding(obj, old, kinds=("Role", "ClusterRole"))


def _int_or_percent(path: str, value: Any) -> list[Cause]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [] if value >= 0 else [invalid_value(path, value, "must be greater than or equal to 0")]
    if isinstance(value, str) and re.fullmatch(r"[0-9]+%", value) and int(value[:-1]) <= 100:
        return []
    return [invalid_value(path, value, "must be an integer or percentage (e.g '5%')")]


def poddisruptionbudget(obj: JSON, old: JSON | None) -> list[Cause]:
    causes = object_meta(obj)
    spec = obj.get("spec") or {}
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        causes.append(invalid_value("spec", spec, "minAvailable and maxUnavailable cannot be both set"))
    causes += _int_or_percent("spec.minAvailable", spec.get("minAvailable"))
    causes += _int_or_percent("spec.maxUnavailable", spec.get("maxUnavailable"))
    policy = spec.get("unhealthyPodEvictionPolicy")
    if policy is not None and policy not in ("IfHealthyBudget", "AlwaysAllow"):
        causes.append(not_supported("spec.unhealthyPodEvictionPolicy", policy, ["IfHealthyBudget", "AlwaysAllow"]))
    return causes


def _data_count(o: JSON) -> int:
    return len(o.get("data") or {}) + len(o.get("binaryData") or {})


_NO_GENERATION: tuple[tuple[str, ...], ...] = ()

SERVICE_ACCOUNT = ResourceType(
    group="", version="v1", plural="serviceaccounts", kind="ServiceAccount", short_names=("sa",),
    generation_paths=_NO_GENERATION, merge_keys={**POD_MERGE_KEYS, "secrets": "name"}, validator=serviceaccount,
    columns=(Column("Secrets", "string", lambda o: len(o.get("secrets") or []), "Secrets of the account."),
             AGE_COLUMN),
)
CONFIG_MAP = ResourceType(
    group="", version="v1", plural="configmaps", kind="ConfigMap", short_names=("cm",),
    generation_paths=_NO_GENERATION, merge_keys=POD_MERGE_KEYS, validator=configmap,
    columns=(Column("Data", "integer", _data_count, "Number of keys."), AGE_COLUMN),
)
SECRET = ResourceType(
    group="", version="v1", plural="secrets", kind="Secret", generation_paths=_NO_GENERATION,
    merge_keys=POD_MERGE_KEYS, defaulter=default_secret, validator=secret,
    columns=(Column("Type", "string", _path("type"), "The type of the secret."),
             Column("Data", "integer", _data_count, "Number of keys."), AGE_COLUMN),
    field_selectors={"type": _path("type")},
)
CLUSTER_ROLE = ResourceType(
    group="rbac.authorization.k8s.io", version="v1", plural="clusterroles", kind="ClusterRole", namespaced=False,
    generation_paths=_NO_GENERATION, merge_keys=POD_MERGE_KEYS, validator=clusterrole,
    columns=(Column("Created At", "string", lambda o: (o.get("metadata") or {}).get("creationTimestamp", ""),
                    "When it was created."),),
)
CLUSTER_ROLE_BINDING = ResourceType(
    group="rbac.authorization.k8s.io", version="v1", plural="clusterrolebindings", kind="ClusterRoleBinding",
    namespaced=False, generation_paths=_NO_GENERATION, merge_keys=POD_MERGE_KEYS, validator=clusterrolebinding,
    columns=(Column("Role", "string", lambda o: f"ClusterRole/{(o.get('roleRef') or {}).get('name', '')}",
                    "The role it grants."), AGE_COLUMN),
)
ROLE = ResourceType(
    group="rbac.authorization.k8s.io", version="v1", plural="roles", kind="Role",
    generation_paths=_NO_GENERATION, merge_keys=POD_MERGE_KEYS, validator=role,
)
ROLE_BINDING = ResourceType(
    group="rbac.authorization.k8s.io", version="v1", plural="rolebindings", kind="RoleBinding",
    generation_paths=_NO_GENERATION, merge_keys=POD_MERGE_KEYS, validator=rolebinding,
    columns=(Column("Role", "string", lambda o: f"{_path('roleRef', 'kind')(o)}/{_path('roleRef', 'name')(o)}",
                    "The role it grants."), AGE_COLUMN),
)
POD_DISRUPTION_BUDGET = ResourceType(
    group="policy", version="v1", plural="poddisruptionbudgets", kind="PodDisruptionBudget", short_names=("pdb",),
    status_subresource=True, merge_keys=POD_MERGE_KEYS, validator=poddisruptionbudget,
    columns=(Column("Min Available", "string", lambda o: str(_spec(o).get("minAvailable", "N/A")), ""),
             Column("Max Unavailable", "string", lambda o: str(_spec(o).get("maxUnavailable", "N/A")), ""),
             Column("Allowed Disruptions", "integer", lambda o: _status(o).get("disruptionsAllowed", 0), ""),
             AGE_COLUMN,
             Column("Selector", "string", lambda o: selector_string(_spec(o).get("selector")), "", priority=1)),
)

CONFIG_TYPES: tuple[ResourceType, ...] = (
    SERVICE_ACCOUNT, CONFIG_MAP, SECRET, CLUSTER_ROLE, CLUSTER_ROLE_BINDING, ROLE, ROLE_BINDING, POD_DISRUPTION_BUDGET,
)
