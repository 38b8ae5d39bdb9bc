"""KServe InferenceService tools: deploy_model, model_status, kserve_infer; scale and rollback of a service.

Plain synchronous functions ``tool(kube, args, ctx) -> Result`` like the Deployment
tools (the gate runs them in a worker thread). Decisions are pure functions on
the InferenceService as JSON (spec built, diff, mode, traffic, summary, which
rollback applies); the edges are :meth:`Kube.call` (the API) and one pooled
urllib3 client (the model server). Importing this module imports neither
``kubernetes`` nor numpy nor urllib3.

KServe behaviour relied on is in ``/work/shared/KSERVE.md``: canary by
``canaryTrafficPercent`` in Serverless mode only (RawDeployment/Standard
ignores it, so opsgate refuses it there instead of pretending), promote by
removing it, roll back by setting it to 0; the deployment mode of an existing
service cannot change. For raw mode, and for a service with no canary in
flight, opsgate rolls back by restoring the predictor spec it recorded in the
annotation ``opsgate.dev/previous-spec`` on its last change of the revision
template (deploy_model, scale), and says which of the two it did.

Every write carries ``kubernetes.io/change-cause: opsgate: <principal> call <call id>``,
is guarded by the ``metadata.generation`` it was computed from (never the
resourceVersion, which every status write changes), and when overtaken is
recomputed from a fresh read a few times with a short backoff, then reported.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import quote

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from opsgate.vocab.limits import MAX_INPUT_ELEMENTS, MAX_REPLICAS, replica_range_ok

from .bounded import enforce_bounds, restored_service_attrs
from .context import CallContext
from .errors import ToolError
from .kube import Kube, KubeApiError, guarded_patch, retry_on_conflict
from .oip import (
    ModelMetadata,
    OipTensorIn,
    decode_response,
    encode_request,
    encode_unchecked,
    error_text,
    flatten,
    input_elements,
    parse_metadata,
)
from .structs.diff import FieldChange, diff_views
from .structs.objects import CHANGE_CAUSE_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, change_cause, meta
from .structs.patches import guard, pointer
from .tensors import InferResult, TensorOut, TensorValue
from .workloads import (
    CONDITION_MESSAGE_MAX,
    DRY_RUN,
    Condition,
    Namespace,
    ProgressCallback,
    Resources,
    RollbackArgs,
    RollbackResult,
    ScaleArgs,
    ScaleResult,
    WorkloadRow,
    _age_seconds,
    _report,
)

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi
    from urllib3 import PoolManager

__all__ = [
    "PREVIOUS_SPEC_ANNOTATION",
    "DeployModelArgs",
    "DeployModelResult",
    "KServeInferArgs",
    "KServeInferResult",
    "ModelState",
    "ModelStatusArgs",
    "ModelStatusResult",
    "TrafficSplit",
    "current_replicas",
    "deploy_model",
    "inference_service_rows",
    "isvc_view",
    "kserve_infer",
    "model_status",
    "rollback_inference_service",
    "scale_inference_service",
]


JSON = dict[str, Any]

GROUP: Final = "serving.kserve.io"
VERSION: Final = "v1beta1"
PLURAL: Final = "inferenceservices"
KIND: Final = "InferenceService"
MODE_ANNOTATION: Final = "serving.kserve.io/deploymentMode"
PREVIOUS_SPEC_ANNOTATION: Final = "opsgate.dev/previous-spec"
SERVERLESS: Final = "Serverless"
RAW: Final = "RawDeployment"
#: Annotation values -> the mode they mean (0.15+ renamed Serverless -> Knative, RawDeployment -> Standard).
MODES: Final[Mapping[str, str]] = {
    "Serverless": SERVERLESS, "Knative": SERVERLESS, "RawDeployment": RAW, "Standard": RAW, "ModelMesh": "ModelMesh",
}
CONNECT_TIMEOUT: Final = 3.0
RESPONSE_MAX_BYTES: Final = 4 * 2**20
POLL_SECONDS: Final = 0.1
NAME_MAX: Final = 47  # so "{name}-predictor-00001" stays a 63-character DNS label, as Knative requires
NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
STORAGE_URI_MAX: Final = 2048
STORAGE_URI_PATTERN: Final = r"^([a-z][a-z0-9+.-]*://\S+|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$"
_NAME_RE: Final = re.compile(NAME_PATTERN)
_REVISION_NUMBER: Final = re.compile(r"(\d+)$")


# --------------------------------------------------------------------------- argument types


def _name_checker(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise PydanticCustomError(
                "dns1035_label", "not a valid InferenceService name: lowercase letters, digits and "
                "'-', starting with a letter and ending with a letter or digit", {"value": value})
        if len(value) > limit:
            raise PydanticCustomError("name_length", "must be at most {limit} characters", {"limit": limit})
        return value

    return check


ServiceName = Annotated[str, AfterValidator(_name_checker(63))]  # an existing service: see workloads.Namespace
NewServiceName = Annotated[
    str,
    Field(description="Also the model name in its URLs.",
          json_schema_extra={"pattern": NAME_PATTERN, "maxLength": NAME_MAX}),
    AfterValidator(_name_checker(NAME_MAX)),
]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- pure: reading a service


def _dict(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def predictor_of(obj: Mapping[str, Any] | None) -> JSON:
    return _dict(_dict(_dict(obj).get("spec")).get("predictor"))


def _model(obj: Mapping[str, Any] | None) -> JSON:
    return _dict(predictor_of(obj).get("model"))


def _component(obj: Mapping[str, Any] | None) -> JSON:
    return _dict(_dict(_dict(_dict(obj).get("status")).get("components")).get("predictor"))


def normalize_mode(value: Any) -> str | None:
    return MODES.get(value) if isinstance(value, str) else None


def mode_of(obj: Mapping[str, Any] | None) -> str | None:
    """The deployment mode: the annotation, else what the controller reported; None when neither says."""
    annotations = _dict(meta(obj).get("annotations"))
    return normalize_mode(annotations.get(MODE_ANNOTATION)) or normalize_mode(
        _dict(_dict(obj).get("status")).get("deploymentMode"))


def protocol_of(obj: Mapping[str, Any] | None) -> str:
    """``spec.predictor.model.protocolVersion``; KServe's default, v1, when unset."""
    value = _model(obj).get("protocolVersion")
    return "v2" if value in ("v2", "grpc-v2") else "v1"


def revision_number(name: str | None) -> int | None:
    """3 for ``iris-predictor-00003`` (Serverless) or ``"3"`` (a RawDeployment's Deployment revision)."""
    if not name:
        return None
    found = _REVISION_NUMBER.search(name)
    return int(found.group(1)) if found else None


def template_of(predictor: Mapping[str, Any]) -> JSON:
    """The predictor spec without ``canaryTrafficPercent``: what makes a revision (traffic is a route setting)."""
    out = copy.deepcopy(dict(predictor))
    out.pop("canaryTrafficPercent", None)
    return out


