"""Who reconciles an object from Git (Argo CD, a Flux Kustomization, a Flux HelmRelease), read from the object. Pure.

A direct write to such an object is reverted at the next sync, or drifts from Git unseen, so the
write tools ask this first (issue 19 item 1). The evidence is what the reconcilers themselves
write on the objects they apply:

- Argo CD, annotation tracking (the default since Argo CD 3, user-guide/resource_tracking):
  ``argocd.argoproj.io/tracking-id: <app>:<group>/<kind>:<namespace>/<name>``; an Application
  outside Argo CD's own namespace is written ``<app namespace>_<app>``. Argo CD counts the
  annotation only when it names the object that carries it (a manifest copied with
  ``kubectl get -o yaml`` keeps a stale one); so does this module.
- Argo CD, label tracking (before 3.0): ``app.kubernetes.io/instance: <app>``. Helm charts put the
  same label on everything they render (the release name), so alone it is only "possibly"
  (``certain=False``: reported, not refused); with an Argo CD field manager on the object it is certain.
- Flux: ``kustomize.toolkit.fluxcd.io/name`` + ``/namespace`` (kustomize-controller), and
  ``helm.toolkit.fluxcd.io/name`` + ``/namespace`` (helm-controller), on every object they apply.
- Server-side-apply field managers: ``argocd-controller`` (Argo CD's SSA manager),
  ``kustomize-controller``, ``helm-controller``; and ``argocd-application-controller``, the name
  Argo CD's client-side apply gets from its User-Agent. A manager alone is a certain owner whose
  application is not named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from ..untrusted import quoted
from .objects import meta

__all__ = [
    "ARGO_INSTANCE_LABEL",
    "ARGO_TRACKING_ANNOTATION",
    "FLUX_HELM_LABELS",
    "FLUX_KUSTOMIZE_LABELS",
    "GITOPS_MANAGERS",
    "Owner",
    "OwnerKind",
    "managers_of",
    "owner_text",
    "ownership",
    "row_owner",
]

OwnerKind = Literal["argocd", "flux-kustomize", "flux-helm"]

ARGO_TRACKING_ANNOTATION: Final = "argocd.argoproj.io/tracking-id"
ARGO_INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
FLUX_KUSTOMIZE_LABELS: Final = ("kustomize.toolkit.fluxcd.io/name", "kustomize.toolkit.fluxcd.io/namespace")
FLUX_HELM_LABELS: Final = ("helm.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/namespace")
#: Field managers that are a reconciler applying Git, and whose reconciler they are.
GITOPS_MANAGERS: Final[Mapping[str, OwnerKind]] = {
    "argocd-controller": "argocd",
    "argocd-application-controller": "argocd",
    "kustomize-controller": "flux-kustomize",
    "helm-controller": "flux-helm",
}
_KINDS: Final[tuple[OwnerKind, ...]] = ("argocd", "flux-kustomize", "flux-helm")
#: The API group a tracking id names for each kind opsgate writes.
_GROUPS: Final[Mapping[str, str]] = {"Deployment": "apps", "InferenceService": "serving.kserve.io"}


class Owner(BaseModel):
    """The reconciler that applies this object from Git, and the evidence read from the object."""

    model_config = ConfigDict(extra="forbid")

    kind: OwnerKind = Field(description="argocd, flux-kustomize or flux-helm")
    name: str | None = Field(default=None, description="Argo CD Application, Flux Kustomization or HelmRelease; "
                             "null when only a field manager says so")
    namespace: str | None = Field(default=None, description="where that Application/Kustomization/HelmRelease is")
    certain: bool = Field(default=True, description="false: only app.kubernetes.io/instance, which Helm sets too")
    evidence: list[str] = Field(description="what on the object says so")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def managers_of(obj: Mapping[str, Any] | None) -> list[str]:
    """The field managers in ``metadata.managedFields``, in order, each once."""
    found: list[str] = []
    for entry in meta(obj).get("managedFields") or ():
        name = _dict(entry).get("manager")
        if isinstance(name, str) and name not in found:
            found.append(name)
    return found


def _tracking(value: str, obj: Mapping[str, Any]) -> tuple[str | None, str | None, bool]:
    """(app, app namespace, names this object) from an Argo CD tracking id."""
    app, sep, rest = value.partition(":")
    group_kind, sep2, ns_name = rest.partition(":")
    if not (sep and sep2 and app):
        return None, None, False
    app_ns, underscore, app_name = app.partition("_")
    name, namespace = (app_name, app_ns) if underscore else (app, None)
    group, _, kind = group_kind.rpartition("/")
    obj_ns, _, obj_name = ns_name.rpartition("/")
    m = meta(obj)
    own_kind = str(obj.get("kind") or "")
    matches = (kind == own_kind and obj_name == m.get("name") and obj_ns == (m.get("namespace") or "")
               and (own_kind not in _GROUPS or group == _GROUPS[own_kind]))
    return name, namespace, matches


def ownership(obj: Mapping[str, Any] | None) -> Owner | None:
    """Who reconciles ``obj`` from Git, or None. Argo CD's tracking id first, then Flux's labels, then field
    managers, then the instance label (possibly Argo CD); the evidence lists everything that points to one."""
    if not obj:
        return None
    m = meta(obj)
    labels, annotations = _dict(m.get("labels")), _dict(m.get("annotations"))
    if (ARGO_TRACKING_ANNOTATION not in annotations and ARGO_INSTANCE_LABEL not in labels
            and FLUX_KUSTOMIZE_LABELS[0] not in labels and FLUX_HELM_LABELS[0] not in labels
            and not any(_dict(e).get("manager") in GITOPS_MANAGERS for e in m.get("managedFields") or ())):
        return None  # no evidence at all, the common case, decided cheaply (list_workloads asks for every row)
    managers = managers_of(obj)
    by_manager = {kind: [n for n in managers if GITOPS_MANAGERS.get(n) == kind] for kind in _KINDS}

    def with_managers(kind: OwnerKind, evidence: list[str]) -> list[str]:
        return evidence + [f"field manager {n}" for n in by_manager[kind]]

    tracking = annotations.get(ARGO_TRACKING_ANNOTATION)
    stale: list[str] = []
    if isinstance(tracking, str):
        app, app_ns, matches = _tracking(tracking, obj)
        if matches:
            return Owner(kind="argocd", name=app, namespace=app_ns,
                         evidence=with_managers("argocd", [f"annotation {ARGO_TRACKING_ANNOTATION}"]))
        stale = [f"annotation {ARGO_TRACKING_ANNOTATION} names another object (ignored, as Argo CD does)"]
    flux: tuple[tuple[OwnerKind, tuple[str, str]], ...] = (
        ("flux-kustomize", FLUX_KUSTOMIZE_LABELS), ("flux-helm", FLUX_HELM_LABELS))
    for kind, (name_key, ns_key) in flux:
        name = labels.get(name_key)
        if isinstance(name, str) and name:
            namespace = labels.get(ns_key)
            evidence = [f"label {name_key}"] + ([f"label {ns_key}"] if isinstance(namespace, str) else [])
            return Owner(kind=kind, name=name, namespace=namespace if isinstance(namespace, str) else None,
                         evidence=with_managers(kind, evidence))
    label = labels.get(ARGO_INSTANCE_LABEL)
    instance = label if isinstance(label, str) and label else None
    for kind in _KINDS:
        if by_manager[kind]:
            named = instance if kind == "argocd" else None
            evidence = with_managers(kind, [f"label {ARGO_INSTANCE_LABEL}"] if named else [])
            return Owner(kind=kind, name=named, evidence=stale + evidence)
    if instance is not None:
        return Owner(kind="argocd", name=instance, certain=False,
                     evidence=[*stale, f"label {ARGO_INSTANCE_LABEL} only (Helm sets it too)"])
    return None


_WHO: Final[Mapping[str, str]] = {
    "argocd": "Argo CD application", "flux-kustomize": "Flux Kustomization", "flux-helm": "Flux HelmRelease",
}


def owner_text(owner: Owner) -> str:
    """``Argo CD application "web"`` / ``Flux Kustomization "flux-system/apps"``: names quoted (they are the
    cluster's text)."""
    who = _WHO[owner.kind]
    if owner.name is None:
        manager = next((e.removeprefix("field manager ") for e in owner.evidence if e.startswith("field manager ")),
                       "?")
        return f"{who.rsplit(' ', 1)[0]} (field manager {quoted(manager)})"
    full = f"{owner.namespace}/{owner.name}" if owner.namespace else owner.name
    return f"{'possibly ' if not owner.certain else ''}{who} {quoted(full)}"


_ROW_OWNERS: dict[tuple[str, str, str], str | None] = {}  # (uid, resourceVersion, kind) -> row_owner's answer
_ROW_OWNERS_MAX: Final = 4096
_UNKNOWN: Final = object()


def row_owner(obj: Mapping[str, Any], kind: str) -> str | None:
    """The owner in a few words for a list row (list_workloads), None when no reconciler is seen. ``kind``:
    a list's items come without one from the API, and an Argo CD tracking id is checked against it.
    Remembered by uid and resourceVersion (an object at one version is one content): a poll of a cached
    namespace asks again for the same objects, and building an Owner costs ~5 us a row."""
    m = meta(obj)
    uid, rv = m.get("uid"), m.get("resourceVersion")
    key = (str(uid), str(rv), kind) if uid and rv else None
    known = _ROW_OWNERS.get(key, _UNKNOWN) if key is not None else _UNKNOWN  # one lookup: a clear may run between two
    if known is not _UNKNOWN:
        return cast("str | None", known)
    owner = ownership(obj if obj.get("kind") else {**obj, "kind": kind})
    text = owner_text(owner) if owner is not None else None
    if key is not None:
        if len(_ROW_OWNERS) >= _ROW_OWNERS_MAX:
            _ROW_OWNERS.clear()
        _ROW_OWNERS[key] = text
    return text
