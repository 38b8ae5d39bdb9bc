"""What an InferenceService is made of, read purely from its JSON: names, modes, predictor, view, diff."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from opsgate.vocab.kinds import INFERENCE_SERVICE
from opsgate.vocab.names import DNS1035_LABEL_PATTERN, DNS1035_RE

from ..structs.changes import ManifestChange, manifest_change
from ..structs.diff import FieldChange, diff_views
from ..structs.objects import CHANGE_CAUSE_ANNOTATION, meta
from ..structs.patches import guard, pointer

JSON = dict[str, Any]
GROUP: Final = "serving.kserve.io"
VERSION: Final = "v1beta1"
PLURAL: Final = "inferenceservices"
KIND: Final = INFERENCE_SERVICE
MODE_ANNOTATION: Final = "serving.kserve.io/deploymentMode"
PREVIOUS_SPEC_ANNOTATION: Final = "opsgate.dev/previous-spec"
SERVERLESS: Final = "Serverless"
RAW: Final = "RawDeployment"
#: Annotation values -> the mode they mean (0.15+ renamed Serverless -> Knative, RawDeployment -> Standard).
MODES: Final[Mapping[str, str]] = {
    "Serverless": SERVERLESS, "Knative": SERVERLESS, "RawDeployment": RAW, "Standard": RAW, "ModelMesh": "ModelMesh",
}
NAME_MAX: Final = 47  # so "{name}-predictor-00001" stays a 63-character DNS label, as Knative requires
NAME_PATTERN: Final = DNS1035_LABEL_PATTERN
STORAGE_URI_MAX: Final = 2048
STORAGE_URI_PATTERN: Final = r"^([a-z][a-z0-9+.-]*://\S+|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$"
_REVISION_NUMBER: Final = re.compile(r"(\d+)$")


def name_checker(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not DNS1035_RE.fullmatch(value):
            raise PydanticCustomError(
                "dns1035_label", "not a valid InferenceService name: lowercase letters, digits and "
                "'-', starting with a letter and ending with a letter or digit", {"value": value})
        if len(value) > limit:
            raise PydanticCustomError("name_length", "must be at most {limit} characters", {"limit": limit})
        return value

    return check


ServiceName = Annotated[str, AfterValidator(name_checker(63))]  # an existing service: see workloads.Namespace
NewServiceName = Annotated[
    str,
    Field(description="Also the model name in its URLs.",
          json_schema_extra={"pattern": NAME_PATTERN, "maxLength": NAME_MAX}),
    AfterValidator(name_checker(NAME_MAX)),
]


def as_json(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def predictor_of(obj: Mapping[str, Any] | None) -> JSON:
    return as_json(as_json(as_json(obj).get("spec")).get("predictor"))


def model_of(obj: Mapping[str, Any] | None) -> JSON:
    return as_json(predictor_of(obj).get("model"))


def component_of(obj: Mapping[str, Any] | None) -> JSON:
    return as_json(as_json(as_json(as_json(obj).get("status")).get("components")).get("predictor"))


def normalize_mode(value: Any) -> str | None:
    return MODES.get(value) if isinstance(value, str) else None


def mode_of(obj: Mapping[str, Any] | None) -> str | None:
    """The deployment mode: the annotation, else what the controller reported; None when neither says."""
    annotations = as_json(meta(obj).get("annotations"))
    return normalize_mode(annotations.get(MODE_ANNOTATION)) or normalize_mode(
        as_json(as_json(obj).get("status")).get("deploymentMode"))


def protocol_of(obj: Mapping[str, Any] | None) -> str:
    """``spec.predictor.model.protocolVersion``; KServe's default, v1, when unset."""
    value = model_of(obj).get("protocolVersion")
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
    model = as_json(predictor.get("model"))
    rest_model = {k: v for k, v in model.items()
                  if k not in ("storageUri", "modelFormat", "runtime", "protocolVersion", "resources")}
    rest = {k: v for k, v in predictor.items()
            if k not in ("model", "minReplicas", "maxReplicas", "canaryTrafficPercent")}
    return {
        "storage_uri": model.get("storageUri"),
        "model_format": as_json(model.get("modelFormat")).get("name"),
        "runtime": model.get("runtime"),
        "protocol_version": model.get("protocolVersion"),
        "resources": model.get("resources") or {},
        "min_replicas": predictor.get("minReplicas"),
        "max_replicas": predictor.get("maxReplicas"),
        "canary_traffic_percent": predictor.get("canaryTrafficPercent"),
        "deployment_mode": as_json(meta(obj).get("annotations")).get(MODE_ANNOTATION),
        "predictor_other": _fingerprint({"model": rest_model, **rest} if rest_model else rest),
    }


def diff_services(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[FieldChange]:
    return diff_views(isvc_view(before), isvc_view(after))


def service_change(before: Mapping[str, Any] | None, after: Mapping[str, Any], name: str,
                   namespace: str) -> ManifestChange | None:
    """An InferenceService write's change as a JSON merge patch (a custom resource has no strategic merge; a
    create: the object sent), without opsgate's recorded previous spec. Pure."""
    return manifest_change(before, after, api_version=f"{GROUP}/{VERSION}", kind=KIND, name=name, namespace=namespace,
                           strategic=False, skip_annotations=(PREVIOUS_SPEC_ANNOTATION,))


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
