"""Who owns one object, read from the cluster: for ``explain_access`` (the write tools read ownership on the read
that guards their write, :func:`.bounded.enforce_ownership`)."""

from __future__ import annotations

from opsgate.vocab.kinds import INFERENCE_SERVICE

from .context import CallContext
from .kserve.api import find_service
from .kube import Kube, KubeApiError
from .structs.ownership import Owner, ownership

__all__ = ["object_owner"]


def object_owner(kube: Kube, kind: str, namespace: str, name: str, ctx: CallContext) -> Owner | None:
    """The Argo CD or Flux owner of a Deployment or InferenceService, None when nothing owns it or it does not
    exist (a create: nothing to reconcile yet)."""
    if kind == INFERENCE_SERVICE:
        return ownership(find_service(kube, name, namespace, ctx))
    try:
        obj = kube.call(kube.apps.read_namespaced_deployment, name, namespace,
                        what=f"read deployment {namespace}/{name}", audit_id=ctx.call_id)
    except KubeApiError as exc:
        if exc.status == 404:
            return None
        raise
    return ownership(obj)
