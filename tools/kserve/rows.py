"""InferenceServices as list_workloads rows."""

from __future__ import annotations

from datetime import datetime

from ..context import CallContext
from ..informer import read_all
from ..kube import Kube, KubeApiError
from ..structs.freshness import Freshness
from ..structs.objects import age_seconds
from ..structs.ownership import row_owner
from ..workload_types import (
    WorkloadRow,
)
from .api import INFERENCE_SERVICES, custom_api, no_kserve
from .services import GROUP, JSON, KIND, PLURAL, VERSION, as_json, predictor_of, revision_number
from .status import status_result


def _list_services(kube: Kube, namespace: str, ctx: CallContext, required: bool) -> list[JSON]:
    """Every InferenceService in the namespace from the API server, in chunks."""
    items: list[JSON] = []
    token: str | None = None
    custom = custom_api(kube)
    while True:
        try:
            chunk = kube.call(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, limit=500,
                              _continue=token, what=f"list inferenceservices in {namespace}", audit_id=ctx.call_id)
        except KubeApiError as exc:
            if exc.status == 404 and not required:
                return []
            raise no_kserve(exc) if exc.status == 404 else exc from exc
        items.extend(i for i in chunk.get("items") or [] if isinstance(i, dict))
        token = as_json(chunk.get("metadata")).get("continue") or None
        if not token:
            return items


def inference_service_rows(kube: Kube, namespace: str, ctx: CallContext, now: datetime,
                           required: bool) -> tuple[list[WorkloadRow], Freshness]:
    """InferenceServices as workload rows (from the watch cache when it is on). Where KServe is not installed:
    none, or an error if ``required``."""
    items, source = read_all(kube, INFERENCE_SERVICES, namespace,
                             lambda: _list_services(kube, namespace, ctx, required))
    rows = []
    for obj in items:
        s = status_result(obj)
        low = predictor_of(obj).get("minReplicas")
        desired = low if isinstance(low, int) else 1
        rows.append(WorkloadRow(
            name=s.name, kind=KIND, desired=desired, ready=desired if s.ready else 0,
            images=[s.storage_uri] if s.storage_uri else [],
            revision=revision_number(s.latest_ready_revision or s.latest_created_revision),
            age_seconds=age_seconds(obj, now), owner=row_owner(obj, KIND),
        ))
    return rows, source
