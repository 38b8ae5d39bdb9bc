"""What the watch cache can hold: a kind, and how to list (and so watch) it in a namespace.

A kind's list method is also its watch (``watch=True``), as in every ``kubernetes`` client API. The
InferenceService is described in :mod:`opsgate.tools.kserve.api`, beside the rest of KServe's names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..kube import Kube

Lister = Callable[["Kube", str], tuple[Callable[..., Any], tuple[Any, ...]]]


@dataclass(frozen=True)
class Resource:
    """``kind`` as the API names it in objects; ``lister(kube, namespace)``: the list method and its positional args."""

    kind: str
    lister: Lister

    @property
    def key(self) -> str:
        """The kind as writes are recorded under it (Kube.call sees the written object's kind)."""
        return self.kind.lower()


DEPLOYMENTS = Resource("Deployment", lambda kube, ns: (kube.apps.list_namespaced_deployment, (ns,)))
REPLICA_SETS = Resource("ReplicaSet", lambda kube, ns: (kube.apps.list_namespaced_replica_set, (ns,)))
