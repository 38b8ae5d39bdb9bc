"""The table of resource types the sandbox serves.

Everything the HTTP edge, discovery, the store and the table printer need to
know about a kind lives in one ``ResourceType`` record, so a custom resource
(KServe's InferenceService, say) is added with one ``register_resource`` call:
group, version, plural, kind, scope, short names, subresources, defaulting,
validation and printer columns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import Cause

JSON = dict[str, Any]

ALL_VERBS: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

#: Strategic-merge-patch keys of the built-in types we serve: list field name -> merge key.
#: Lists not named here are replaced whole, as for atomic lists in the real schema.
POD_MERGE_KEYS: Mapping[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
}

#: Lists of scalars merged as sets by strategic merge patch.
PRIMITIVE_MERGE_LISTS: frozenset[str] = frozenset({"finalizers"})


@dataclass(frozen=True)
class Column:
    """A printer column of the ``meta.k8s.io`` Table form (``kubectl get``)."""

    name: str
    type: str
    cell: Callable[[JSON], Any]
    description: str = ""
    priority: int = 0
    format: str = ""

    def definition(self) -> JSON:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


def _get_path(obj: JSON, path: tuple[str, ...]) -> Any:
    cur: Any = obj
    for part in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _set_path(obj: JSON, path: tuple[str, ...], value: Any) -> None:
    cur = obj
    for part in path[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[path[-1]] = value


@dataclass(frozen=True)
class ScaleSubresource:
    """Where the ``scale`` subresource finds replicas and the selector (as in a CRD's ``scale`` block)."""

    selector: Callable[[JSON], str]
    spec_replicas_path: tuple[str, ...] = ("spec", "replicas")
    status_replicas_path: tuple[str, ...] = ("status", "replicas")

    def spec_replicas(self, obj: JSON) -> int:
        value = _get_path(obj, self.spec_replicas_path)
        return value if isinstance(value, int) else 0

    def status_replicas(self, obj: JSON) -> int:
        value = _get_path(obj, self.status_replicas_path)
        return value if isinstance(value, int) else 0

    def set_spec_replicas(self, obj: JSON, replicas: int) -> None:
        _set_path(obj, self.spec_replicas_path, replicas)


Defaulter = Callable[[JSON], None]
"""Fills defaults in place (called on a private copy)."""

Validator = Callable[[JSON, JSON | None], list[Cause]]
"""``(new, old)`` -> the invalid fields; ``old`` is None on create."""


@dataclass(frozen=True)
class ResourceType:
    """One served resource: its REST coordinates and the per-kind behaviour."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    list_kind: str = ""
    verbs: tuple[str, ...] = ALL_VERBS
    status_subresource: bool = False
    scale: ScaleSubresource | None = None
    #: Paths whose change bumps ``metadata.generation`` (Deployments add annotations).
    generation_paths: tuple[tuple[str, ...], ...] = (("spec",),)
    #: Merge keys for strategic merge patch; None means "not supported" (415), as for custom resources.
    merge_keys: Mapping[str, str] | None = None
    defaulter: Defaulter | None = None
    validator: Validator | None = None
    #: Printer columns after NAME (NAME is first unless ``name_column`` is off); empty means NAME and AGE.
    columns: tuple[Column, ...] = ()
    #: Whether the Table starts with NAME (Events do not: LAST SEEN TYPE REASON OBJECT MESSAGE).
    name_column: bool = True
    #: Extra field selectors besides metadata.name / metadata.namespace.
    field_selectors: Mapping[str, Callable[[JSON], str]] = field(default_factory=dict)
    #: Whether a delete answers with the object (namespaces) or a Success Status (most kinds).
    delete_returns_object: bool = False
    #: Keep at most this many objects, dropping the oldest (Events; a real server expires them by TTL). 0: no cap.
    max_objects: int = 0
    #: The kind's OpenAPI v3 schema (a CRD's ``openAPIV3Schema``); None: from the kubernetes client's models.
    schema: Callable[[], JSON] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def list_kind_name(self) -> str:
        return self.list_kind or f"{self.kind}List"

    @property
    def key(self) -> str:
        """Store key prefix: one namespace of names per group and plural."""
        return f"{self.group}/{self.plural}"

    def discovery_entries(self) -> list[JSON]:
        """The ``APIResourceList`` entries: the resource and each subresource as its own entry."""
        main: JSON = {
            "name": self.plural,
            "singularName": self.singular_name,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        entries = [main]
        if self.scale is not None:
            entries.append(
                {
                    "name": f"{self.plural}/scale",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }
            )
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        return entries


class ResourceRegistry:
    """Thread-safe set of served types, looked up by REST path or by apiVersion/kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: dict[tuple[str, str, str], ResourceType] = {}

    def register(self, rt: ResourceType) -> None:
        with self._lock:
            self._types[(rt.group, rt.version, rt.plural)] = rt

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        with self._lock:
            return self._types.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        with self._lock:
            for rt in self._types.values():
                if rt.api_version == api_version and rt.kind == kind:
                    return rt
        return None

    def all(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    def group_versions(self) -> dict[str, list[str]]:
        """group -> versions served, in registration order (core group is ``""``)."""
        out: dict[str, list[str]] = {}
        for rt in self.all():
            versions = out.setdefault(rt.group, [])
            if rt.version not in versions:
                versions.append(rt.version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self.all() if rt.group == group and rt.version == version]