def _fingerprint(value: Any) -> str | None:
    if not value:
        return None
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:12]


def isvc_view(obj: Mapping[str, Any] | None) -> JSON:
    """The fields of an InferenceService that tools report changes of (env values never shown)."""
    if not obj:
        return {}
    predictor = predictor_of(obj)
    model = _dict(predictor.get("model"))
    rest_model = {k: v for k, v in model.items()
                  if k not in ("storageUri", "modelFormat", "runtime", "protocolVersion", "resources")}
    rest = {k: v for k, v in predictor.items()
            if k not in ("model", "minReplicas", "maxReplicas", "canaryTrafficPercent")}
    return {
        "storage_uri": model.get("storageUri"),
        "model_format": _dict(model.get("modelFormat")).get("name"),
        "runtime": model.get("runtime"),
        "protocol_version": model.get("protocolVersion"),
        "resources": model.get("resources") or {},
        "min_replicas": predictor.get("minReplicas"),
        "max_replicas": predictor.get("maxReplicas"),
        "canary_traffic_percent": predictor.get("canaryTrafficPercent"),
        "deployment_mode": _dict(meta(obj).get("annotations")).get(MODE_ANNOTATION),
        "predictor_other": _fingerprint({"model": rest_model, **rest} if rest_model else rest),
    }


