"""Reads of InferenceServices through the cluster's custom objects API, with KServe's absence said plainly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..context import CallContext
from ..informer import Resource
from ..kube import Kube, KubeApiError
from .services import GROUP, JSON, KIND, PLURAL, VERSION

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi


def custom_api(kube: Kube) -> CustomObjectsApi:
    from kubernetes.client import CustomObjectsApi

    return CustomObjectsApi(kube.connect())


#: InferenceServices in the watch cache (model_status, list_workloads), listed and watched like any custom object.
INFERENCE_SERVICES = Resource(KIND, lambda kube, ns: (custom_api(kube).list_namespaced_custom_object,
                                                      (GROUP, VERSION, ns, PLURAL)))


def read_service(kube: Kube, name: str, namespace: str, ctx: CallContext) -> JSON:
    try:
        result: JSON = kube.call(custom_api(kube).get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
                                 what=f"read inferenceservice {namespace}/{name}", audit_id=ctx.call_id)
    except KubeApiError as exc:
        if exc.status == 404 and "inferenceservice" not in exc.message.lower().split(":", 1)[-1]:
            raise no_kserve(exc) from exc
        raise
    return result


def no_kserve(exc: KubeApiError) -> KubeApiError:
    """A 404 that names no object: the cluster does not serve InferenceServices at all."""
    return KubeApiError(
        f"{exc.message} (is KServe installed? this cluster does not serve {PLURAL}.{GROUP}/{VERSION})",
        status=exc.status, reason=exc.reason, rule="kserve-not-installed")


def find_service(kube: Kube, name: str, namespace: str, ctx: CallContext) -> JSON | None:
    try:
        return read_service(kube, name, namespace, ctx)
    except KubeApiError as exc:
        if exc.status == 404 and exc.rule != "kserve-not-installed":
            return None
        raise
