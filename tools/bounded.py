"""Bounds on state a write takes from the cluster, not from the call's arguments.

The gate bounds what a call asks for (its arguments). A rollback asks for
nothing but a revision: the images, replicas and storage URI it writes come
from an earlier revision, which may predate the bounds or have been written by
someone with wider ones. So the rollback code, on the read that its guarded
write depends on, hands what it is about to restore to :func:`enforce_bounds`
(the caller's bounds, from the gate, through ``CallContext.check_bounds``).

Only what the rollback changes is bounded: a value the target already shares
with the live object is not the caller's doing (an admin's ``minReplicas: 0``
stays, and the rollback that every incident needs is not refused for it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from opsgate.policies.bounds import BoundAttrs

from .context import BoundsCheck, CallContext
from .errors import ToolError
from .structs.ownership import Owner, owner_text, ownership

__all__ = [
    "enforce_bounds",
    "enforce_ownership",
    "local_model",
    "localize_storage",
    "restored_deployment_attrs",
    "restored_service_attrs",
    "with_models_dir",
]

R = TypeVar("R")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _images(pod_spec: Mapping[str, Any]) -> list[str]:
    """Every container image a pod spec runs (init and ephemeral containers included)."""
    found: list[str] = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod_spec.get(key) or ():
            image = _dict(container).get("image")
            if isinstance(image, str) and image not in found:
                found.append(image)
    return found


def restored_deployment_attrs(current_template: Any, target_template: Any) -> BoundAttrs:
    """Bound attributes of a Deployment rollback: the target template's images that run nowhere now. Pure.

    ``rollout undo`` restores the pod template only; replicas stay as they are, so they are not bounded here.
    """
    now = set(_images(_dict(_dict(current_template).get("spec"))))
    new = [image for image in _images(_dict(_dict(target_template).get("spec"))) if image not in now]
    return BoundAttrs(images=tuple(new))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def restored_service_attrs(current_predictor: Any, restored_predictor: Any) -> BoundAttrs:
    """Bound attributes of an InferenceService rollback: what the restored predictor changes. Pure.

    ``replicas`` is the restored ceiling (maxReplicas, else minReplicas) when either changes, with
    ``current_replicas`` the ceiling now (for max_replicas_change); ``min_replicas`` when it changes;
    ``storage_uri`` when it changes; ``images`` of custom containers that run nowhere now.
    """
    now, new = _dict(current_predictor), _dict(restored_predictor)
    attrs = BoundAttrs()

    def ceiling(predictor: Mapping[str, Any]) -> int:
        for key in ("maxReplicas", "minReplicas"):
            value = _int(predictor.get(key))
            if value is not None and value > 0:
                return value
        return 1

    low_now, low_new = _int(now.get("minReplicas")), _int(new.get("minReplicas"))
    if (low_now, _int(now.get("maxReplicas"))) != (low_new, _int(new.get("maxReplicas"))):
        attrs = dataclasses.replace(attrs, replicas=ceiling(new), current_replicas=ceiling(now))
        if low_new != low_now and low_new is not None:
            attrs = dataclasses.replace(attrs, min_replicas=low_new)
    uri_now, uri_new = _dict(now.get("model")).get("storageUri"), _dict(new.get("model")).get("storageUri")
    if uri_new != uri_now and isinstance(uri_new, str):
        attrs = dataclasses.replace(attrs, storage_uri=uri_new)
    images = [image for image in _images(new) if image not in set(_images(now))]
    return dataclasses.replace(attrs, images=tuple(images))


def enforce_bounds(ctx: CallContext, attrs: BoundAttrs, what: str) -> None:
    """Refuse, before any write, state that breaks the caller's bounds; ``what`` says what it is.

    The refusal is a ``denied`` error naming the bound (``rule="bound"``): the gate records it as the
    call's outcome. Outside the gate (``check_bounds`` None) nothing is checked.
    """
    if ctx.check_bounds is None or attrs == BoundAttrs():
        return
    reason = ctx.check_bounds(attrs)
    if reason is not None:
        raise ToolError(f"{what}: {reason}", code="denied", rule="bound")


def enforce_ownership(ctx: CallContext, obj: Any, what: str) -> Owner | None:
    """Refuse a direct write to an object Argo CD or Flux reconciles from Git (issue 19 item 1), on the read that
    guards the write; the owner when the caller's bounds allow it (``allow_gitops_owned_writes``: the result
    and the audit outcome record the override), None when Git does not own it (or only possibly does).

    Outside the gate (no bounds to ask) an owned object is refused: no policy, no override.
    """
    owner = ownership(obj)
    if owner is None or not owner.certain:
        return None
    check = ctx.check_bounds
    reason = check(BoundAttrs(gitops_owned=True)) if check is not None else "no policy allows an override here"
    if reason is None:
        return owner
    raise ToolError(
        f"{what} is reconciled by {owner_text(owner)} from Git: a direct change would be reverted at its next "
        f"sync, or drift from Git unseen. Change it in Git, or use gitops mode (--gitops-repo). ({reason})",
        code="denied", rule="gitops-owned",
    )


# --------------------------------------------------------------------------- the models folder


def local_model(uri: str, models_dir: Path) -> str | None:
    """The model a ``file://`` URI names inside the models folder (its name, as a bare storage_uri), else None.

    Such a URI is a model from the models folder, allowed by default like a bare name; anything
    that climbs out (``..``, an escaped slash, a symlink pointing elsewhere) is not.
    """
    if not uri.startswith("file://"):
        return None
    raw = unquote(uri[len("file://"):])
    path = Path(raw)
    if "\\" in raw or "\0" in raw or not path.is_absolute() or any(p in (".", "..") for p in raw.split("/")):
        return None
    try:
        inside = path.resolve().is_relative_to(models_dir.resolve())
    except (OSError, ValueError):
        return None
    return path.stem if inside and path.suffix == ".onnx" and path.stem else None


def localize_storage(attrs: BoundAttrs, models_dir: Path) -> BoundAttrs:
    """``attrs`` with a ``file://`` storage URI inside the models folder replaced by the model's name."""
    uri = attrs.storage_uri
    name = local_model(uri, models_dir) if uri is not None else None
    return dataclasses.replace(attrs, storage_uri=name) if name is not None else attrs


def with_models_dir(fn: Callable[..., R], models_dir: Path) -> Callable[..., R]:
    """``fn`` (a tool run as ``fn(kube, args, ctx, ...)``) whose bounds checks know the models folder."""

    def run(kube: Any, args: Any, ctx: CallContext, *rest: Any) -> R:
        check: BoundsCheck | None = ctx.check_bounds
        if check is not None:
            inner = check
            ctx = dataclasses.replace(ctx, check_bounds=lambda attrs: inner(localize_storage(attrs, models_dir)))
        return fn(kube, args, ctx, *rest)

    return run