def diff_services(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[FieldChange]:
    return diff_views(isvc_view(before), isvc_view(after))


# --------------------------------------------------------------------------- model_status


class ModelStatusArgs(_Args):
    name: ServiceName
    namespace: Namespace


class TrafficSplit(_Result):
    revision: str | None
    percent: int
    latest: bool = Field(description="Whether this target follows the latest ready revision.")
    tag: str | None = Field(default=None, description='"prev" (last rolled out) or "latest" during a canary.')


class ModelState(_Result):
    transition_status: str | None = Field(description="UpToDate, InProgress, BlockedByFailedLoad or InvalidSpec.")
    active_state: str | None = None
    target_state: str | None = None
    failure_reason: str | None = None
    failure_message: str | None = None


class ModelStatusResult(_Result):
    name: str
    namespace: str
    url: str | None
    ready: bool
    mode: str | None = Field(description="Serverless or RawDeployment (null: neither annotated nor reported).")
    protocol: str
    storage_uri: str | None
    canary_traffic_percent: int | None
    generation: int
    observed_generation: int
    conditions: list[Condition] = Field(description="Conditions that are not True, the most specific first; "
                                        "empty when all are True.")
    model: ModelState | None
    latest_created_revision: str | None
    latest_ready_revision: str | None
    latest_rolled_out_revision: str | None
    previous_rolled_out_revision: str | None
    traffic: list[TrafficSplit]
    done: bool = Field(description="The latest spec is served: seen by the controller, Ready, and (Serverless) "
                       "the newest revision is ready.")
    summary: str

    def audit_summary(self) -> dict[str, Any]:
        return {"ready": self.ready, "done": self.done, "latest_ready": self.latest_ready_revision,
                "traffic": {t.revision or "?": t.percent for t in self.traffic}}


#: Most specific first: the condition that explains a failure best is listed, and summarized, first.
_CONDITION_ORDER: Final = ("PredictorConfigurationReady", "PredictorRouteReady", "PredictorReady", "IngressReady")


def _clip(text: Any) -> str | None:
    if not text:
        return None
    value = " ".join(str(text).split())
    return value if len(value) <= CONDITION_MESSAGE_MAX else value[: CONDITION_MESSAGE_MAX - 1] + "…"


_TOKEN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def _said(text: str) -> str:
    """Text the cluster wrote (a condition's message, a model's failure), as a quoted string in our
    sentences: whoever can write an InferenceService's status writes it, so it reads as a quote of
    KServe, never as our own words. A reason that is one CamelCase-like word stays bare."""
    return text if _TOKEN.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def status_result(obj: Mapping[str, Any]) -> ModelStatusResult:
    """A compact status of one InferenceService, with KServe's own words for what is wrong. Pure."""
    m, status = meta(obj), _dict(_dict(obj).get("status"))
    name, namespace = str(m.get("name")), str(m.get("namespace"))
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    by_type = {str(c.get("type")): c for c in conditions}
    ready = _dict(by_type.get("Ready")).get("status") == "True"
    order = {t: i for i, t in enumerate(_CONDITION_ORDER)}
    failing = sorted((c for c in conditions if c.get("status") != "True"),
                     key=lambda c: (c.get("type") == "Ready", c.get("status") != "False",
                                    order.get(str(c.get("type")), len(order))))
    shown = [Condition(type=_clip(c.get("type")) or "", status=_clip(c.get("status")) or "",
                       reason=_clip(c.get("reason")), message=_clip(c.get("message"))) for c in failing]
    ms = _dict(status.get("modelStatus"))
    failure = _dict(ms.get("lastFailureInfo"))
    model = ModelState(
        transition_status=ms.get("transitionStatus"), active_state=_dict(ms.get("states")).get("activeModelState"),
        target_state=_dict(ms.get("states")).get("targetModelState"), failure_reason=_clip(failure.get("reason")),
        failure_message=_clip(failure.get("message")),
    ) if ms else None
    comp = _component(obj)
    traffic = [TrafficSplit(revision=t.get("revisionName"), percent=int(t.get("percent") or 0),
                            latest=bool(t.get("latestRevision")), tag=t.get("tag"))
               for t in comp.get("traffic") or [] if isinstance(t, dict)]
    generation = int(m.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    mode = mode_of(obj)
    created, latest_ready = comp.get("latestCreatedRevision"), comp.get("latestReadyRevision")
    newest_ready = mode == RAW or created == latest_ready
    done = ready and observed >= generation and newest_ready
    canary = predictor_of(obj).get("canaryTrafficPercent")
    result = ModelStatusResult(
        name=name, namespace=namespace, url=status.get("url") or comp.get("url"), ready=ready, mode=mode,
        protocol=protocol_of(obj), storage_uri=_model(obj).get("storageUri"),
        canary_traffic_percent=canary if isinstance(canary, int) else None, generation=generation,
        observed_generation=observed, conditions=shown, model=model, latest_created_revision=created,
        latest_ready_revision=latest_ready, latest_rolled_out_revision=comp.get("latestRolledoutRevision"),
        previous_rolled_out_revision=comp.get("previousRolledoutRevision"), traffic=traffic, done=done, summary="",
    )
    result.summary = summarize(result)
    return result


_URL: Final = re.compile(r"https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]{0,200})?")


def _said_url(url: Any) -> str:
    """A status URL bare when it is a plain http(s) URL, else quoted like any other cluster text."""
    text = str(url)
    return text if _URL.fullmatch(text) else _said(_clip(text) or "")


def _split_text(traffic: Sequence[TrafficSplit]) -> str:
    parts = []
    for t in traffic:
        label = ", ".join(_said(_clip(x) or "") for x in (t.tag, "canary" if t.tag == "latest" else None) if x)
        parts.append(f"{t.percent}% {_said(_clip(t.revision) or '?')}" + (f" ({label})" if label else ""))
    return ", ".join(parts)


def summarize(s: ModelStatusResult) -> str:
    """One line: Ready and where traffic goes, or why not, in KServe's words."""
    head = f'inferenceservice "{s.name}"'
    if s.observed_generation < s.generation:
        return f"{head}: waiting for the controller to see generation {s.generation}"
    split = _split_text(s.traffic)
    # Every word below that the cluster wrote (condition type and status, revision names, the URL, the
    # model's state) is bare only when it is one plain token, else quoted and capped (issue 15 item 17).
    if s.ready and s.done:
        return f"{head} is Ready at {_said_url(s.url)}" + (f": {split}" if split else "")
    if s.ready:
        revision = _said(_clip(s.latest_created_revision) or "?")
        return f"{head} is Ready ({split or _said_url(s.url)}); revision {revision} is still loading"
    first = s.conditions[0] if s.conditions else None
    why = (f"{_said(first.type)} {_said(first.status)}" + (f" ({_said(first.reason)})" if first.reason else "")
           + (f": {_said(first.message)}" if first.message else "")) if first else "no Ready condition yet"
    model = s.model
    if model is not None and model.transition_status not in (None, "UpToDate"):
        why += f"; model {_said(_clip(model.transition_status) or '?')}" + _failure(model)
    return f"{head} is not Ready: {why}"


def _failure(model: ModelState) -> str:
    said = [_said(x) for x in (model.failure_reason, model.failure_message) if x]
    return f" ({': '.join(said)})" if said else ""


def _custom(kube: Kube) -> CustomObjectsApi:
    from kubernetes.client import CustomObjectsApi

    return CustomObjectsApi(kube.connect())


def _read(kube: Kube, name: str, namespace: str, ctx: CallContext) -> JSON:
    try:
        result: JSON = kube.call(_custom(kube).get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
                                 what=f"read inferenceservice {namespace}/{name}", audit_id=ctx.call_id)
    except KubeApiError as exc:
        if exc.status == 404 and "inferenceservice" not in exc.message.lower().split(":", 1)[-1]:
            raise _no_kserve(exc) from exc
        raise
    return result


def _no_kserve(exc: KubeApiError) -> KubeApiError:
    """A 404 that names no object: the cluster does not serve InferenceServices at all."""
    return KubeApiError(
        f"{exc.message} (is KServe installed? this cluster does not serve {PLURAL}.{GROUP}/{VERSION})",
        status=exc.status, reason=exc.reason, rule="kserve-not-installed")


def _find(kube: Kube, name: str, namespace: str, ctx: CallContext) -> JSON | None:
    try:
        return _read(kube, name, namespace, ctx)
    except KubeApiError as exc:
        if exc.status == 404 and exc.rule != "kserve-not-installed":
            return None
        raise


def model_status(kube: Kube, args: ModelStatusArgs, ctx: CallContext) -> ModelStatusResult:
    """One InferenceService: URL, Ready (or the failing condition), model state, revisions, traffic split."""
    return status_result(_read(kube, args.name, args.namespace, ctx))


def replica_ceiling(obj: Mapping[str, Any] | None) -> int:
    """The most replicas a service may run now: maxReplicas, else minReplicas, else KServe's default 1. Pure."""
    predictor = predictor_of(obj)
    for key in ("maxReplicas", "minReplicas"):
        value = predictor.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 1


def current_replicas(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    """For the ``max_replicas_change`` bound: ``{"current_replicas": n}``, n = :func:`replica_ceiling` now,
    0 for a service not created yet; ``{}`` (unknown, so the bound refuses) when it cannot be read."""
    try:
        obj = _read(kube, name, namespace, CallContext(call_id="", principal=""))
    except ToolError as exc:
        return {"current_replicas": 0} if getattr(exc, "status", None) == 404 and getattr(
            exc, "rule", None) != "kserve-not-installed" else {}
    return {"current_replicas": replica_ceiling(obj)}


# --------------------------------------------------------------------------- deploy_model


class DeployModelArgs(_Args):
    name: NewServiceName
    namespace: Namespace
    storage_uri: str | None = Field(
        default=None, max_length=STORAGE_URI_MAX, pattern=STORAGE_URI_PATTERN,
        description='gs://, s3://, pvc://, https:// or file:/// URI, or a sandbox model name. Needed to create.',
    )
    model_format: Literal["onnx"] = "onnx"
    runtime: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                description="ServingRuntime; omit to let KServe choose.")
    protocol_version: Literal["v1", "v2"] | None = Field(default=None, description="v2 on create if omitted.")
    min_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    max_replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    resources: Resources | None = Field(default=None, description="The amounts given are set, others kept.")
    deployment_mode: Literal["Serverless", "RawDeployment", "Knative", "Standard"] | None = Field(
        default=None, description="Create only; omit for the cluster default.")
    canary_traffic_percent: int | None = Field(
        default=None, ge=0, le=100,
        description="Canary update: the new revision gets this percent, the last rolled-out one the rest, until "
        "promote (Serverless only).",
    )
    promote: bool = Field(default=False, description="End the canary: the latest revision takes 100%.")
    dry_run: bool = Field(default=False, description=DRY_RUN)
    wait: bool = Field(default=False, description="Wait until Ready, with progress.")
    timeout_seconds: int = Field(default=120, ge=1, le=600, description="For wait.")

    @model_validator(mode="after")
    def _consistent(self) -> DeployModelArgs:
        if self.promote and self.canary_traffic_percent is not None:
            raise PydanticCustomError("promote_and_canary", "promote removes canary_traffic_percent: give one or "
                                      "the other")
        low, high = self.min_replicas, self.max_replicas
        if not replica_range_ok(low, high):
            raise PydanticCustomError("replica_range", "min_replicas ({low}) must not exceed max_replicas ({high})",
                                      {"low": low, "high": high})
        return self

    @field_validator("storage_uri")
    @classmethod
    def _no_dot_dot(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value and ".." in value:
            raise PydanticCustomError("model_name", 'a model name must not contain ".."')
        return value

    def policy_attrs(self) -> dict[str, Any]:
        """What policy bounds look at: the most and the fewest replicas asked for (both ends of the range are
        bounded: min_replicas 0 scales to zero), the model (service) name, the storage URI it loads."""
        asked = [v for v in (self.min_replicas, self.max_replicas) if v is not None]
        return {"replicas": max(asked) if asked else None, "min_replicas": self.min_replicas, "model": self.name,
                "storage_uri": self.storage_uri}


class DeployModelResult(_Result):
    name: str
    namespace: str
    action: Literal["created", "updated", "unchanged", "dry-run"]
    existed: bool
    mode: str | None = Field(description="Deployment mode the service runs in (null: cluster default, not known "
                             "yet).")
    storage_uri: str | None
    canary_traffic_percent: int | None = Field(description="canaryTrafficPercent in the spec after the call.")
    changes: list[FieldChange]
    notes: list[str] = Field(description="What KServe will do with this that is easy to miss.")
    dry_run: bool
    status: ModelStatusResult | None = Field(default=None, description="Final status when wait was set.")

    def audit_summary(self) -> dict[str, Any]:
        return {"action": self.action, "dry_run": self.dry_run, "mode": self.mode,
                "canary_traffic_percent": self.canary_traffic_percent,
                "changes": [c.model_dump(mode="json") for c in self.changes]}


def desired_predictor(current: Mapping[str, Any], args: DeployModelArgs, *, creating: bool) -> JSON:
    """The predictor spec after applying ``args`` to ``current``: only the fields asked for change. Pure."""
    predictor = copy.deepcopy(dict(current))
    model = predictor.setdefault("model", {})
    model["modelFormat"] = {**_dict(model.get("modelFormat")), "name": args.model_format}
    if args.storage_uri is not None:
        model["storageUri"] = args.storage_uri
    if args.runtime is not None:
        model["runtime"] = args.runtime
    if args.protocol_version is not None or creating:
        model["protocolVersion"] = args.protocol_version or "v2"
    if args.resources is not None:
        resources = _dict(model.get("resources"))
        for section, amounts in args.resources.as_dict().items():
            resources[section] = {**_dict(resources.get(section)), **amounts}
        model["resources"] = resources
    if args.min_replicas is not None:
        predictor["minReplicas"] = args.min_replicas
    if args.max_replicas is not None:
        predictor["maxReplicas"] = args.max_replicas
    if args.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = args.canary_traffic_percent
    if args.promote:
        predictor.pop("canaryTrafficPercent", None)
    return predictor


def new_inference_service(args: DeployModelArgs, cause: str) -> JSON:
    annotations = {CHANGE_CAUSE_ANNOTATION: cause}
    if args.deployment_mode is not None:
        annotations[MODE_ANNOTATION] = args.deployment_mode
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": args.name, "namespace": args.namespace, "annotations": annotations,
                     "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "spec": {"predictor": desired_predictor({}, args, creating=True)},
    }


def spec_patch(current: Mapping[str, Any], predictor: Mapping[str, Any], cause: str,
               extra: Mapping[str, str] | None = None) -> list[JSON]:
    """One JSON Patch: the whole predictor and our annotations (change-cause; the previous template when it
    changes). Pure.

    Guarded by ``metadata.generation``, which the API server bumps on every spec change and never on
    the KServe controller's status writes (issue 15 item 12). Annotations are set key by key, so
    others' annotations (not covered by generation on a custom resource) are never overwritten; an
    object with none at all is guarded by its resourceVersion instead.
    """
    ours = {CHANGE_CAUSE_ANNOTATION: cause}
    before = predictor_of(current)
    if template_of(before) != template_of(predictor):
        ours[PREVIOUS_SPEC_ANNOTATION] = json.dumps({"predictor": before}, sort_keys=True, separators=(",", ":"))
    ours.update(extra or {})
    predictor_op: JSON = {"op": "add", "path": "/spec/predictor", "value": dict(predictor)}
    if not isinstance(meta(current).get("annotations"), dict):
        rv = meta(current).get("resourceVersion")
        return [{"op": "replace", "path": "/metadata/resourceVersion", "value": rv}, predictor_op,
                {"op": "add", "path": "/metadata/annotations", "value": ours}]
    return [*guard(current, "/metadata/generation"), predictor_op,
            *({"op": "add", "path": f"/metadata/annotations/{pointer(k)}", "value": v} for k, v in ours.items())]


def deploy_notes(current: Mapping[str, Any] | None, args: DeployModelArgs, predictor: Mapping[str, Any],
                 mode: str | None) -> list[str]:
    """Refuse what KServe would silently ignore; note what is easy to miss. Pure."""
    notes: list[str] = []
    if current is None:
        if args.canary_traffic_percent is not None:
            raise ToolError("canary_traffic_percent: a new InferenceService's first revision always takes 100% of "
                            "traffic; deploy it first, then update it with canary_traffic_percent",
                            code="invalid_arguments", field="canary_traffic_percent", rule="canary-needs-a-rollout")
        if args.storage_uri is None:
            raise ToolError("storage_uri is required to create an InferenceService", code="invalid_arguments",
                            field="storage_uri", rule="required")
        if args.promote:
            notes.append("promote has no effect on a new InferenceService: its first revision takes 100%")
        return notes
    legacy = [k for k, v in predictor_of(current).items() if k != "model" and isinstance(v, dict) and "storageUri" in v]
    if legacy and "model" not in predictor_of(current):
        raise ToolError(f"{args.namespace}/{args.name} uses the old predictor schema (spec.predictor.{legacy[0]}); "
                        "deploy_model manages spec.predictor.model: migrate it, or change it with kubectl",
                        code="failed_precondition", rule="old-predictor-schema")
    had = mode_of(current)
    asked = normalize_mode(args.deployment_mode)
    if asked is not None and had is not None and asked != had:
        raise ToolError(f"deployment_mode: {args.namespace}/{args.name} runs in {had} mode, and KServe refuses to "
                        f"change the mode of an existing InferenceService; delete and recreate it to use {asked}",
                        code="invalid_arguments", field="deployment_mode", rule="immutable-deployment-mode")
    effective = asked or had
    canary = predictor.get("canaryTrafficPercent")
    if effective == RAW:
        if args.canary_traffic_percent is not None:
            raise ToolError("canary_traffic_percent: this InferenceService runs in RawDeployment mode, where KServe "
                            "has no canary and ignores canaryTrafficPercent (the new spec would take 100%); deploy "
                            "without it, and roll back with rollback (it restores the previous spec)",
                            code="invalid_arguments", field="canary_traffic_percent", rule="canary-unsupported")
        if isinstance(canary, int):
            notes.append(f"canaryTrafficPercent {canary} is in the spec but RawDeployment mode ignores it: "
                         "the new spec takes 100% once ready")
        return notes
    template_changes = template_of(predictor_of(current)) != template_of(predictor)
    if effective is None and isinstance(canary, int):
        notes.append("the deployment mode is not known (no annotation, none reported): if the cluster defaults to "
                     "RawDeployment/Standard, KServe ignores canaryTrafficPercent")
    rolled = _component(current).get("latestRolledoutRevision")
    if isinstance(canary, int) and template_changes:
        notes.append(f"canary: the new revision gets {canary}% once ready, the rest stays on "
                     f"{rolled or 'the last rolled-out revision'}; call again with \"promote\": true to roll it out, "
                     "rollback to send all traffic back")
    if isinstance(canary, int) and args.canary_traffic_percent is None and template_changes:
        notes.append(f"canaryTrafficPercent {canary} stays in the spec from an earlier call, so this update is "
                     f"a {canary}% canary too")
    if args.promote and not isinstance(_dict(predictor_of(current)).get("canaryTrafficPercent"), int):
        notes.append("promote: there was no canaryTrafficPercent; nothing to promote")
    return notes


def deploy_model(kube: Kube, args: DeployModelArgs, ctx: CallContext,
                 progress: ProgressCallback | None = None) -> DeployModelResult:
    """Create or update an ONNX InferenceService; canary/promote; server-side dry-run; optional wait."""
    ns, name = args.namespace, args.name
    cause = change_cause(ctx.principal, ctx.call_id)
    dry = "All" if args.dry_run else None
    custom = _custom(kube)

    def attempt() -> tuple[JSON | None, JSON, list[str]] | DeployModelResult:
        current = _find(kube, name, ns, ctx)
        # The bound on this read, which the write is guarded by (generation): issue 15 item 11.
        enforce_bounds(ctx, {**args.policy_attrs(), "current_replicas": replica_ceiling(current) if current else 0},
                       f"inferenceservice {ns}/{name} as read just before the write")
        predictor = (desired_predictor(predictor_of(current), args, creating=False) if current is not None
                     else desired_predictor({}, args, creating=True))
        notes = deploy_notes(current, args, predictor, mode_of(current) if current is not None else None)
        if current is None:
            after = kube.call(custom.create_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                              new_inference_service(args, cause), dry_run=dry,
                              what=f"create inferenceservice {ns}/{name}", audit_id=ctx.call_id)
            return current, after, notes
        extra = {}
        if args.deployment_mode is not None:
            extra[MODE_ANNOTATION] = args.deployment_mode
        annotated = _dict(meta(current).get("annotations")).get(MODE_ANNOTATION)
        if predictor == predictor_of(current) and (not extra or annotated == args.deployment_mode):
            status = None
            if args.wait and not args.dry_run:
                status = _wait_ready(kube, name, ns, ctx, float(args.timeout_seconds), progress,
                                     f"inferenceservice {ns}/{name} was unchanged", 0)
            return _deploy_result(args, "unchanged", current, current, notes, status)
        after = guarded_patch(kube, custom.patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name,
                              ops=spec_patch(current, predictor, cause, extra),
                              reread=lambda: _read(kube, name, ns, ctx),
                              what=f"update inferenceservice {ns}/{name}", audit_id=ctx.call_id, dry_run=dry)
        return current, after, notes

    outcome = retry_on_conflict(attempt, what=f"deploy_model {ns}/{name}", kind="InferenceService")
    if isinstance(outcome, DeployModelResult):
        return outcome
    current, after, notes = outcome
    if args.dry_run:
        return _deploy_result(args, "dry-run", current, after, notes)
    action: Literal["created", "updated"] = "created" if current is None else "updated"
    status = None
    if args.wait:
        status = _wait_ready(kube, name, ns, ctx, float(args.timeout_seconds), progress,
                             f"inferenceservice {ns}/{name} was {action}", int(meta(after).get("generation") or 0))
    return _deploy_result(args, action, current, after, notes, status)


def _deploy_result(args: DeployModelArgs, action: Literal["created", "updated", "unchanged", "dry-run"],
                   before: JSON | None, after: JSON, notes: list[str],
                   status: ModelStatusResult | None = None) -> DeployModelResult:
    canary = predictor_of(after).get("canaryTrafficPercent")
    return DeployModelResult(
        name=args.name, namespace=args.namespace, action=action, existed=before is not None,
        mode=(status.mode if status is not None else None) or mode_of(after) or mode_of(before),
        storage_uri=_model(after).get("storageUri"), canary_traffic_percent=canary if isinstance(canary, int) else None,
        changes=[] if action == "unchanged" else diff_services(before, after), notes=notes, dry_run=args.dry_run,
        status=status,
    )


def wait_step(s: ModelStatusResult, generation: int) -> tuple[float, str | None]:
    """(progress out of 3, failure or None) of a service converging on ``generation``. Pure.

    1: the controller saw the spec; 2: the newest revision is ready; 3: Ready. A model that cannot
    load, or a spec KServe cannot serve, is a failure now rather than a timeout later.
    """
    if s.observed_generation < generation:
        return 0.0, None
    model = s.model
    if model is not None and model.transition_status in ("BlockedByFailedLoad", "InvalidSpec"):
        return 1.0, f"model {model.transition_status}" + _failure(model)
    failed = next((c for c in s.conditions if c.status == "False" and c.type != "Ready"), None)
    if failed is not None and not s.ready:
        return 1.0, (f"{failed.type} False" + (f" ({_said(failed.reason)})" if failed.reason else "")
                     + (f": {_said(failed.message)}" if failed.message else ""))
    if s.done:
        return 3.0, None
    newest_ready = s.mode == RAW or s.latest_created_revision == s.latest_ready_revision
    return (2.0 if newest_ready else 1.0), None


def _wait_ready(kube: Kube, name: str, namespace: str, ctx: CallContext, timeout: float,
                progress: ProgressCallback | None, done_what: str, generation: int) -> ModelStatusResult:
    """Poll until the service serves ``generation``; ToolError ``rollout_failed``/``timeout`` otherwise."""
    deadline = time.monotonic() + timeout
    last: str | None = None
    while True:
        s = status_result(_read(kube, name, namespace, ctx))
        value, failure = wait_step(s, generation)
        if failure is not None:
            raise ToolError(f"{done_what}, but it cannot become Ready: {failure}", code="rollout_failed",
                            rule="model-not-ready")
        if s.summary != last:
            last = s.summary
            if not _report(progress, value, 3.0, s.summary):
                progress = None
        if value >= 3.0:
            return s
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ToolError(f"{done_what}, but it is not Ready after {timeout:g} s: {s.summary}. It continues in "
                            "the cluster; follow it with model_status.", code="timeout", rule="ready-timeout")
        time.sleep(min(POLL_SECONDS, remaining))


# --------------------------------------------------------------------------- scale and rollback (kind=InferenceService)


def scale_inference_service(kube: Kube, args: ScaleArgs, ctx: CallContext) -> ScaleResult:
    """Set ``minReplicas``/``maxReplicas`` of the predictor (one guarded JSON Patch, with change-cause)."""
    ns, name = args.namespace, args.name
    what = f"scale inferenceservice {ns}/{name}"
    dry = "All" if args.dry_run else None
    cause = change_cause(ctx.principal, ctx.call_id)

    def attempt() -> ScaleResult:
        current = _read(kube, name, ns, ctx)
        # The bound on this read, which the write is guarded by (generation): issue 15 item 11.
        enforce_bounds(ctx, {**args.policy_attrs(), "current_replicas": replica_ceiling(current)},
                       f"inferenceservice {ns}/{name} as read just before the write")
        predictor = copy.deepcopy(predictor_of(current))
        low, high = predictor.get("minReplicas"), predictor.get("maxReplicas")
        target, metric = predictor.get("scaleTarget"), predictor.get("scaleMetric")
        new_low = args.min_replicas if args.min_replicas is not None else low
        new_high = args.max_replicas if args.max_replicas is not None else high
        new_target = args.scale_target if args.scale_target is not None else target
        new_metric = args.scale_metric if args.scale_metric is not None else metric
        if (isinstance(new_low, int) and isinstance(new_high, int) and new_high > 0  # 0: no upper limit set
                and not replica_range_ok(new_low, new_high)):
            raise ToolError(f"min_replicas {new_low} would exceed max_replicas {new_high}", code="invalid_arguments",
                            field="min_replicas", rule="replica-range")
        if (new_low, new_high, new_target, new_metric) == (low, high, target, metric):
            return _scale_result(args, "unchanged", current, current, None)
        for key, value in (("minReplicas", new_low), ("maxReplicas", new_high), ("scaleTarget", new_target),
                           ("scaleMetric", new_metric)):
            if value is not None:
                predictor[key] = value
        after = guarded_patch(kube, _custom(kube).patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name,
                              ops=spec_patch(current, predictor, cause), reread=lambda: _read(kube, name, ns, ctx),
                              what=what, audit_id=ctx.call_id, dry_run=dry)
        message = None
        canary = predictor.get("canaryTrafficPercent")
        if mode_of(current) != RAW:
            message = "in Serverless mode a replica change makes a new revision" + (
                f"; canaryTrafficPercent {canary} in the spec makes it a {canary}% canary"
                if isinstance(canary, int) else "")
        return _scale_result(args, "dry-run" if args.dry_run else "scaled", current, after, message)

    return retry_on_conflict(attempt, what=what, kind="InferenceService")


def _scale_result(args: ScaleArgs, action: Literal["scaled", "unchanged", "dry-run"], before: JSON, after: JSON,
                  message: str | None) -> ScaleResult:
    b, a = predictor_of(before), predictor_of(after)
    return ScaleResult(name=args.name, namespace=args.namespace, kind=KIND, action=action, replicas_before=None,
                       replicas_after=None, min_replicas_before=b.get("minReplicas"),
                       min_replicas_after=a.get("minReplicas"), max_replicas_before=b.get("maxReplicas"),
                       max_replicas_after=a.get("maxReplicas"), scale_target_after=a.get("scaleTarget"),
                       scale_metric_after=a.get("scaleMetric"), dry_run=args.dry_run, message=message)


RollbackStrategy = Literal["canary-traffic-to-0", "restored-previous-spec"]


def rollback_plan(obj: Mapping[str, Any]) -> tuple[RollbackStrategy, JSON | None, str]:
    """Which rollback applies, the predictor to write (None: nothing to do) and the sentence saying so. Pure.

    Serverless with a canary taking traffic: canaryTrafficPercent 0, so all traffic goes back to the
    last rolled-out revision (KServe's rollback). Otherwise (RawDeployment, which has no canary, or
    nothing in flight): the predictor spec opsgate recorded before its last template change.
    """
    predictor = predictor_of(obj)
    comp = _component(obj)
    mode = mode_of(obj)
    canary = predictor.get("canaryTrafficPercent")
    rolled = comp.get("latestRolledoutRevision")
    latest = comp.get("latestReadyRevision") or comp.get("latestCreatedRevision")
    if mode != RAW and isinstance(canary, int) and rolled and latest and latest != rolled:
        if canary == 0:
            return ("canary-traffic-to-0", None,
                    f"canaryTrafficPercent is already 0: all traffic is on {rolled}; nothing changed")
        restored = copy.deepcopy(predictor)
        restored["canaryTrafficPercent"] = 0
        return ("canary-traffic-to-0", restored,
                f"set canaryTrafficPercent to 0 (was {canary}): all traffic goes back to {rolled}, the last "
                f"rolled-out revision; {latest} stays deployed with 0% (deploy_model to replace it)")
    raw = _dict(meta(obj).get("annotations")).get(PREVIOUS_SPEC_ANNOTATION)
    why = ("RawDeployment mode has no canary" if mode == RAW else "no canary is taking traffic")
    try:
        recorded = _dict(_dict(json.loads(raw)).get("predictor")) if isinstance(raw, str) else {}
    except ValueError:
        recorded = {}
    if not recorded:
        raise ToolError(
            f"nothing to roll back to: {why}, and opsgate has recorded no previous spec on this InferenceService "
            f"(annotation {PREVIOUS_SPEC_ANNOTATION}, written when deploy_model or scale changes the model)",
            code="failed_precondition", rule="no-previous-spec")
    restored = template_of(recorded)
    if template_of(predictor) == restored:
        return "restored-previous-spec", None, "already at the previous spec opsgate recorded; nothing changed"
    uri_before, uri_after = _dict(predictor.get("model")).get("storageUri"), _dict(restored.get("model")).get(
        "storageUri")
    change = f" (storageUri {uri_before} -> {uri_after})" if uri_before != uri_after else ""
    return ("restored-previous-spec", restored,
            f"{why}: restored the previous spec that opsgate recorded{change}; it rolls out as a new revision")


def rollback_inference_service(kube: Kube, args: RollbackArgs, ctx: CallContext) -> RollbackResult:
    """Roll an InferenceService back: canary traffic to 0, or the recorded previous spec; says which."""
    ns, name = args.namespace, args.name
    if args.to_revision is not None:
        raise ToolError("to_revision applies to Deployments; an InferenceService goes back to its last rolled-out "
                        "revision (Serverless canary) or the spec opsgate recorded", code="invalid_arguments",
                        field="to_revision", rule="not-for-inferenceservice")
    what = f"rollback inferenceservice {ns}/{name}"
    dry = "All" if args.dry_run else None
    cause = change_cause(ctx.principal, ctx.call_id)

    def attempt() -> RollbackResult:
        current = _read(kube, name, ns, ctx)
        strategy, predictor, message = rollback_plan(current)
        comp = _component(current)
        from_revision = revision_number(comp.get("latestReadyRevision") or comp.get("latestCreatedRevision"))
        to_revision = (revision_number(comp.get("latestRolledoutRevision")) if strategy == "canary-traffic-to-0"
                       else None)
        base = RollbackResult(name=name, namespace=ns, kind=KIND, action="unchanged", from_revision=from_revision,
                              to_revision=to_revision, new_revision=None, changes=[], dry_run=args.dry_run,
                              message=message, strategy=strategy)
        if predictor is None:
            return base
        enforce_bounds(ctx, restored_service_attrs(predictor_of(current), predictor),
                       f"the spec a rollback of inferenceservice {ns}/{name} restores")
        after = guarded_patch(kube, _custom(kube).patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name,
                              ops=spec_patch(current, predictor, cause), reread=lambda: _read(kube, name, ns, ctx),
                              what=what, audit_id=ctx.call_id, dry_run=dry)
        changes = diff_services(current, after)
        if args.dry_run:
            return base.model_copy(update={"action": "dry-run", "changes": changes,
                                           "message": f"would have: {message} (dry-run, nothing changed)"})
        return base.model_copy(update={"action": "rolled-back", "changes": changes})

    return retry_on_conflict(attempt, what=what, kind="InferenceService")


# --------------------------------------------------------------------------- list_workloads rows


def inference_service_rows(kube: Kube, namespace: str, ctx: CallContext, now: datetime,
                           required: bool) -> list[WorkloadRow]:
    """InferenceServices as workload rows. Where KServe is not installed: none, or an error if ``required``."""
    items: list[JSON] = []
    token: str | None = None
    custom = _custom(kube)
    while True:
        try:
            chunk = kube.call(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, limit=500,
                              _continue=token, what=f"list inferenceservices in {namespace}", audit_id=ctx.call_id)
        except KubeApiError as exc:
            if exc.status == 404 and not required:
                return []
            raise _no_kserve(exc) if exc.status == 404 else exc from exc
        items.extend(i for i in chunk.get("items") or [] if isinstance(i, dict))
        token = _dict(chunk.get("metadata")).get("continue") or None
        if not token:
            break
    rows = []
    for obj in items:
        s = status_result(obj)
        low = predictor_of(obj).get("minReplicas")
        desired = low if isinstance(low, int) else 1
        rows.append(WorkloadRow(
            name=s.name, kind=KIND, desired=desired, ready=desired if s.ready else 0,
            images=[s.storage_uri] if s.storage_uri else [],
            revision=revision_number(s.latest_ready_revision or s.latest_created_revision),
            age_seconds=_age_seconds(obj, now),
        ))
    return rows


# --------------------------------------------------------------------------- kserve_infer


class KServeInferArgs(_Args):
    name: ServiceName
    namespace: Namespace
    inputs: dict[str, TensorValue] | list[OipTensorIn] = Field(
        description='v2: {input name: nested list}, e.g. {"features": [[5.1, 3.5, 1.4, 0.2]]}, or the protocol\'s '
        'tensors; v1: {"instances": [...]}.',
    )
    protocol: Literal["v1", "v2"] | None = Field(default=None, description="Default: the service's.")
    url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s/?#]+[^\s?#]*$",
                            description="Instead of status.url (e.g. a port-forward); policy may forbid it.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=30, description="Read timeout.")

    def input_elements(self) -> int:
        """Values the call sends, for the policy's max_input_elements (no numpy)."""
        if isinstance(self.inputs, dict) and set(self.inputs) == {"instances"}:
            return input_elements({"instances": self.inputs["instances"]})
        return input_elements(self.inputs)

    def policy_attrs(self) -> dict[str, Any]:
        return {"model": self.name, "input_elements": self.input_elements(), "url_override": self.url is not None}


class KServeInferResult(InferResult):
    """Like the local ``infer`` result (outputs nested by shape, numpy dtype names), plus where it ran."""

    model_config = ConfigDict(extra="forbid")

    namespace: str
    protocol: str
    url: str = Field(description="Base URL called.")
    model_version: str | None = None
    served_by: str | None = Field(default=None, description="Revision that answered, when the server says so.")
    metadata_checked: bool = Field(default=True, description="false: the server lists no model inputs "
                                   "(e.g. a KServe custom predictor, or v1), so inputs were sent unchecked.")
    notes: list[str] = Field(default_factory=list)

    def audit_summary(self) -> dict[str, Any]:
        return {"model": self.model, "url": self.url, "protocol": self.protocol, "model_version": self.model_version,
                "served_by": self.served_by, "metadata_checked": self.metadata_checked,
                "outputs": [{"name": o.name, "shape": o.shape} for o in self.outputs]}


_pool_lock = threading.Lock()
_pools: list[PoolManager] = []
_META_CACHE_SIZE: Final = 64
_meta_cache: OrderedDict[tuple[str, ...], ModelMetadata] = OrderedDict()


def _pool() -> PoolManager:
    """One keep-alive pool for every model server, made on first use (urllib3 is imported then)."""
    if _pools:
        return _pools[0]
    with _pool_lock:
        if not _pools:
            import urllib3

            _pools.append(urllib3.PoolManager(num_pools=32, maxsize=8, retries=False))
        return _pools[0]


@dataclass(frozen=True, slots=True)
class _Http:
    """A model server's answer: status, body (within the size cap), headers."""

    status: int
    body: bytes
    headers: Mapping[str, str]


def _http(method: str, url: str, body: bytes | None, read_timeout: float, what: str) -> _Http:
    """One request to a model server; the answer is read up to the size cap. ToolError on any failure."""
    import urllib3
    from urllib3.exceptions import (
        ConnectTimeoutError,
        HTTPError,
        MaxRetryError,
        NewConnectionError,
        ProtocolError,
        ReadTimeoutError,
    )

    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout)
    response = None
    try:
        response = _pool().request(method, url, body=body, headers=headers, timeout=timeout, retries=False,
                                   redirect=False, preload_content=False)
        data = response.read(RESPONSE_MAX_BYTES + 1)
        if len(data) > RESPONSE_MAX_BYTES:
            response.close()  # a half-read body: this connection must not be reused
            raise ToolError(f"{what}: the answer from {url} is over {RESPONSE_MAX_BYTES // 2**20} MiB; send a "
                            "smaller batch", code="model_error", rule="response-too-large")
        response.release_conn()
        return _Http(response.status, data, response.headers)
    except HTTPError as exc:
        if response is not None:
            response.close()
        cause: BaseException = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
        if isinstance(cause, NewConnectionError):
            raise _unreachable(what, url, f"cannot connect ({_reason(cause)})", "connect-failed") from None
        if isinstance(cause, ConnectTimeoutError):
            raise _unreachable(what, url, f"no connection within {CONNECT_TIMEOUT:g} s", "timeout") from None
        if isinstance(cause, ReadTimeoutError):
            raise ToolError(f"{what}: the model server at {url} did not answer within {read_timeout:g} s "
                            "(timeout_seconds)", code="timeout", rule="read-timeout") from None
        if isinstance(cause, ProtocolError):
            raise _unreachable(what, url, f"the connection was dropped ({_reason(cause)})",
                               "connection-dropped") from None
        raise _unreachable(what, url, f"{type(cause).__name__}: {_reason(cause)}", "connect-failed") from None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if "object at 0x" in text else text


def _unreachable(what: str, url: str, why: str, rule: str) -> ToolError:
    return ToolError(f"{what}: the model server at {url} did not answer: {why}", code="model_unreachable", rule=rule)


_HTTP_RULES: Final[Mapping[int, str]] = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
    413: "too-large", 422: "invalid", 429: "too-many-requests", 501: "not-implemented", 503: "unavailable",
}


