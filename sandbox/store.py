"""In-memory object store with the bookkeeping a real API server adds.

One lock guards everything, so each write is atomic and gets the next value
of one global ``resourceVersion`` counter, like etcd's revision. The store
fills ``uid``, ``creationTimestamp``, ``generation`` (bumped when a path in
the type's ``generation_paths`` changes), keeps ``status`` apart from the
main resource when the type has a status subresource, answers 409 on a stale
``resourceVersion``, skips no-op updates (no new resourceVersion, as the API
server does), runs the type's defaulting and validation, deletes dependents
through ``ownerReferences`` (background cascade, synchronous here), and keeps
a bounded log of watch events. ``dry_run`` runs all of that and stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, already_exists, bad_request, conflict, gone, invalid, not_found
from .resources import ResourceRegistry, ResourceType, _get_path
from .selectors import Requirement, labels_match

JSON = dict[str, Any]
Listener = Callable[["WatchEvent"], None]

NAMESPACES_KEY = "/namespaces"
EVENT_LOG_SIZE = 10_000
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def random_suffix(n: int = 5) -> str:
    """The 5-character suffix the API server appends for ``generateName`` (same alphabet)."""
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(n))


@dataclass(frozen=True)
class WatchEvent:
    """A committed change: ``type`` is ADDED, MODIFIED or DELETED; ``prev`` is the object before."""

    rv: int
    type: str
    rt: ResourceType
    obj: JSON
    prev: JSON | None


@dataclass(frozen=True)
class ListResult:
    items: list[JSON]
    resource_version: str
    continue_token: str
    remaining: int


def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
        obj["metadata"] = meta
    return meta


def _strip_rv(obj: JSON) -> JSON:
    out = copy.deepcopy(obj)
    _meta(out).pop("resourceVersion", None)
    return out


class Store:
    """The sandbox's etcd and registry layer: typed, validated, versioned, watchable."""

    def __init__(self, registry: ResourceRegistry) -> None:
        self.registry = registry
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._objects: dict[str, dict[tuple[str, str], JSON]] = {}
        self._rv = 1
        self._events: deque[WatchEvent] = deque(maxlen=EVENT_LOG_SIZE)
        self._compacted_rv = 0
        self._listeners: list[Listener] = []
        self.closed = False

    # --- listeners and watch --------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Called under the store lock after each committed write: must only enqueue."""
        with self._lock:
            self._listeners.append(listener)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def events_after(self, rv: int, timeout: float) -> list[WatchEvent]:
        """Events newer than ``rv``, waiting up to ``timeout`` for one; 410 if ``rv`` was compacted."""
        with self._cond:
            if rv < self._compacted_rv:
                raise gone(f"too old resource version: {rv} ({self._compacted_rv})")
            deadline = time.monotonic() + timeout
            while not self.closed:
                if self._rv > rv:
                    return [e for e in self._events if e.rv > rv]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return []

    def _emit(self, event: WatchEvent) -> None:
        if len(self._events) == self._events.maxlen:
            self._compacted_rv = self._events[0].rv
        self._events.append(event)
        for listener in list(self._listeners):
            listener(event)
        self._cond.notify_all()

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    # --- reads ----------------------------------------------------------------------------

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], JSON]:
        return self._objects.setdefault(rt.key, {})

    def get(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        with self._lock:
            obj = self._bucket(rt).get((namespace if rt.namespaced else "", name))
            if obj is None:
                raise not_found(rt.plural, rt.group, name)
            return copy.deepcopy(obj)

    def find(self, rt: ResourceType, namespace: str, name: str) -> JSON | None:
        try:
            return self.get(rt, namespace, name)
        except ApiError:
            return None

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        labels: list[Requirement] | None = None,
        fields: Callable[[JSON], bool] | None = None,
        limit: int = 0,
        continue_token: str = "",
    ) -> ListResult:
        """Objects in key order (namespace, name), filtered, paged by ``limit``/``continue``."""
        start: tuple[str, str] | None = None
        if continue_token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                start = (str(decoded["k"][0]), str(decoded["k"][1]))
            except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as exc:
                raise bad_request(f"continue key is not valid: {exc}") from exc
        with self._lock:
            rv = self._rv
            matched = [
                copy.deepcopy(obj)
                for key, obj in sorted(self._bucket(rt).items())
                if (namespace is None or key[0] == namespace)
                and (start is None or key > start)
                and labels_match(labels or [], _meta(obj).get("labels"))
                and (fields is None or fields(obj))
            ]
        token = ""
        remaining = 0
        if limit > 0 and len(matched) > limit:
            remaining = len(matched) - limit
            matched = matched[:limit]
            last = _meta(matched[-1])
            payload = json.dumps({"k": [last.get("namespace", ""), last["name"]], "rv": rv})
            token = base64.urlsafe_b64encode(payload.encode()).decode()
        return ListResult(matched, str(rv), token, remaining)

    def owned_by(self, rt: ResourceType, namespace: str, owner_uid: str) -> list[JSON]:
        """Objects of ``rt`` whose ownerReferences name ``owner_uid`` (as kubectl and GC look them up)."""
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self._bucket(rt).items())
                if ns == namespace
                and any(ref.get("uid") == owner_uid for ref in _meta(obj).get("ownerReferences") or [])
            ]

    # --- writes ---------------------------------------------------------------------------

    def _validate(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        if rt.validator is None:
            return
        causes = rt.validator(obj, old)
        if causes:
            meta = _meta(obj)
            raise invalid(rt.kind, rt.group, str(meta.get("name") or meta.get("generateName") or ""), causes)

    def create(self, rt: ResourceType, body: JSON, *, namespace: str = "", dry_run: bool = False,
               managed_fields: list[JSON] | None = None) -> JSON:
        """Create ``body``; 409 AlreadyExists, 404 if the namespace is missing, 422 if invalid.

        ``managed_fields`` is the API edge's ``metadata.managedFields`` (a client's own are dropped)."""
        obj = copy.deepcopy(body)
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        meta = _meta(obj)
        for transient in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "managedFields"):
            meta.pop(transient, None)
        if managed_fields:
            meta["managedFields"] = copy.deepcopy(managed_fields)
        if rt.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{random_suffix()}"
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if rt.status_subresource:
            obj["status"] = {}
        if rt.defaulter is not None:
            rt.defaulter(obj)
        self._validate(rt, obj, None)
        ns = meta.get("namespace", "") if rt.namespaced else ""
        key = (ns, meta["name"])
        with self._lock:
            if rt.namespaced and ns not in self._namespace_names():
                raise not_found("namespaces", "", ns)
            if key in self._bucket(rt):
                raise already_exists(rt.plural, rt.group, meta["name"])
            if dry_run:
                return obj
            meta["resourceVersion"] = str(self._next_rv())
            bucket = self._bucket(rt)
            bucket[key] = copy.deepcopy(obj)
            self._emit(WatchEvent(self._rv, "ADDED", rt, copy.deepcopy(obj), None))
            if rt.max_objects and len(bucket) > rt.max_objects:
                self._remove(rt, next(iter(bucket)), orphan=False)  # dicts keep creation order
            return obj

    def _namespace_names(self) -> list[str]:
        return [name for (_, name) in self._objects.get(NAMESPACES_KEY, {})]

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        mutate: Callable[[JSON], JSON],
        *,
        subresource: str = "",
        dry_run: bool = False,
    ) -> JSON:
        """Read-modify-write under the lock: ``mutate`` gets a copy of the current object.

        A PUT passes a function returning the request body, a PATCH one applying the patch,
        so patches never race. A ``metadata.resourceVersion`` in the result that differs from
        the stored one is a stale write: 409 Conflict.
        """
        with self._lock:
            key = (namespace if rt.namespaced else "", name)
            old = self._bucket(rt).get(key)
            if old is None:
                raise not_found(rt.plural, rt.group, name)
            new = mutate(copy.deepcopy(old))
            if not isinstance(new, dict):
                raise bad_request("the patched or submitted object is not a JSON object")
            new_rv = _meta(new).get("resourceVersion")
            if new_rv not in (None, "") and new_rv != _meta(old)["resourceVersion"]:
                raise conflict(rt.plural, rt.group, name)
            merged = self._merge_update(rt, old, new, subresource)
            if rt.defaulter is not None:
                rt.defaulter(merged)
            self._validate(rt, merged, old)
            if _strip_rv(merged) == _strip_rv(old) or dry_run:
                return merged
            _meta(merged)["resourceVersion"] = str(self._next_rv())
            self._bucket(rt)[key] = copy.deepcopy(merged)
            self._emit(WatchEvent(self._rv, "MODIFIED", rt, copy.deepcopy(merged), copy.deepcopy(old)))
            return merged

    @staticmethod
    def _merge_update(rt: ResourceType, old: JSON, new: JSON, subresource: str) -> JSON:
        """Apply the update strategy: what a main-resource or status write may change."""
        old_meta = _meta(old)
        if subresource == "status":
            # As the apps strategies do: status and annotations from the request, the rest as stored.
            merged = copy.deepcopy(old)
            merged["status"] = copy.deepcopy(new.get("status") or {})
            annotations = _meta(new).get("annotations")
            if annotations:
                _meta(merged)["annotations"] = copy.deepcopy(annotations)
            else:
                _meta(merged).pop("annotations", None)
            if "managedFields" in _meta(new):  # the API edge's record of who wrote the status
                _meta(merged)["managedFields"] = copy.deepcopy(_meta(new)["managedFields"])
            return merged
        merged = copy.deepcopy(new)
        merged["apiVersion"] = rt.api_version
        merged["kind"] = rt.kind
        meta = _meta(merged)
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        if rt.status_subresource:
            if "status" in old:
                merged["status"] = copy.deepcopy(old["status"])
            else:
                merged.pop("status", None)
        if any(_get_path(merged, path) != _get_path(old, path) for path in rt.generation_paths):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        return merged

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        dry_run: bool = False,
        precondition_uid: str | None = None,
        precondition_rv: str | None = None,
        orphan: bool = False,
    ) -> JSON:
        """Delete now (no graceful period, no finalizers) and cascade to dependents unless ``orphan``."""
        with self._lock:
            key = (namespace if rt.namespaced else "", name)
            obj = self._bucket(rt).get(key)
            if obj is None:
                raise not_found(rt.plural, rt.group, name)
            meta = _meta(obj)
            if precondition_uid and precondition_uid != meta.get("uid"):
                raise conflict(
                    rt.plural,
                    rt.group,
                    name,
                    f"Precondition failed: UID in precondition: {precondition_uid}, "
                    f"UID in object meta: {meta.get('uid')}",
                )
            if precondition_rv and precondition_rv != meta.get("resourceVersion"):
                raise conflict(
                    rt.plural,
                    rt.group,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {precondition_rv}, "
                    f"ResourceVersion in object meta: {meta.get('resourceVersion')}",
                )
            result = copy.deepcopy(obj)
            if dry_run:
                return result
            self._remove(rt, key, orphan=orphan)
            return result

    def _remove(self, rt: ResourceType, key: tuple[str, str], *, orphan: bool) -> None:
        obj = self._bucket(rt).pop(key, None)
        if obj is None:
            return
        gone_obj = copy.deepcopy(obj)
        _meta(gone_obj)["resourceVersion"] = str(self._next_rv())
        self._emit(WatchEvent(self._rv, "DELETED", rt, gone_obj, copy.deepcopy(obj)))
        uid = _meta(obj).get("uid")
        is_namespace = rt.key == NAMESPACES_KEY
        for dep_rt in self.registry.all():
            bucket = self._bucket(dep_rt)
            for dep_key, dep in list(bucket.items()):
                in_ns = is_namespace and dep_rt.namespaced and dep_key[0] == key[1]
                refs = _meta(dep).get("ownerReferences") or []
                owned = bool(refs) and any(ref.get("uid") == uid for ref in refs)
                if not (in_ns or owned) or dep_key not in bucket:
                    continue
                if in_ns or not orphan:
                    self._remove(dep_rt, dep_key, orphan=False)
                else:
                    kept = copy.deepcopy(dep)
                    _meta(kept)["ownerReferences"] = [ref for ref in refs if ref.get("uid") != uid]
                    _meta(kept)["resourceVersion"] = str(self._next_rv())
                    bucket[dep_key] = kept
                    self._emit(WatchEvent(self._rv, "MODIFIED", dep_rt, copy.deepcopy(kept), copy.deepcopy(dep)))
