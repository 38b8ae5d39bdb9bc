"""The Kubernetes permissions each tool needs, as RBAC names them: what ``opsgate doctor`` asks the cluster about.

Keyed by tool name and read for the tools the server registers (``catalog.server_tools``), so a
tool added, removed or given a new kind changes what doctor checks. ``tests/server/test_rbac.py`` runs
every tool against the sandbox and holds this table to the requests they really make: a call
not listed here, or a permission listed that no call uses, fails it.

``CACHE_NEEDS``: with the watch cache on (unless ``disable_read_cache``), four read tools list and watch
what they read, per namespace and kind. Those verbs are optional: refused, the cache says so in the
read's ``source.note`` and the reads go to the API server with ``get`` as before (one request a read,
tried again in 30 s), so doctor warns about them and never fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

APPS: Final = "apps"
KSERVE: Final = "serving.kserve.io"
# RBAC's verb order, for stable messages.
VERB_ORDER: Final = ("get", "list", "watch", "create", "update", "patch", "delete")
READ_VERBS: Final = frozenset({"get", "list", "watch"})


@dataclass(frozen=True)
class ApiAccess:
    """Verbs on one resource (``deployments``, or a subresource ``deployments/scale``) of one API group."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    optional: bool = False  # the watch cache's: refused, reads fall back to get (slower, not broken)

    @property
    def kind(self) -> str:
        """What a person calls the objects: the sentence doctor writes says which tools a denial breaks."""
        return "InferenceServices" if self.group == KSERVE else "Deployments"


def _needs(group: str, resource: str, *verbs: str) -> ApiAccess:
    return ApiAccess(group, resource, verbs)


_DEPLOYMENT_READ = _needs(APPS, "deployments", "get")
_SCALE_READ = _needs(APPS, "deployments/scale", "get")  # the replicas now, for a max_replicas_change bound
_HISTORY = _needs(APPS, "replicasets", "list")
_ISVC_READ = _needs(KSERVE, "inferenceservices", "get")
_ISVC_WRITE = _needs(KSERVE, "inferenceservices", "get", "patch")

# What each tool calls, its kind dispatch included (scale and rollback act on either kind).
TOOL_NEEDS: Final[Mapping[str, tuple[ApiAccess, ...]]] = {
    "list_workloads": (_needs(APPS, "deployments", "list"), _needs(KSERVE, "inferenceservices", "list")),
    "rollout_status": (_DEPLOYMENT_READ,),
    "rollout_history": (_DEPLOYMENT_READ, _HISTORY),
    "deploy": (_needs(APPS, "deployments", "get", "create", "patch"), _SCALE_READ),
    # scale reads the Deployment itself (its owner: Argo CD, Flux), and its scale subresource for a bound
    "scale": (_needs(APPS, "deployments/scale", "get", "patch"), _DEPLOYMENT_READ, _ISVC_WRITE),
    "rollback": (_needs(APPS, "deployments", "get", "patch"), _HISTORY, _ISVC_WRITE),
    "deploy_model": (_needs(KSERVE, "inferenceservices", "get", "create", "patch"),),
    "model_status": (_ISVC_READ,),
    "kserve_infer": (_ISVC_READ,),
    "drift": (_needs(APPS, "deployments", "list"), _needs(KSERVE, "inferenceservices", "list")),
}


def _cached(group: str, resource: str) -> ApiAccess:
    return ApiAccess(group, resource, ("list", "watch"), optional=True)


_CACHED_DEPLOYMENTS = _cached(APPS, "deployments")
_CACHED_ISVCS = _cached(KSERVE, "inferenceservices")

# What the watch cache lists and watches for each read tool it serves (tools/informer; optional verbs).
CACHE_NEEDS: Final[Mapping[str, tuple[ApiAccess, ...]]] = {
    "list_workloads": (_CACHED_DEPLOYMENTS, _CACHED_ISVCS),
    "rollout_status": (_CACHED_DEPLOYMENTS,),
    "rollout_history": (_CACHED_DEPLOYMENTS, _cached(APPS, "replicasets")),
    "model_status": (_CACHED_ISVCS,),
}


def cluster_needs(tools: Iterable[str], *, read_cache: bool = False) -> list[ApiAccess]:
    """What these tools need together, one entry a resource (first seen first), verbs in RBAC's order; with
    ``read_cache``, then the watch cache's verbs not needed anyway, one optional entry a resource."""
    names = list(tools)
    merged: dict[tuple[str, str], set[str]] = {}
    for tool in names:
        for access in TOOL_NEEDS.get(tool, ()):
            merged.setdefault((access.group, access.resource), set()).update(access.verbs)
    optional: dict[tuple[str, str], set[str]] = {}
    for tool in names if read_cache else ():
        for access in CACHE_NEEDS.get(tool, ()):
            key = (access.group, access.resource)
            optional.setdefault(key, set()).update(set(access.verbs) - merged.get(key, set()))
    return [*(ApiAccess(group, resource, tuple(v for v in VERB_ORDER if v in verbs))
              for (group, resource), verbs in merged.items()),
            *(ApiAccess(group, resource, tuple(v for v in VERB_ORDER if v in verbs), optional=True)
              for (group, resource), verbs in optional.items() if verbs)]