class ModelServerError(ToolError):
    """A model server's own error answer; ``status`` (its HTTP status) reaches the envelope's ``http_status``."""

    def __init__(self, message: str, *, status: int, field: str | None, rule: str) -> None:
        super().__init__(message, code="model_error", field=field, rule=rule)
        self.status = status


def _quoted(body: bytes, limit: int = 1000) -> tuple[str, bool]:
    """The server's text (its ``{"error"}`` message, else the body) as a capped JSON string literal,
    and whether the body was JSON: outside words are quoted in our sentences, never spliced in."""
    try:
        json.loads(body)
        is_json = True
    except (ValueError, UnicodeDecodeError):
        is_json = False
    return json.dumps(error_text(body, limit), ensure_ascii=False), is_json


def model_http_error(status: int, body: bytes, what: str, url: str) -> ModelServerError:
    """A model server's error answer (KServe's and Triton's ``{"error": "..."}``, or any body) relayed
    quoted and capped, with its HTTP status; ``field`` says what to look at: the model's name for
    404/503, else the inputs sent. Pure."""
    rule = _HTTP_RULES.get(status) or ("server-error" if status >= 500 else f"http-{status}")
    said, is_json = _quoted(body)
    how = "saying" if is_json else "with a body that is not JSON"
    return ModelServerError(f"{what}: the model server at {url} answered HTTP {status}, {how}: {said}",
                            status=status, field="name" if status in (404, 503) else "inputs", rule=rule)


