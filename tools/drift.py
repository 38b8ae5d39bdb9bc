"""drift: a namespace's live Deployments and InferenceServices against what Git renders for it (issue 19 item 3).

What Git renders comes from the server (GitOps mode's repository: the namespace's folder at the base
branch, rendered as the reconciler would); this module reads the live objects, with their
``managedFields``, straight from the API (a watch cache drops ``fieldsV1``), and
:mod:`.structs.drift` compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from pydantic import Field

from opsgate.vocab.kinds import DEPLOYMENT, INFERENCE_SERVICE, WORKLOAD_KINDS

from .context import CallContext
from .errors import ToolError
from .kserve.api import custom_api
from .kserve.services import GROUP, PLURAL, VERSION
from .kube import Kube, KubeApiError
from .structs.drift import ObjectDrift, compare
from .workload_types import Args, Namespace, ObjectName, Result

__all__ = ["DriftArgs", "DriftResult", "Rendered", "drift"]

#: The manifests Git renders for a namespace, and what was rendered ("main:apps/prod"); from the server.
Rendered = Callable[[str], tuple[list[dict[str, Any]], str]]

_LIST_CHUNK: Final = 500
OBJECTS_MAX: Final = 100


class DriftArgs(Args):
    namespace: Namespace
    app: ObjectName | None = Field(default=None, description="Only this Argo CD/Flux app's objects.")


class DriftResult(Result):
    namespace: str
    source: str = Field(description="Branch and folder of the GitOps repository that were rendered.")
    drifted: list[ObjectDrift] = Field(description="Objects that differ from Git, or that the cluster lacks.")
    in_sync: list[str] = Field(description="Kind/name of objects as Git says.")
    not_in_git: list[str] = Field(description="Kind/name of live objects Git does not render.")
    summary: str

    def audit_summary(self) -> dict[str, Any]:
        return {"source": self.source, "drifted": [f"{o.kind}/{o.name}" for o in self.drifted],
                "in_sync": len(self.in_sync), "not_in_git": len(self.not_in_git)}


def _list(kube: Kube, fn: Callable[..., Any], args: tuple[Any, ...], kind: str, what: str,
          ctx: CallContext) -> list[dict[str, Any]]:
    """Every object of a list, in chunks, each with its kind (a list's items carry none)."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        chunk = kube.call(fn, *args, what=what, audit_id=ctx.call_id, limit=_LIST_CHUNK, _continue=token)
        items.extend({**i, "kind": kind} for i in chunk.get("items") or [] if isinstance(i, dict))
        token = (chunk.get("metadata") or {}).get("continue") or None
        if not token:
            return items


def live_workloads(kube: Kube, namespace: str, ctx: CallContext) -> list[dict[str, Any]]:
    """The namespace's Deployments and InferenceServices (none of the latter when KServe is not installed)."""
    found = _list(kube, kube.apps.list_namespaced_deployment, (namespace,), DEPLOYMENT,
                  f"list deployments in {namespace}", ctx)
    try:
        found += _list(kube, custom_api(kube).list_namespaced_custom_object, (GROUP, VERSION, namespace, PLURAL),
                       INFERENCE_SERVICE, f"list inferenceservices in {namespace}", ctx)
    except KubeApiError as exc:
        if exc.status != 404:
            raise
    return found


def drift(kube: Kube, args: DriftArgs, ctx: CallContext, rendered: Rendered | None) -> DriftResult:
    """Compare the live workloads of a namespace with Git's; name each differing field and who changed it."""
    if rendered is None:
        raise ToolError("drift compares the cluster with the manifests in Git: start opsgate with --gitops-repo and "
                        "--gitops-path (or --gitops-paths) to say where they are", code="failed_precondition",
                        rule="no-gitops-repo")
    manifests, source = rendered(args.namespace)
    objects, only_live = compare(manifests, live_workloads(kube, args.namespace, ctx), args.namespace,
                                 WORKLOAD_KINDS, args.app)
    drifted = [o for o in objects if o.state != "in-sync"]
    in_sync = [f"{o.kind}/{o.name}" for o in objects if o.state == "in-sync"]
    fields = sum(len(o.fields) for o in drifted)
    summary = (f"{len(drifted)} of {len(objects)} objects differ from Git ({fields} fields)" if drifted
               else f"all {len(objects)} objects Git renders for {args.namespace} match it")
    if only_live:
        summary += f"; {len(only_live)} live objects are not in Git"
    return DriftResult(namespace=args.namespace, source=source, drifted=drifted[:OBJECTS_MAX],
                       in_sync=in_sync[:OBJECTS_MAX], not_in_git=only_live[:OBJECTS_MAX], summary=summary)
