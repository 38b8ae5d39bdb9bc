"""The change a write made, as a manifest patch a reviewer can apply or commit (issue 19 item 4). Pure.

``changes`` (structs/diff.py) is for reading; this is for doing again. From the object before and
after a write it builds a partial manifest: ``apiVersion``, ``kind``, ``metadata.name``/``namespace``
and only the fields the write changed, a removed field as ``null``. For a Deployment it is a
strategic merge patch (containers, env, volumes by ``name``, ports by ``containerPort``; a removed
entry is a ``$patch: delete``), for an InferenceService (a custom resource, which has no strategic
merge) a JSON merge patch (RFC 7386). Either applies with ``kubectl patch -f FILE --type
strategic|merge --patch-file FILE`` and is a kustomize ``patches:`` entry as it is; a create is the
whole object (``kubectl create -f FILE``).

Env values are never in it (results reach the assistant and the audit log): an env entry with a
literal value that the write added or changed is left out, and ``omitted`` says so.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from .objects import REVISION_ANNOTATION, meta, spec_of

__all__ = ["ManifestChange", "manifest_change"]

PatchType = Literal["strategic", "merge", "create"]

#: Merge keys of the lists a strategic merge patch merges element by element (patchMergeKey in the API types).
MERGE_KEYS: Final[Mapping[str, str]] = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name", "imagePullSecrets": "name",
    "volumeMounts": "mountPath", "ports": "containerPort",
}
#: Annotations the API server or a controller writes: never part of the change.
SERVER_ANNOTATIONS: Final = frozenset({
    REVISION_ANNOTATION, "deployment.kubernetes.io/revision-history",
    "kubectl.kubernetes.io/last-applied-configuration",
})
ENV_OMITTED: Final = "env values (never shown): set them yourself"


class ManifestChange(BaseModel):
    """A write's change as data: apply it again, or commit it."""

    model_config = ConfigDict(extra="forbid")

    type: PatchType = Field(description="kubectl patch -f F --type <type> --patch-file F; create: kubectl create -f F")
    manifest: dict[str, Any] = Field(description="apiVersion, kind, name, namespace and only the changed fields")
    omitted: list[str] = Field(default_factory=list, description="what it leaves out")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _keyed(items: list[Any], key: str) -> dict[Any, dict[str, Any]] | None:
    """The list as {merge key value: item}, or None when an item is no object with that key."""
    out: dict[Any, dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict) or key not in item:
            return None
        out[item[key]] = item
    return out


class _Builder:
    def __init__(self, strategic: bool) -> None:
        self.strategic = strategic
        self.omitted: list[str] = []

    def note(self, what: str) -> None:
        if what not in self.omitted:
            self.omitted.append(what)

    def shown(self, value: Any, field: str | None = None) -> Any:
        """``value`` as it may be shown: env entries with a literal value left out."""
        if isinstance(value, dict):
            return {k: self.shown(v, k) for k, v in value.items()}
        if isinstance(value, list):
            if field == "env":
                kept = [e for e in value if not (isinstance(e, dict) and "value" in e)]
                if len(kept) < len(value):
                    self.note(ENV_OMITTED)
                return [self.shown(e) for e in kept]
            return [self.shown(v) for v in value]
        return value

    def diff(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
        """A merge patch (strategic where it can) turning ``before`` into ``after``; {} when they are equal."""
        patch: dict[str, Any] = {}
        for key, new in after.items():
            old = before.get(key)
            if key in before and old == new:
                continue
            if isinstance(old, dict) and isinstance(new, dict):
                inner = self.diff(old, new)
                if inner:
                    patch[key] = inner
            elif isinstance(old, list) and isinstance(new, list):
                changed = self.list_diff(key, old, new)
                if changed is not None:
                    patch[key] = changed
            else:
                patch[key] = self.shown(new, key)
        for key in before:
            if key not in after:
                patch[key] = None
        return patch

    def list_diff(self, field: str, old: list[Any], new: list[Any]) -> list[Any] | None:
        key = MERGE_KEYS.get(field) if self.strategic else None
        was, now = (_keyed(old, key), _keyed(new, key)) if key is not None else (None, None)
        if key is None or was is None or now is None:
            return self.shown(new, field)  # type: ignore[no-any-return]  # the whole list replaces the old one
        entries: list[Any] = []
        for ident, item in now.items():
            prior = was.get(ident)
            if field == "env" and "value" in item and item != prior:
                self.note(ENV_OMITTED)
                continue
            if prior is None:
                entries.append(self.shown(item))
            elif prior != item:
                entries.append({key: ident, **self.diff(prior, item)})
        entries += [{key: ident, "$patch": "delete"} for ident in was if ident not in now]
        return entries or None


def _parts(obj: Mapping[str, Any] | None, skip: Collection[str]) -> dict[str, Any]:
    """What a write can change: labels, annotations (not the server's), spec."""
    m = meta(obj)
    out: dict[str, Any] = {"metadata": {}, "spec": spec_of(obj)}
    if isinstance(m.get("labels"), dict):
        out["metadata"]["labels"] = m["labels"]
    annotations = {k: v for k, v in _dict(m.get("annotations")).items() if k not in SERVER_ANNOTATIONS | set(skip)}
    if annotations:
        out["metadata"]["annotations"] = annotations
    return out


def manifest_change(
    before: Mapping[str, Any] | None, after: Mapping[str, Any], *, api_version: str, kind: str, name: str,
    namespace: str, strategic: bool, skip_annotations: Collection[str] = (),
) -> ManifestChange | None:
    """The change from ``before`` (None: a create, and ``after`` is the object sent) to ``after``; None when
    nothing a write sets differs. ``strategic``: a strategic merge patch (built-in kinds), else a merge patch."""
    builder = _Builder(strategic)
    head = {"apiVersion": api_version, "kind": kind}
    ident = {"name": name, "namespace": namespace}
    if before is None:
        parts = builder.shown(_parts(after, skip_annotations))
        parts["metadata"] = {**ident, **parts["metadata"]}
        return ManifestChange(type="create", manifest={**head, **parts}, omitted=builder.omitted)
    patch = builder.diff(_parts(before, skip_annotations), _parts(after, skip_annotations))
    if not patch and not builder.omitted:
        return None
    patch["metadata"] = {**ident, **_dict(patch.get("metadata"))}
    return ManifestChange(type="strategic" if strategic else "merge", manifest={**head, **patch},
                          omitted=builder.omitted)