def _json(response: _Http, what: str, url: str) -> Any:
    if response.status != 200:
        raise model_http_error(response.status, response.body, what, url)
    try:
        return json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        raise ToolError(f"{what}: the model server at {url} answered HTTP 200 with a body that is not JSON: "
                        f"{_quoted(response.body, 200)[0]}", code="model_error", rule="bad-response") from None


def _metadata(base: str, name: str, key: tuple[str, ...], timeout: float) -> ModelMetadata:
    """The model's metadata, cached per service version (uid, resourceVersion) and URL."""
    with _pool_lock:
        cached = _meta_cache.get(key)
        if cached is not None:
            _meta_cache.move_to_end(key)
            return cached
    url = f"{base}/v2/models/{quote(name, safe='')}"
    what = f"read the metadata of model {name}"
    meta_doc = parse_metadata(_json(_http("GET", url, None, timeout, what), what, url), what)
    with _pool_lock:
        _meta_cache[key] = meta_doc
        while len(_meta_cache) > _META_CACHE_SIZE:
            _meta_cache.popitem(last=False)
    return meta_doc


def _v1_output(predictions: Any) -> TensorOut:
    try:
        shape, leaves = flatten(predictions)
    except ValueError:
        shape, leaves = [len(predictions) if isinstance(predictions, list) else 1], []
    kinds = {type(v) for v in leaves}
    dtype = ("int64" if kinds <= {int} else "float64" if kinds <= {int, float} else "bool" if kinds == {bool}
             else "object") if leaves else "object"
    return TensorOut(name="predictions", dtype=dtype, shape=shape, data=predictions)


