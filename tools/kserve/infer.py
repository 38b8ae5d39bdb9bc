"""kserve_infer: call a Ready InferenceService over the Open Inference Protocol (v2) or v1."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import quote

from pydantic import ConfigDict, Field

from opsgate.policies.bounds import BoundAttrs
from opsgate.vocab.limits import MAX_INPUT_ELEMENTS

from ..bounded import enforce_bounds
from ..clients import modelserver
from ..context import CallContext
from ..errors import ToolError
from ..informer import read_one
from ..kube import Kube
from ..oip import (
    OipTensorIn,
    decode_response,
    encode_request,
    encode_unchecked,
    flatten,
    input_elements,
)
from ..structs.objects import meta
from ..tensors import InferResult, TensorOut, TensorValue
from ..workload_types import (
    Args,
    Namespace,
)
from .api import INFERENCE_SERVICES, read_service
from .services import ServiceName, model_of, protocol_of
from .status import status_result


class KServeInferArgs(Args):
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

    def bound_attrs(self) -> BoundAttrs:
        """What policy bounds look at before the call: the service named, the values sent, a url override
        (the storage URI it serves is bounded in the tool, on the read: :func:`kserve_infer`)."""
        return BoundAttrs(model=self.name, input_elements=self.input_elements(), url_override=self.url is not None)


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
    # Readiness, URL and model from the watch cache when it is current (as model_status reads them): the
    # model server's answer is live either way, and the call costs the API server nothing.
    obj, _ = read_one(kube, INFERENCE_SERVICES, ns, name, lambda: read_service(kube, name, ns, ctx))
    uri = model_of(obj).get("storageUri")
    if isinstance(uri, str):  # the `models` bound named the service; this bounds the model it actually serves
        enforce_bounds(ctx, BoundAttrs(storage_uri=uri), f"inferenceservice {ns}/{name} serves a model")
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
        response = modelserver.request("POST", url, json.dumps(body, separators=(",", ":")).encode(), timeout, what)
        doc = modelserver.json_of(response, what, url)
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
    metadata = modelserver.model_metadata(base, name, key, timeout)
    notes: list[str] = []
    if metadata.checkable:
        request = encode_request(metadata, args.inputs, MAX_INPUT_ELEMENTS)  # refuses bad inputs before any infer
    else:  # KServe's custom predictors list no inputs: send what the caller gave, and say so
        request, inferred = encode_unchecked(args.inputs, MAX_INPUT_ELEMENTS)
        notes.append(unchecked_note(inferred))
    url = f"{base}/v2/models/{quote(name, safe='')}/infer"
    what = f"infer with model {name}"
    response = modelserver.request("POST", url, json.dumps(request, separators=(",", ":")).encode(), timeout, what)
    outputs, _, version = decode_response(modelserver.json_of(response, what, url), what)
    return KServeInferResult(model=name, outputs=outputs, namespace=ns, protocol="v2", url=base,
                             model_version=version, served_by=response.headers.get("X-Sandbox-Revision"),
                             metadata_checked=metadata.checkable, notes=notes)
