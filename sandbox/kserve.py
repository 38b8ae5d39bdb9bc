"""KServe in the sandbox: the InferenceService CRD, its controller, and Open Inference Protocol servers.

``SandboxCluster`` registers ``INFERENCESERVICE`` (``serving.kserve.io/v1beta1``,
short name ``isvc``, status subresource, the columns ``kubectl get isvc`` shows:
URL, READY, PREV, LATEST, PREVROLLEDOUTREVISION, LATESTREADYREVISION, AGE) and
runs a ``KServeController`` that behaves like KServe over Knative, as far as
opsgate relies on it (as KServe's ksvc reconciler writes it):

- Revisions: a change of ``spec.predictor`` other than ``canaryTrafficPercent``
  makes a new revision ``{isvc}-predictor-0000N`` (Knative makes one per change
  of the revision template; the traffic split lives in the route, so changing
  only the canary percent, promoting or rolling back makes none). A revision
  loads its model ``rollout_delay`` seconds after it is created, then is ready
  or failed; a failed one never receives traffic.
- Traffic (Serverless/Knative mode), as KServe's ksvc reconciler writes it:
  no ``canaryTrafficPercent`` (or no revision rolled out yet): the latest ready
  revision takes 100%; with ``canaryTrafficPercent: N``: the latest ready
  revision N% (tag ``latest``), ``latestRolledoutRevision`` the rest (tag
  ``prev``); N = 0 is KServe's rollback. A revision becomes
  ``latestRolledoutRevision`` when it is ready and holds 100%, and the one it
  replaces becomes ``previousRolledoutRevision``.
- RawDeployment/Standard mode (annotation ``serving.kserve.io/deploymentMode``;
  Serverless when unset, ``KServeController(default_mode=...)`` to change):
  ``canaryTrafficPercent`` is ignored, as KServe does; the newest ready revision
  serves everything and ``components.predictor`` reports only
  ``latestCreatedRevision`` (a number, the Deployment revision). Changing the
  mode of an existing service is refused with 422, as KServe's webhook does.
- Status: ``url``, ``address``, ``deploymentMode``, ``observedGeneration``,
  conditions (``PredictorConfigurationReady``, ``PredictorRouteReady`` in
  Serverless mode; ``PredictorReady``, ``IngressReady``, ``Ready`` in both),
  ``components.predictor`` (revisions and ``traffic[]``) and ``modelStatus``
  (``transitionStatus`` UpToDate / InProgress / BlockedByFailedLoad /
  InvalidSpec, ``states``, ``lastFailureInfo``).

Serving: one small threaded HTTP server per InferenceService, on
``127.0.0.1:<own port>``, started when its first revision is ready and kept
(same port, same ``status.url``) until the service is deleted or the cluster
stops. One server per service, not one shared server routing by Host, so the
URL a client reads from status works as is, with the protocol's own paths:
``GET /v2/health/live|ready``, ``GET /v2/models/{isvc}`` (metadata, platform
``onnxruntime_onnx``), ``GET /v2/models/{isvc}/ready``, ``POST
/v2/models/{isvc}/infer``; for ``protocolVersion: v1`` (KServe's default when
unset) ``GET /v1/models/{isvc}`` and ``POST /v1/models/{isvc}:predict``.
Errors are ``{"error": "..."}`` with 400 (bad request), 404 (unknown model or
path), 503 (no ready revision), 500 (the model failed). Every answer carries
``X-Sandbox-Revision``, the revision that served it. v2 infer also takes the
binary tensor data extension, as Triton and KServe do (so ``tritonclient.http``
works with ``binary_data=True``): a request with ``Inference-Header-Content-Length``
is that many bytes of JSON header, then the raw little-endian bytes of each
input marked ``parameters.binary_data_size``; outputs requested with
``parameters.binary_data: true`` (or all, with the request parameter
``binary_data_output: true``) are answered the same way, the header length in
``Inference-Header-Content-Length`` (codec in ``opsgate.tools.oip``).

Canary routing is deterministic: infer/predict requests are spread by smooth
weighted round robin (nginx's), so any 100 consecutive requests split exactly
by the percentages, and 5 requests at 80/20 go ``prev, prev, latest, prev,
prev``. Metadata and ready requests go where the next infer request will go,
without using up its turn, so a client's metadata check and its infer call
meet the same revision. ``Knative-Serving-Tag: prev|latest`` pins a request to
the tagged revision, like Knative's tag header routing.

Models: ``storageUri`` ``file:///abs/path/name.onnx``, or a bare model name
resolved in the controller's models folder (default: the shipped
``tools/models``), run with onnxruntime through ``ModelStore`` (input checks
and errors as the local ``infer`` tool). Only ONNX (``modelFormat.name:
onnx``, or the old ``predictor.onnx`` form) is served; any other format, or a
remote URI, fails to load with a reason in ``modelStatus``.

Test hooks on the controller (``cluster.kserve``): ``inject_fault(name,
namespace, status=/delay=/drop=)`` for a 500 or a slow model, ``requests``
(what each model server was asked, newest last) and ``infer_requests()``.

Differences from KServe, on purpose: no Knative Services, Revisions, Routes,
Deployments or Pods are created (revisions live in the controller); no
autoscaling (min/maxReplicas are stored, not acted on); no storage
initializer, so nothing is downloaded; no gRPC, no compressed bodies, no
``/versions/{v}`` paths, no ``spec.canary[]``, no transformer/explainer components; tags are written in a
canary split without the ``enable-tag-routing`` annotation; in raw mode a
failed new revision makes ``PredictorReady`` False (KServe reports the
Deployment's Available condition, which stays True while old pods serve).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

from opsgate.tools import oip
from opsgate.tools.errors import ToolError
from opsgate.tools.tensors import MODEL_NAME_RE, MODELS_DIR_DEFAULT, InferArgs, ModelInputError, TensorSpec
from opsgate.vocab.limits import replica_range_ok
from opsgate.vocab.names import DNS1035_RE

from .controllers import Controller
from .crd import (
    inference_service_schema,
    prune_and_default_inference_service,
    validate_inference_service_schema,
)
from .errors import Cause
from .faults import Fault, FaultTable
from .http import TrackingHTTPServer
from .logs import log
from .resources import Column, ResourceType
from .store import now_rfc3339
from .tables import AGE_COLUMN
from .validation import invalid_value, not_supported, required

if TYPE_CHECKING:
    from opsgate.tools.inference import ModelStore

JSON = dict[str, Any]

GROUP: Final = "serving.kserve.io"
VERSION: Final = "v1beta1"
MODE_ANNOTATION: Final = "serving.kserve.io/deploymentMode"
SERVERLESS: Final = "Serverless"
RAW: Final = "RawDeployment"
MODEL_MESH: Final = "ModelMesh"
#: Annotation values -> the mode they mean (recent releases renamed Serverless/RawDeployment).
MODES: Final[dict[str, str]] = {
    "Serverless": SERVERLESS, "Knative": SERVERLESS, "RawDeployment": RAW, "Standard": RAW, "ModelMesh": MODEL_MESH,
}
PROTOCOLS: Final = ("v1", "v2", "grpc-v1", "grpc-v2")
PLATFORM: Final = "onnxruntime_onnx"
TAG_HEADER: Final = "Knative-Serving-Tag"
REVISION_HEADER: Final = "X-Sandbox-Revision"
BODY_MAX: Final = 16 * 2**20
REVISIONS_KEPT: Final = 20
REQUEST_LOG: Final = 1000


# --------------------------------------------------------------------------- pure: object access


def _dict(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _predictor(obj: JSON) -> JSON:
    return _dict(_dict(obj.get("spec")).get("predictor"))


def normalize_mode(value: Any) -> str | None:
    """The mode an annotation (or ``status.deploymentMode``) names: Serverless, RawDeployment, ModelMesh."""
    return MODES.get(value) if isinstance(value, str) else None


def deployment_mode(obj: JSON, default: str = SERVERLESS) -> str:
    """The mode a service runs in: its annotation, else the one the controller reported, else ``default``."""
    annotations = _dict(_dict(obj.get("metadata")).get("annotations"))
    return (normalize_mode(annotations.get(MODE_ANNOTATION))
            or normalize_mode(_dict(obj.get("status")).get("deploymentMode")) or default)


def predictor_template(obj: JSON) -> JSON:
    """What a revision is made from: the predictor spec without ``canaryTrafficPercent`` (a route setting)."""
    template = copy.deepcopy(_predictor(obj))
    template.pop("canaryTrafficPercent", None)
    return template


def revision_name(isvc: str, number: int) -> str:
    return f"{isvc}-predictor-{number:05d}"


@dataclass(frozen=True)
class ModelSpec:
    format: str | None
    storage_uri: str | None
    protocol: str


def model_spec(template: JSON) -> ModelSpec:
    """Format, storage URI and protocol of a predictor: ``model:`` (current schema) or ``onnx:`` (old one)."""
    model = template.get("model")
    if isinstance(model, dict):
        fmt = _dict(model.get("modelFormat")).get("name")
        return ModelSpec(str(fmt).lower() if isinstance(fmt, str) else None, model.get("storageUri"),
                         str(model.get("protocolVersion") or "v1"))
    for key, value in template.items():
        if isinstance(value, dict) and ("storageUri" in value or key in ("onnx", "sklearn", "tensorflow", "pytorch",
                                                                         "triton", "xgboost", "lightgbm")):
            return ModelSpec(key.lower(), value.get("storageUri"), str(value.get("protocolVersion") or "v1"))
    return ModelSpec(None, None, "v1")


def resolve_storage(uri: str, models_dir: Path) -> tuple[Path, str]:
    """(folder, model name) of a local ONNX model; ValueError saying what the sandbox can serve instead."""
    if uri.startswith("file://"):
        path = Path(unquote(uri[len("file://"):]))
        if not path.is_absolute() or path.suffix != ".onnx" or not MODEL_NAME_RE.fullmatch(path.stem):
            raise ValueError(f"storageUri {uri!r}: a file:// URI must name an absolute path to a .onnx file")
        return path.parent, path.stem
    if MODEL_NAME_RE.fullmatch(uri) and ".." not in uri:
        return models_dir, uri
    raise ValueError(f"the sandbox cannot download {uri!r}: it serves local ONNX models only, "
                     f"file:///abs/path/model.onnx or a model name in {models_dir}")


# --------------------------------------------------------------------------- pure: traffic


def traffic_targets(canary: int | None, latest_ready: str | None, rolled_out: str | None) -> list[JSON]:
    """The predictor's ``traffic[]`` as KServe's ksvc reconciler asks for it, resolved to revision names.

    With a canary percent and a revision rolled out before, the latest ready revision gets that
    percent and the rolled-out one the rest; otherwise the latest ready revision gets everything.
    """
    if latest_ready is None:
        return []
    if canary is not None and rolled_out:
        targets: list[JSON] = [{"revisionName": latest_ready, "percent": canary, "latestRevision": True,
                                "tag": "latest"}]
        if canary < 100:
            targets.append({"revisionName": rolled_out, "percent": 100 - canary, "latestRevision": False,
                            "tag": "prev"})
        return targets
    return [{"revisionName": latest_ready, "percent": 100, "latestRevision": True}]


def rolled_out_after(traffic: Sequence[JSON], latest_ready: str | None, rolled_out: str | None,
                     previous: str | None) -> tuple[str | None, str | None]:
    """(latestRolledoutRevision, previousRolledoutRevision) after ``traffic`` is applied.

    A ready revision holding 100% is rolled out; the one it replaces becomes the previous one.
    """
    if latest_ready is None:
        return rolled_out, previous
    share = sum(int(t.get("percent") or 0) for t in traffic if t.get("revisionName") == latest_ready)
    if share == 100 and rolled_out != latest_ready:
        return latest_ready, rolled_out
    return rolled_out, previous


def pick_target(weights: Sequence[int], credits: list[int]) -> int:
    """Smooth weighted round robin: the index to serve next; ``credits`` (one per weight) is updated.

    Deterministic, and over any ``sum(weights)`` consecutive picks each index is chosen exactly
    its weight's times, interleaved rather than in runs. Weight 0 is never chosen.
    """
    total = sum(weights)
    best = -1
    for i, weight in enumerate(weights):
        credits[i] += weight
        if weight > 0 and (best < 0 or credits[i] > credits[best]):
            best = i
    if best >= 0:
        credits[best] -= total
    return best


# --------------------------------------------------------------------------- pure: validation (the webhook)


def validate_inference_service(obj: JSON, old: JSON | None) -> list[Cause]:
    """What KServe's validating webhook refuses, worded as API field errors (422)."""
    causes: list[Cause] = []
    meta = _dict(obj.get("metadata"))
    name = meta.get("name")
    if isinstance(name, str) and (len(name) > 63 or not DNS1035_RE.fullmatch(name)):
        causes.append(invalid_value("metadata.name", name, "a DNS-1035 label must consist of lower case "
                                    "alphanumeric characters or '-', start with an alphabetic character, and "
                                    "end with an alphanumeric character (at most 63 characters)"))
    predictor = _dict(obj.get("spec")).get("predictor")
    if not isinstance(predictor, dict):
        causes.append(required("spec.predictor"))
        predictor = {}
    canary = predictor.get("canaryTrafficPercent")
    if canary is not None and (not isinstance(canary, int) or isinstance(canary, bool) or not 0 <= canary <= 100):
        causes.append(invalid_value("spec.predictor.canaryTrafficPercent", canary, "must be between 0 and 100"))
    low, high = predictor.get("minReplicas"), predictor.get("maxReplicas")
    for path, value in (("minReplicas", low), ("maxReplicas", high)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            causes.append(invalid_value(f"spec.predictor.{path}", value, "must be greater than or equal to 0"))
    if isinstance(low, int) and isinstance(high, int) and high > 0 and not replica_range_ok(low, high):
        causes.append(invalid_value("spec.predictor.maxReplicas", high,
                                    f"MaxReplicas cannot be less than MinReplicas ({low})"))
    protocol = _dict(predictor.get("model")).get("protocolVersion")
    if protocol is not None and protocol not in PROTOCOLS:
        causes.append(not_supported("spec.predictor.model.protocolVersion", protocol, list(PROTOCOLS)))
    annotations = _dict(meta.get("annotations"))
    path = f"metadata.annotations[{MODE_ANNOTATION}]"
    value = annotations.get(MODE_ANNOTATION)
    if value is not None and normalize_mode(value) is None:
        causes.append(not_supported(path, value, list(MODES)))
    elif value is not None and old is not None:
        before = normalize_mode(_dict(old.get("status")).get("deploymentMode")) or normalize_mode(
            _dict(_dict(old.get("metadata")).get("annotations")).get(MODE_ANNOTATION))
        if before is not None and normalize_mode(value) != before:
            causes.append(invalid_value(path, value, f"update rejected: deploymentMode cannot be changed "
                                        f"from {before!r} to {value!r}"))
    return causes


# --------------------------------------------------------------------------- the resource


def _ready_status(o: JSON) -> Any:
    for c in _dict(o.get("status")).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c.get("status")
    return None


def _traffic(o: JSON, match: Any) -> Any:
    predictor = _dict(_dict(_dict(o.get("status")).get("components")).get("predictor"))
    for t in predictor.get("traffic") or []:
        if isinstance(t, dict) and match(t):
            return t
    return None


def _traffic_cell(key: str, match: Any) -> Any:
    def cell(o: JSON) -> Any:
        found = _traffic(o, match)
        return found.get(key) if found else None

    return cell


def _is_prev(t: JSON) -> bool:
    return t.get("tag") == "prev"


def _is_latest(t: JSON) -> bool:
    return t.get("latestRevision") is True


INFERENCESERVICE_COLUMNS = (
    Column("URL", "string", lambda o: _dict(o.get("status")).get("url")),
    Column("Ready", "string", _ready_status),
    Column("Prev", "integer", _traffic_cell("percent", _is_prev)),
    Column("Latest", "integer", _traffic_cell("percent", _is_latest)),
    Column("PrevRolledoutRevision", "string", _traffic_cell("revisionName", _is_prev)),
    Column("LatestReadyRevision", "string", _traffic_cell("revisionName", _is_latest)),
    AGE_COLUMN,
)

INFERENCESERVICE = ResourceType(
    group=GROUP,
    version=VERSION,
    plural="inferenceservices",
    kind="InferenceService",
    singular="inferenceservice",
    short_names=("isvc",),
    status_subresource=True,
    defaulter=prune_and_default_inference_service,  # the CRD schema's pruning and defaults
    validator=lambda new, old: validate_inference_service_schema(new) or validate_inference_service(new, old),
    columns=INFERENCESERVICE_COLUMNS,
    schema=inference_service_schema,  # KServe's CRD schema: kubectl explain reads it
)


# --------------------------------------------------------------------------- revisions and status (pure)


@dataclass(frozen=True)
class LoadedModel:
    """A revision's model, loaded: where it lives, its signature, the protocol it is served with."""

    store: ModelStore
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    protocol: str


@dataclass
class Revision:
    """One predictor revision. ``state``: loading, ready or failed (with reason, message, transition)."""

    name: str
    number: int
    template: JSON
    created: float
    state: str = "loading"
    reason: str = ""
    message: str = ""
    transition: str = ""
    failed_at: str = ""
    model: LoadedModel | None = None


def _condition(ctype: str, status: str, reason: str = "", message: str = "") -> JSON:
    c: JSON = {"type": ctype, "status": status}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _revision_condition(ctype: str, rev: Revision) -> JSON:
    if rev.state == "ready":
        return _condition(ctype, "True")
    if rev.state == "failed":
        return _condition(ctype, "False", "RevisionFailed", f'Revision "{rev.name}" failed with message: '
                          f"{rev.message}.")
    return _condition(ctype, "Unknown", "Deploying", f'Revision "{rev.name}" is loading its model.')


def _first_not_true(conditions: Sequence[JSON]) -> JSON | None:
    for status in ("False", "Unknown"):
        for c in conditions:
            if c["status"] == status:
                return c
    return None


def build_status(*, generation: int, mode: str, url: str | None, newest: Revision | None,
                 latest_ready: Revision | None, traffic: Sequence[JSON], rolled_out: str | None,
                 previous: str | None, old: JSON, stamp: str) -> JSON:
    """The whole InferenceService status; ``lastTransitionTime`` kept from ``old`` while a status holds."""
    conditions: list[JSON] = []
    if newest is None:
        predictor = _condition("PredictorReady", "False", "NoRevision", "the predictor has no revision")
    elif mode == SERVERLESS:
        config = _revision_condition("PredictorConfigurationReady", newest)
        if latest_ready is not None:
            route = _condition("PredictorRouteReady", "True")
        else:
            route = _condition("PredictorRouteReady", config["status"], "RevisionMissing",
                               f'Configuration "{newest.name.rsplit("-", 1)[0]}" does not have any ready Revision.')
        conditions += [config, route]
        failing = _first_not_true([config, route])
        predictor = ({**failing, "type": "PredictorReady"} if failing is not None
                     else _condition("PredictorReady", "True"))
    else:
        predictor = _revision_condition("PredictorReady", newest)
    ingress = (_condition("IngressReady", "True") if url is not None
               else _condition("IngressReady", "Unknown", "PredictorNotReady", "waiting for a ready predictor"))
    failing = _first_not_true([predictor, ingress])
    ready = {**failing, "type": "Ready"} if failing is not None else _condition("Ready", "True")
    conditions += [predictor, ingress, ready]
    before = {c.get("type"): c for c in old.get("conditions") or [] if isinstance(c, dict)}
    for c in conditions:
        prior = before.get(c["type"])
        same = prior is not None and prior.get("status") == c["status"]
        c["lastTransitionTime"] = prior.get("lastTransitionTime", stamp) if same and prior else stamp

    component: JSON = {}
    if url is not None:
        component["url"] = url
    if newest is not None and mode == SERVERLESS:
        component["latestCreatedRevision"] = newest.name
        if latest_ready is not None:
            component["latestReadyRevision"] = latest_ready.name
        if rolled_out:
            component["latestRolledoutRevision"] = rolled_out
        if previous:
            component["previousRolledoutRevision"] = previous
        component["traffic"] = [dict(t) for t in traffic]
    elif newest is not None:
        component["latestCreatedRevision"] = str(newest.number)

    model_status: JSON = {}
    if newest is not None:
        active = "Loaded" if latest_ready is not None else "Pending"
        if newest.state == "ready":
            model_status = {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded"}}
        elif newest.state == "loading":
            model_status = {"transitionStatus": "InProgress",
                            "states": {"activeModelState": active, "targetModelState": "Loading"}}
        else:
            model_status = {
                "transitionStatus": newest.transition or "BlockedByFailedLoad",
                "states": {"activeModelState": active if latest_ready else "FailedToLoad",
                           "targetModelState": "FailedToLoad"},
                "lastFailureInfo": {"reason": newest.reason, "message": newest.message, "location": newest.name,
                                    "time": newest.failed_at or stamp},
            }
    status: JSON = {"observedGeneration": generation, "deploymentMode": mode, "conditions": conditions,
                    "components": {"predictor": component}, "modelStatus": model_status}
    if url is not None:
        status["url"] = url
        status["address"] = {"url": url}
    return status


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class Target:
    revision: Revision
    percent: int
    tag: str | None


@dataclass(frozen=True)
class BinaryBody:
    """An infer answer with binary outputs: a JSON header of ``header_length`` bytes, then their bytes."""

    data: bytes
    header_length: int


Payload = JSON | BinaryBody


@dataclass(frozen=True)
class ModelRequest:
    """One request a model server received (for tests: what reached the model, and which revision).

    ``status`` 0: the connection was dropped by an injected fault, without an answer.
    """

    namespace: str
    name: str
    method: str
    path: str
    status: int
    revision: str | None

    @property
    def is_infer(self) -> bool:
        return self.method == "POST" and (self.path.endswith("/infer") or self.path.endswith(":predict"))


@dataclass
class _Service:
    """The controller's memory of one InferenceService (by uid): revisions, rollout state, its server."""

    uid: str
    namespace: str
    name: str
    mode: str
    revisions: list[Revision] = field(default_factory=list)
    rolled_out: str | None = None
    previous: str | None = None
    server: ModelServer | None = None
    targets: tuple[Target, ...] = ()
    credits: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_targets(self, targets: tuple[Target, ...]) -> None:
        key = [(t.revision.name, t.percent, t.tag) for t in targets]
        with self.lock:
            if key != [(t.revision.name, t.percent, t.tag) for t in self.targets]:
                self.targets = targets
                self.credits = [0] * len(targets)

    def choose(self, tag: str | None, advance: bool) -> Revision | None:
        """The revision for the next request: by tag when asked, else by the split (peeking unless ``advance``)."""
        with self.lock:
            targets = self.targets
            if not targets:
                return None
            if tag:
                return next((t.revision for t in targets if t.tag == tag), None)
            credits = self.credits if advance else list(self.credits)
            index = pick_target([t.percent for t in targets], credits)
            return targets[index].revision if index >= 0 else None


class _ModelHTTPServer(TrackingHTTPServer):
    """One InferenceService's endpoint; closes its keep-alive connections when the service goes away."""

    def __init__(self, endpoint: ModelServer) -> None:
        self.endpoint = endpoint
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "opsgate-sandbox-kserve"
    sys_version = ""
    server: _ModelHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the base class writes every request line to stderr."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        endpoint = self.server.endpoint
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        if length > BODY_MAX:
            self.close_connection = True
            self._send(413, {"error": f"request body over {BODY_MAX} bytes"}, None)
            return
        body = self.rfile.read(length) if length > 0 else b""
        traceparent = self.headers.get("traceparent")
        if traceparent:
            endpoint.controller.traceparents.append((method, path, traceparent))
        header_length: int | None = None
        raw_length = self.headers.get(oip.HEADER_LENGTH)
        if raw_length is not None:
            try:
                header_length = int(raw_length)
            except ValueError:
                self._send(400, {"error": f"{oip.HEADER_LENGTH} must be a byte count"}, None)
                return
        fault = endpoint.faults.take(method, path)
        revision: str | None = None
        if fault is not None and fault.delay > 0:
            time.sleep(fault.delay)
        if fault is not None and fault.drop:
            self.close_connection = True
            endpoint.controller.requests.append(
                ModelRequest(endpoint.service.namespace, endpoint.service.name, method, path, 0, None))
            return
        payload: Payload
        if fault is not None and fault.status is not None:
            status, payload = fault.status, {"error": f"injected fault: the model server failed (HTTP {fault.status})"}
        else:
            status, payload, revision = endpoint.handle(method, path, self.headers.get(TAG_HEADER), body,
                                                        header_length)
        # Logged before answering, so a client that has its answer also finds the request in the log.
        endpoint.controller.requests.append(
            ModelRequest(endpoint.service.namespace, endpoint.service.name, method, path, status, revision))
        try:
            self._send(status, payload, revision)
        except OSError:
            self.close_connection = True

    def _send(self, status: int, payload: Payload, revision: str | None) -> None:
        self.send_response(status)
        if isinstance(payload, BinaryBody):
            data = payload.data
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header(oip.HEADER_LENGTH, str(payload.header_length))
        else:
            data = json.dumps(payload, separators=(",", ":")).encode()
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if revision:
            self.send_header(REVISION_HEADER, revision)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class ModelServer:
    """One InferenceService's endpoint on 127.0.0.1: its port, and so its URL, fixed for its life."""

    def __init__(self, controller: KServeController, service: _Service) -> None:
        self.controller = controller
        self.service = service
        self.faults = controller.faults_for(service.namespace, service.name)
        self._httpd = _ModelHTTPServer(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"kserve-{service.namespace}-{service.name}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- the protocol

    def handle(self, method: str, path: str, tag: str | None, body: bytes,
               header_length: int | None = None) -> tuple[int, Payload, str | None]:
        """(status, body, revision) for one request; never raises. ``header_length``: the request's
        ``Inference-Header-Content-Length`` (binary tensor data follows that much JSON)."""
        try:
            return self._handle(method, path, tag, body, header_length)
        except Exception as exc:  # a bug here must still answer, as a model server does
            log.exception("sandbox.kserve_handler_failed", path=path)
            return 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}, None

    def _handle(self, method: str, path: str, tag: str | None, body: bytes,
                header_length: int | None) -> tuple[int, Payload, str | None]:
        name = self.service.name
        if path == "/v2/health/live":
            return 200, {"live": True}, None
        if path == "/v2/health/ready":
            ready = self.service.choose(None, advance=False) is not None
            return (200, {"ready": True}, None) if ready else (503, {"error": "no revision is ready"}, None)
        if path in ("/v2", "/v2/"):
            return 200, {"name": "opsgate-sandbox-kserve", "version": "0.1", "extensions": []}, None
        v2 = re.fullmatch(r"/v2/models/([^/]+)(/ready|/infer)?", path)
        v1 = re.fullmatch(r"/v1/models/([^/:]+)(:predict)?", path)
        if v2 is None and v1 is None:
            return 404, {"error": f"no route for {path}"}, None
        match = v2 or v1
        assert match is not None
        model_name, action = unquote(match.group(1)), match.group(2) or ""
        if model_name != name:
            return 404, {"error": f"Model with name {model_name} does not exist."}, None
        infer = action in ("/infer", ":predict")
        if method != ("POST" if infer else "GET"):
            return 405, {"error": f"{method} is not allowed on {path}"}, None
        revision = self.service.choose(tag, advance=infer)
        if revision is None or revision.model is None:
            why = f"no revision tagged {tag!r}" if tag else "no revision is ready"
            return (404 if tag else 503), {"error": f"Model {name} is not ready: {why}"}, None
        model = revision.model
        wanted = "v2" if v2 is not None else "v1"
        if model.protocol != wanted:
            return 404, {"error": f"{path}: this InferenceService serves protocol {model.protocol} "
                         f"(spec.predictor.model.protocolVersion), not {wanted}"}, revision.name
        if action == "/ready":
            return 200, {"name": name, "ready": True}, revision.name
        if not infer:
            if wanted == "v1":
                return 200, {"name": name, "ready": True}, revision.name
            return 200, oip.metadata_doc(name, [str(revision.number)], PLATFORM, model.inputs,
                                         model.outputs), revision.name
        try:
            doc, raw = oip.split_body(body, header_length)
            if wanted == "v2":
                doc = oip.inline_binary_inputs(doc, raw)
            elif raw:
                raise oip.ProtocolError("v1 :predict takes no binary tensor data")
        except oip.ProtocolError as exc:
            return 400, {"error": str(exc)}, revision.name
        if wanted == "v1":
            return (*self._predict_v1(revision, model, doc), revision.name)
        return (*self._infer_v2(revision, model, doc), revision.name)

    def _run(self, model: LoadedModel, inputs: dict[str, Any]) -> tuple[int, JSON] | list[Any]:
        try:
            return list(model.store.infer(InferArgs(model=model.name, inputs=inputs)).outputs)
        except ModelInputError as exc:
            return 400, {"error": exc.message}
        except ToolError as exc:
            return 500, {"error": exc.message}

    def _infer_v2(self, revision: Revision, model: LoadedModel, doc: Any) -> tuple[int, Payload]:
        try:
            named, wanted, request_id = oip.decode_request(doc, model.inputs)
        except oip.ProtocolError as exc:
            return 400, {"error": str(exc)}
        outputs = self._run(model, named)
        if isinstance(outputs, tuple):
            return outputs
        if wanted is not None:
            unknown = sorted(set(wanted) - {o.name for o in outputs})
            if unknown:
                return 400, {"error": f"unknown output(s) requested: {', '.join(unknown)}"}
            outputs = [o for o in outputs if o.name in wanted]
        answer: JSON = {"model_name": self.service.name, "model_version": str(revision.number),
                        "outputs": oip.encode_outputs(outputs)}
        if request_id is not None:
            answer["id"] = request_id
        binary = oip.binary_outputs(doc, [o.name for o in outputs])
        if binary:
            data, header_length = oip.encode_answer(answer, binary)
            assert header_length is not None
            return 200, BinaryBody(data, header_length)
        return 200, answer

    def _predict_v1(self, revision: Revision, model: LoadedModel, doc: Any) -> tuple[int, JSON]:
        if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
            return 400, {"error": 'the request must be a JSON object with an "instances" list'}
        if len(model.inputs) != 1:
            return 400, {"error": "v1 :predict needs a model with exactly one input"}
        outputs = self._run(model, {model.inputs[0].name: doc["instances"]})
        if isinstance(outputs, tuple):
            return outputs
        if len(outputs) == 1:
            return 200, {"predictions": outputs[0].data}
        rows = {len(o.data) for o in outputs if isinstance(o.data, list)}
        if len(rows) == 1 and all(isinstance(o.data, list) for o in outputs):
            count = rows.pop()
            return 200, {"predictions": [{o.name: o.data[i] for o in outputs} for i in range(count)]}
        return 200, {"predictions": [{o.name: o.data for o in outputs}]}


# --------------------------------------------------------------------------- the controller


class KServeController(Controller):
    """KServe's InferenceService controller (Serverless and RawDeployment), plus its model servers."""

    name = "kserve-controller"
    watches = (INFERENCESERVICE,)

    def __init__(self, models_dir: Path | None = None, default_mode: str = SERVERLESS) -> None:
        super().__init__()
        self.models_dir = Path(models_dir or MODELS_DIR_DEFAULT).resolve()
        self.default_mode = normalize_mode(default_mode) or SERVERLESS
        self.requests: deque[ModelRequest] = deque(maxlen=REQUEST_LOG)
        # (method, path, traceparent) of the last requests that sent one: a test joins them to the client's spans.
        self.traceparents: deque[tuple[str, str, str]] = deque(maxlen=REQUEST_LOG)
        self._services: dict[tuple[str, str], _Service] = {}
        self._stores: dict[Path, ModelStore] = {}
        self._faults: dict[tuple[str, str], FaultTable] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- test hooks

    def faults_for(self, namespace: str, name: str) -> FaultTable:
        with self._lock:
            return self._faults.setdefault((namespace, name), FaultTable())

    def inject_fault(self, name: str, namespace: str = "default", *, method: str | None = "POST",
                     path_regex: str = r"(/infer|:predict)$", status: int | None = None, delay: float = 0.0,
                     drop: bool = False, times: int = 1) -> Fault:
        """Make the next ``times`` matching requests to this service's model server answer ``status``
        (``{"error": ...}``), sleep ``delay`` first, or drop the connection; ``times <= 0``: until cleared."""
        fault = Fault(method, path_regex, status=status, delay=delay, drop=drop, times=times)
        return self.faults_for(namespace, name).add(fault)

    def clear_faults(self) -> None:
        with self._lock:
            tables = list(self._faults.values())
        for table in tables:
            table.clear()

    def infer_requests(self, name: str | None = None, namespace: str | None = None) -> list[ModelRequest]:
        """Infer/predict requests the model servers received (of one service when named), oldest first."""
        return [r for r in list(self.requests) if r.is_infer and (name is None or r.name == name)
                and (namespace is None or r.namespace == namespace)]

    def url_of(self, name: str, namespace: str = "default") -> str | None:
        with self._lock:
            svc = self._services.get((namespace, name))
        return svc.server.url if svc is not None and svc.server is not None else None

    def close(self) -> None:
        """Stop every model server (the cluster is stopping)."""
        with self._lock:
            self._closed = True
            services = list(self._services.values())
            self._services.clear()
        for svc in services:
            if svc.server is not None:
                svc.server.close()

    # -- reconcile

    def reconcile(self, namespace: str, name: str) -> float | None:
        obj = self.s.find(INFERENCESERVICE, namespace, name)
        key = (namespace, name)
        with self._lock:
            svc = self._services.get(key)
            uid = str(_dict(obj.get("metadata")).get("uid")) if obj is not None else None
            if svc is not None and svc.uid != uid:
                del self._services[key]
                gone, svc = svc, None
            else:
                gone = None
            if obj is not None and svc is None and not self._closed:
                svc = self._services[key] = _Service(str(uid), namespace, name, deployment_mode(obj, self.default_mode))
        if gone is not None and gone.server is not None:
            gone.server.close()
        if obj is None or svc is None:
            return None
        now = time.monotonic()
        template = predictor_template(obj)
        newest = svc.revisions[-1] if svc.revisions else None
        if newest is None or newest.template != template:
            newest = Revision(revision_name(name, newest.number + 1 if newest else 1),
                              newest.number + 1 if newest else 1, template, now)
            svc.revisions.append(newest)
            self._trim(svc)
        wait: float | None = None
        for rev in svc.revisions:
            if rev.state != "loading":
                continue
            due = rev.created + self.rollout_delay - now
            if due > 0:
                wait = due if wait is None else min(wait, due)
            else:
                self._load(rev)
                if rev.state == "failed":
                    self.record_event(obj, "ModelLoadFailed", f"{rev.name}: {rev.message}", "Warning")
        ready = [r for r in svc.revisions if r.state == "ready"]
        latest_ready = ready[-1] if ready else None
        if svc.mode == SERVERLESS:
            canary = _predictor(obj).get("canaryTrafficPercent")
            traffic = traffic_targets(canary if isinstance(canary, int) else None,
                                      latest_ready.name if latest_ready else None, svc.rolled_out)
            svc.rolled_out, svc.previous = rolled_out_after(
                traffic, latest_ready.name if latest_ready else None, svc.rolled_out, svc.previous)
        else:
            traffic = traffic_targets(None, latest_ready.name if latest_ready else None, None)
        by_name = {r.name: r for r in svc.revisions}
        svc.set_targets(tuple(Target(by_name[t["revisionName"]], int(t["percent"]), t.get("tag")) for t in traffic))
        if latest_ready is not None and svc.server is None:
            with self._lock:
                closed = self._closed
            if not closed:
                svc.server = ModelServer(self, svc)
        url = svc.server.url if svc.server is not None else None
        old = _dict(obj.get("status"))
        status = build_status(
            generation=int(_dict(obj.get("metadata")).get("generation") or 0), mode=svc.mode, url=url,
            newest=newest, latest_ready=latest_ready, traffic=traffic, rolled_out=svc.rolled_out,
            previous=svc.previous, old=old, stamp=now_rfc3339(),
        )
        if status != old:

            def put(cur: JSON) -> JSON:
                cur["status"] = status
                return cur

            self.s.update(INFERENCESERVICE, namespace, name, put, subresource="status")
        return wait

    def _trim(self, svc: _Service) -> None:
        """Keep the newest revisions, and always the ones traffic or the rollout history names."""
        keep = {svc.rolled_out, svc.previous, *(t.revision.name for t in svc.targets)}
        while len(svc.revisions) > REVISIONS_KEPT:
            victim = next((r for r in svc.revisions[:-1] if r.name not in keep), None)
            if victim is None:
                return
            svc.revisions.remove(victim)

    def _store(self, folder: Path) -> ModelStore:
        from opsgate.tools.inference import ModelStore  # numpy and onnxruntime: only once a model is served

        with self._lock:
            store = self._stores.get(folder)
            if store is None:
                store = self._stores[folder] = ModelStore(folder)
            return store

    def _load(self, rev: Revision) -> None:
        """Load the revision's model now: ready, or failed with KServe's reason and transition status."""
        spec = model_spec(rev.template)

        def fail(reason: str, message: str, transition: str = "BlockedByFailedLoad") -> None:
            rev.state, rev.reason, rev.message, rev.transition = "failed", reason, message, transition
            rev.failed_at = now_rfc3339()

        if spec.format != "onnx":
            fail("NoSupportingRuntime", f"no runtime in the sandbox supports model format {spec.format!r}; it runs "
                 "ONNX models only (spec.predictor.model.modelFormat.name: onnx)", "InvalidSpec")
            return
        if spec.protocol not in ("v1", "v2"):
            fail("NoSupportingRuntime", f"protocol {spec.protocol} is not served by the sandbox (REST v1 and v2 "
                 "only)", "InvalidSpec")
            return
        if not isinstance(spec.storage_uri, str) or not spec.storage_uri:
            fail("InvalidPredictorSpec", "spec.predictor.model.storageUri is required", "InvalidSpec")
            return
        try:
            folder, model_name = resolve_storage(spec.storage_uri, self.models_dir)
            store = self._store(folder)
            # ModelStore loads a session on first use; load it now, so a bad model fails the revision, not a call.
            loaded = store._session(model_name)
        except ValueError as exc:
            fail("ModelLoadFailed", str(exc))
            return
        except ToolError as exc:
            fail("ModelLoadFailed", f"failed to load model from {spec.storage_uri}: {exc.message}")
            return
        rev.model = LoadedModel(store, model_name, list(loaded.info.inputs), list(loaded.info.outputs), spec.protocol)
        rev.state = "ready"


__all__ = [
    "GROUP",
    "INFERENCESERVICE",
    "MODE_ANNOTATION",
    "RAW",
    "REVISION_HEADER",
    "SERVERLESS",
    "TAG_HEADER",
    "VERSION",
    "KServeController",
    "ModelRequest",
    "build_status",
    "deployment_mode",
    "model_spec",
    "normalize_mode",
    "pick_target",
    "predictor_template",
    "resolve_storage",
    "revision_name",
    "rolled_out_after",
    "traffic_targets",
    "validate_inference_service",
]