V1_NOTE: Final = "no metadata check was possible: protocol v1 has no model metadata; the instances were sent as given"


def unchecked_note(inferred: Mapping[str, str]) -> str:
    """What the result says when the model's metadata lists no inputs. Pure."""
    text = ("no metadata check was possible: the model server lists no inputs for this model (as a KServe "
            "custom predictor does), so the inputs were sent as given")
    if inferred:
        text += "; datatypes inferred from the values: " + ", ".join(
            f"{json.dumps(name, ensure_ascii=False)} {datatype}" for name, datatype in inferred.items())
    return text + "; names, shapes and datatypes are the server's to refuse"


def kserve_infer(kube: Kube, args: KServeInferArgs, ctx: CallContext) -> KServeInferResult:
    """Call a Ready InferenceService over the Open Inference Protocol (v2) or v1. v2 inputs are checked
    against the model's metadata first when it lists inputs (Triton does); when it does not (KServe's
    custom predictors), they are sent as given and the result says so."""
    ns, name = args.namespace, args.name
    obj = _read(kube, name, ns, ctx)
    uri = _model(obj).get("storageUri")
    if isinstance(uri, str):  # the `models` bound named the service; this bounds the model it actually serves
        enforce_bounds(ctx, {"storage_uri": uri}, f"inferenceservice {ns}/{name} serves a model")
    s = status_result(obj)
    if not s.ready:
        raise ToolError(f"inferenceservice {ns}/{name} cannot be called: {s.summary}", code="failed_precondition",
                        rule="not-ready")
    base = (args.url or s.url or "").rstrip("/")
    if not base:
        raise ToolError(f"inferenceservice {ns}/{name} is Ready but has no status.url; pass url",
                        code="failed_precondition", rule="no-url")
    protocol = args.protocol or protocol_of(obj)
    timeout = float(args.timeout_seconds)
    if protocol == "v1":
        body = args.inputs if isinstance(args.inputs, dict) and "instances" in args.inputs else None
        if body is None or len(body) != 1:
            raise ToolError('inputs: a v1 call takes {"instances": [...]}', code="invalid_arguments",
                            field="inputs", rule="v1-instances")
        url = f"{base}/v1/models/{quote(name, safe='')}:predict"
        what = f"predict with model {name}"
        response = _http("POST", url, json.dumps(body, separators=(",", ":")).encode(), timeout, what)
        doc = _json(response, what, url)
        if not isinstance(doc, dict) or "predictions" not in doc:
            raise ToolError(f'{what}: the model server at {url} answered without "predictions"',
                            code="model_error", rule="bad-response")
        return KServeInferResult(model=name, outputs=[_v1_output(doc["predictions"])], namespace=ns,
                                 protocol="v1", url=base, served_by=response.headers.get("X-Sandbox-Revision"),
                                 metadata_checked=False, notes=[V1_NOTE])
    if isinstance(args.inputs, dict) and set(args.inputs) == {"instances"}:
        raise ToolError('inputs: {"instances": ...} is the v1 form; this call uses protocol v2: give '
                        "{input name: values}", code="invalid_arguments", field="inputs", rule="v2-inputs")
    key = (base, name, str(meta(obj).get("uid")), str(meta(obj).get("resourceVersion")))
    metadata = _metadata(base, name, key, timeout)
    notes: list[str] = []
    if metadata.checkable:
        request = encode_request(metadata, args.inputs, MAX_INPUT_ELEMENTS)  # refuses bad inputs before any infer
    else:  # KServe's custom predictors list no inputs: send what the caller gave, and say so
        request, inferred = encode_unchecked(args.inputs, MAX_INPUT_ELEMENTS)
        notes.append(unchecked_note(inferred))
    url = f"{base}/v2/models/{quote(name, safe='')}/infer"
    what = f"infer with model {name}"
    response = _http("POST", url, json.dumps(request, separators=(",", ":")).encode(), timeout, what)
    outputs, _, version = decode_response(_json(response, what, url), what)
    return KServeInferResult(model=name, outputs=outputs, namespace=ns, protocol="v2", url=base,
                             model_version=version, served_by=response.headers.get("X-Sandbox-Revision"),
                             metadata_checked=metadata.checkable, notes=notes)
