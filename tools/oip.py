"""The Open Inference Protocol (KServe v2) as pure functions: datatypes, metadata, request and response bodies.

Shared by both ends, so the client (``kserve_infer``) and the sandbox's model
server agree byte for byte: the client checks a caller's inputs against the
model's metadata and encodes the request; the server decodes and checks it
again (a real server would) and encodes its answer; the client decodes that.
No I/O and no numpy at import: input checking reuses :func:`check_inputs` of
local inference (same sentences, same rules), imported when a check runs.

Wire shapes (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol):
metadata ``{"name", "versions", "platform", "inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``
with ``-1`` for a dynamic dimension; infer request ``{"id"?, "inputs": [{"name", "shape", "datatype",
"data"}], "outputs"?: [{"name"}]}`` with ``data`` flat in row-major order (nested is accepted);
response ``{"model_name", "model_version"?, "id"?, "outputs": [...]}``; errors ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from opsgate.vocab.elements import count_elements
from opsgate.vocab.limits import MAX_OUTPUT_ELEMENTS

from .errors import ToolError
from .tensors import ModelInputError, TensorOut, TensorSpec, TensorValue
from .untrusted import quoted

__all__ = [
    "DTYPE_TO_OIP",
    "HEADER_LENGTH",
    "OIP_TO_DTYPE",
    "ModelMetadata",
    "OipTensorIn",
    "ProtocolError",
    "TensorMeta",
    "binary_outputs",
    "decode_request",
    "decode_response",
    "encode_answer",
    "encode_outputs",
    "encode_request",
    "encode_unchecked",
    "error_text",
    "flatten",
    "infer_datatype",
    "inline_binary_inputs",
    "input_elements",
    "metadata_doc",
    "nest",
    "parse_metadata",
    "specs_of",
    "split_body",
    "tensor_from_bytes",
    "tensor_to_bytes",
]

#: OIP datatype -> the numpy dtype name local inference uses (TensorSpec.dtype, TensorOut.dtype).
OIP_TO_DTYPE: Final[Mapping[str, str]] = {
    "BOOL": "bool",
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
    "BYTES": "string",
}
DTYPE_TO_OIP: Final[Mapping[str, str]] = {v: k for k, v in OIP_TO_DTYPE.items()}
_MAX_RANK: Final = 32
_ERROR_MAX: Final = 1000


def _bad_response(what: str, why: str) -> ToolError:
    return ToolError(f"{what}: the model server answered something that is not the Open Inference Protocol: {why}",
                     code="model_error", rule="bad-response")


# --------------------------------------------------------------------------- typed views


class TensorMeta(BaseModel):
    """One input or output in model metadata."""

    model_config = ConfigDict(extra="ignore")

    name: str
    datatype: str
    shape: list[int] = Field(description="-1 is a dynamic dimension.")


class ModelMetadata(BaseModel):
    """Model metadata as servers really send it: KServe's Python server answers ``"versions": null``,
    and for a custom predictor ``"inputs": []`` and ``"outputs": []`` (nothing to check inputs against)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str = ""
    inputs: list[TensorMeta]
    outputs: list[TensorMeta] = Field(default_factory=list)

    @field_validator("versions", "inputs", "outputs", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("platform", mode="before")
    @classmethod
    def _null_platform(cls, value: Any) -> Any:
        return "" if value is None else value

    @property
    def checkable(self) -> bool:
        """Whether the server said what inputs the model takes (a custom KServe predictor does not)."""
        return bool(self.inputs)


class OipTensorIn(BaseModel):
    """An input in the protocol's own form; datatype and shape, when given, are checked against the model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    datatype: str | None = Field(default=None, description='e.g. "FP32"')
    shape: list[int] | None = Field(default=None, max_length=_MAX_RANK)
    data: TensorValue = Field(description="Flat row-major, or nested like shape.")


# --------------------------------------------------------------------------- shapes


def flatten(value: Any) -> tuple[list[int], list[Any]]:
    """Shape and row-major leaves of nested lists; ValueError on ragged nesting or rank over 32.

    The shape comes from the first element at each level; every list at a level must match it.
    """
    shape: list[int] = []
    node = value
    while isinstance(node, list | tuple):
        if len(shape) >= _MAX_RANK:
            raise ValueError(f"nested more than {_MAX_RANK} levels deep")
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    level: list[Any] = [value]
    for depth, size in enumerate(shape):
        below: list[Any] = []
        for item in level:
            if not isinstance(item, list | tuple) or len(item) != size:
                raise ValueError(f"ragged nesting: every list at depth {depth} must have {size} items")
            below.extend(item)
        level = below
    if any(isinstance(v, list | tuple) for v in level):
        raise ValueError("ragged nesting: some items are nested deeper than others")
    return shape, level


def nest(flat: Sequence[Any], shape: Sequence[int]) -> Any:
    """Row-major ``flat`` as nested lists of ``shape`` (a 0-d shape gives the one value)."""
    if not shape:
        return flat[0] if flat else None
    dims = list(shape)

    def build(offset: int, depth: int) -> list[Any]:
        if depth == len(dims) - 1:
            return list(flat[offset:offset + dims[depth]])
        step = math.prod(dims[depth + 1:])
        return [build(offset + i * step, depth + 1) for i in range(dims[depth])]

    return build(0, 0)


def _elements(shape: Iterable[int]) -> int:
    return math.prod(shape)


def input_elements(inputs: Mapping[str, Any] | Sequence[OipTensorIn]) -> int:
    """How many values a call sends (the policy's ``input_elements``), without numpy.

    Named inputs count their values (:func:`opsgate.vocab.elements.count_elements`, one answer on ragged
    input everywhere); protocol-form inputs by their shape when given, else their data.
    """
    if isinstance(inputs, Mapping):
        return count_elements(inputs)
    return sum(_elements(max(d, 0) for d in t.shape) if t.shape is not None else count_elements(t.data)
               for t in inputs)


# --------------------------------------------------------------------------- metadata


def metadata_doc(name: str, versions: Sequence[str], platform: str, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """A model metadata body from local signatures: symbolic and free dimensions become -1."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else -1 for d in spec.shape] if spec.shape is not None else [-1]
        return {"name": spec.name, "datatype": DTYPE_TO_OIP.get(spec.dtype, spec.dtype.upper()), "shape": shape}

    return {"name": name, "versions": list(versions), "platform": platform,
            "inputs": [tensor(s) for s in inputs], "outputs": [tensor(s) for s in outputs]}


def parse_metadata(doc: Any, what: str) -> ModelMetadata:
    """The metadata a server answered, checked enough to check inputs against; ToolError ``bad-response``."""
    if not isinstance(doc, dict):
        raise _bad_response(what, "model metadata is not a JSON object")
    try:
        meta = ModelMetadata.model_validate(doc)
    except ValueError as exc:
        raise _bad_response(what, f"model metadata: {str(exc).splitlines()[0]}") from None
    for t in meta.inputs:
        if t.datatype not in OIP_TO_DTYPE:
            raise ToolError(f"{what}: input {t.name!r} has datatype {t.datatype!r}, which opsgate cannot send",
                            code="model_error", rule="unsupported-datatype")
    return meta


def specs_of(tensors: Sequence[TensorMeta]) -> list[TensorSpec]:
    """Metadata tensors as local signatures: -1 is a free dimension, shared by no other input."""
    return [TensorSpec(name=t.name, dtype=OIP_TO_DTYPE.get(t.datatype, t.datatype),
                       shape=[None if d < 0 else d for d in t.shape]) for t in tensors]


# --------------------------------------------------------------------------- client side


def _named(inputs: Mapping[str, Any] | Sequence[OipTensorIn], meta: ModelMetadata) -> dict[str, Any]:
    """Protocol-form inputs as {name: nested value}, after checking what they state against the metadata."""
    if isinstance(inputs, Mapping):
        return dict(inputs)
    declared = {t.name: t for t in meta.inputs}
    named: dict[str, Any] = {}
    for t in inputs:
        field = f"inputs.{t.name}"
        if t.name in named:
            raise ModelInputError(field, "duplicate-input", f"{field}: given twice")
        want = declared.get(t.name)
        if want is not None and t.datatype is not None and t.datatype != want.datatype:
            raise ModelInputError(field, "datatype",
                                  f"{field}: datatype {t.datatype} does not match the model's {want.datatype}")
        value = t.data
        if t.shape is not None:
            try:
                got_shape, leaves = flatten(value)
            except ValueError as exc:
                raise ModelInputError(field, "ragged", f"{field}: {exc}") from None
            if any(d < 0 for d in t.shape):
                raise ModelInputError(field, "shape", f"{field}: shape {t.shape} has a negative dimension")
            if got_shape == list(t.shape):
                pass  # already nested as stated
            elif len(got_shape) <= 1 and len(leaves) == _elements(t.shape):
                value = nest(leaves, t.shape)
            else:
                raise ModelInputError(
                    field, "shape",
                    f"{field}: shape {t.shape} needs {_elements(t.shape)} values, got {len(leaves)}"
                    + (f" nested as {got_shape}" if len(got_shape) > 1 else ""),
                )
        named[t.name] = value
    return named


def encode_request(meta: ModelMetadata, inputs: Mapping[str, Any] | Sequence[OipTensorIn],
                   max_elements: int) -> dict[str, Any]:
    """The infer body for ``inputs``, checked against the model's metadata first.

    Raises ModelInputError (field ``inputs.<name>``) for an unknown or missing input, a datatype
    the model does not take, a shape that does not fit, or too many values: before any request.
    """
    from .inference import check_inputs  # numpy: loaded on the first call, not at server start

    named = _named(inputs, meta)
    arrays = check_inputs(specs_of(meta.inputs), named, max_elements)
    by_name = {t.name: t for t in meta.inputs}
    body = []
    for name, array in arrays.items():
        body.append({"name": name, "shape": list(array.shape), "datatype": by_name[name].datatype,
                     "data": array.ravel().tolist()})
    return {"inputs": body}


def infer_datatype(leaves: Sequence[Any]) -> str | None:
    """The datatype JSON values imply: all bools BOOL, all ints INT64, numbers with a float among them FP32
    (what most models take; FP64 would be refused by a float32 model), all strings BYTES. None when the
    values are mixed, of another kind, or there are none: then only the caller can say."""
    kinds = {type(v) for v in leaves}
    if not kinds:
        return None
    if kinds == {bool}:
        return "BOOL"
    if kinds == {int}:
        return "INT64"
    if kinds <= {int, float}:
        return "FP32"
    if kinds == {str}:
        return "BYTES"
    return None


def _int_range(datatype: str) -> tuple[int, int]:
    bits = int(datatype.lstrip("UINT"))
    return (0, 2**bits - 1) if datatype.startswith("U") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _value_misfit(datatype: str, leaves: Sequence[Any]) -> str | None:
    """Why ``leaves`` cannot be sent as ``datatype`` in JSON (the first bad value's kind), or None."""
    for v in leaves:
        if datatype == "BOOL":
            ok = isinstance(v, bool)
        elif datatype == "BYTES":
            ok = isinstance(v, str)
        elif datatype.startswith(("INT", "UINT")):
            low, high = _int_range(datatype)
            ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        else:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not ok:
            shown = type(v).__name__ if not isinstance(v, int | float) or isinstance(v, bool) else repr(v)
            return f"a {datatype} tensor cannot hold {shown}"
    return None


def encode_unchecked(inputs: Mapping[str, Any] | Sequence[OipTensorIn],
                     max_elements: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(infer body, {input name: datatype inferred}) for a model whose metadata lists no inputs.

    The caller's tensors go as given: names unchecked (only the server knows them), shape as stated or
    as nested, datatype as stated or inferred from the values (:func:`infer_datatype`). Still refused
    before sending (ModelInputError, field ``inputs.<name>``): ragged nesting, a shape the values do not
    fill, a datatype the values do not fit or that cannot be inferred, a name given twice, too many values.
    """
    given = ([(name, None, None, value) for name, value in inputs.items()] if isinstance(inputs, Mapping)
             else [(t.name, t.datatype, t.shape, t.data) for t in inputs])
    if not given:
        raise ModelInputError("inputs", "no-inputs", "inputs: give at least one input")
    body: list[dict[str, Any]] = []
    inferred: dict[str, str] = {}
    seen: set[str] = set()
    total = 0
    for name, datatype, shape, value in given:
        field = f"inputs.{name}"
        if name in seen:
            raise ModelInputError(field, "duplicate-input", f"{field}: given twice")
        try:
            got_shape, leaves = flatten(value)
        except ValueError as exc:
            raise ModelInputError(field, "ragged", f"{field}: {exc}") from None
        if shape is not None:
            if any(d < 0 for d in shape):
                raise ModelInputError(field, "shape", f"{field}: shape {shape} has a negative dimension")
            if got_shape != list(shape) and not (len(got_shape) <= 1 and len(leaves) == _elements(shape)):
                raise ModelInputError(field, "shape", f"{field}: shape {shape} needs {_elements(shape)} values, "
                                      f"got {len(leaves)}" + (f" nested as {got_shape}" if len(got_shape) > 1
                                                              else ""))
            got_shape = list(shape)
        total += len(leaves)
        if total > max_elements:
            raise ModelInputError(field, "size", f"inputs: more than {max_elements} values in one call")
        if datatype is None:
            datatype = infer_datatype(leaves)
            if datatype is None:
                raise ModelInputError(
                    field, "datatype-needed",
                    f"{field}: the model server publishes no input metadata and the datatype cannot be told "
                    "from the values (" + ("none given" if not leaves else "mixed kinds") + "); give it: "
                    '[{"name", "datatype", "shape", "data"}]')
            inferred[name] = datatype
        elif datatype not in OIP_TO_DTYPE:
            raise ModelInputError(field, "datatype", f"{field}: datatype {datatype!r} is not one of "
                                  f"{', '.join(OIP_TO_DTYPE)}")
        misfit = _value_misfit(datatype, leaves)
        if misfit is not None:
            raise ModelInputError(field, "datatype", f"{field}: {misfit}")
        data = [float(v) for v in leaves] if datatype.startswith("FP") else list(leaves)
        body.append({"name": name, "shape": got_shape, "datatype": datatype, "data": data})
        seen.add(name)
    return {"inputs": body}, inferred


def decode_response(doc: Any, what: str) -> tuple[list[TensorOut], str | None, str | None]:
    """(outputs, model_name, model_version) of an infer answer; outputs nested by their shape."""
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        raise _bad_response(what, 'no "outputs" list')
    outputs: list[TensorOut] = []
    total = 0
    for i, item in enumerate(doc["outputs"]):
        if not isinstance(item, dict):
            raise _bad_response(what, f"outputs[{i}] is not an object")
        name, datatype, shape, data = item.get("name"), item.get("datatype"), item.get("shape"), item.get("data")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise _bad_response(what, f"outputs[{i}] has no name or datatype")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _bad_response(what, f"output {name!r}: shape {shape!r} is not a list of sizes")
        if not isinstance(data, list):
            raise _bad_response(what, f"output {name!r}: data is not a list")
        try:
            got, leaves = flatten(data)
        except ValueError as exc:
            raise _bad_response(what, f"output {name!r}: {exc}") from None
        total += len(leaves)
        if total > MAX_OUTPUT_ELEMENTS:  # the same cap as a local model's outputs (issue 15 item 18)
            raise ToolError(f"{what}: the model server answered more than {MAX_OUTPUT_ELEMENTS} output values "
                            f"(output {quoted(name)} brings it to {total}); nothing was returned. Smaller inputs "
                            "give a smaller output", code="model_error", field="inputs", rule="output-too-large")
        if len(leaves) != _elements(shape):
            raise _bad_response(what, f"output {name!r}: shape {shape} needs {_elements(shape)} values, "
                                f"got {len(leaves)}")
        value = data if got == shape else nest(leaves, shape)
        outputs.append(TensorOut(name=name, dtype=OIP_TO_DTYPE.get(datatype, datatype), shape=shape, data=value))
    version = doc.get("model_version")
    model = doc.get("model_name")
    return (outputs, model if isinstance(model, str) else None,
            str(version) if isinstance(version, str | int) and not isinstance(version, bool) else None)


def error_text(body: bytes, limit: int = _ERROR_MAX) -> str:
    """The server's ``{"error": "..."}`` message, else the body's text, clipped; never raises."""
    text = body[: limit * 4].decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        text = doc["error"]
    elif isinstance(doc, dict) and isinstance(doc.get("detail"), str):  # FastAPI-style servers
        text = doc["detail"]
    elif isinstance(doc, dict) and isinstance(doc.get("detail"), list):  # FastAPI's validation errors
        text = "; ".join(str(d.get("msg")) if isinstance(d, dict) and "msg" in d else json.dumps(d)
                         for d in doc["detail"][:5])
    text = " ".join(text.split()) or "(empty body)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- server side


class ProtocolError(ValueError):
    """A request the server refuses with 400; the message is the ``error`` text."""


def decode_request(doc: Any, inputs: Sequence[TensorSpec]) -> tuple[dict[str, Any], list[str] | None, Any]:
    """({input name: nested value}, requested output names or None, id) of an infer request.

    Checks what the protocol says (names known, datatypes equal, data fills the shape); the values
    themselves are checked by the model's own input check.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise ProtocolError('the request must be a JSON object with an "inputs" list')
    declared = {s.name: s for s in inputs}
    named: dict[str, Any] = {}
    for i, item in enumerate(doc["inputs"]):
        if not isinstance(item, dict):
            raise ProtocolError(f"inputs[{i}] is not an object")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str):
            raise ProtocolError(f"inputs[{i}] has no name")
        spec = declared.get(name)
        if spec is None:
            raise ProtocolError(f"unexpected input {name!r}; the model's inputs are: {', '.join(declared)}")
        if name in named:
            raise ProtocolError(f"input {name!r} is given twice")
        want = DTYPE_TO_OIP.get(spec.dtype, spec.dtype)
        if datatype != want:
            raise ProtocolError(f"input {name!r}: datatype {datatype!r} does not match the model's {want}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProtocolError(f"input {name!r}: shape must be a list of non-negative sizes")
        try:
            got, leaves = flatten(item.get("data"))
        except ValueError as exc:
            raise ProtocolError(f"input {name!r}: {exc}") from None
        if len(leaves) != _elements(shape):
            raise ProtocolError(f"input {name!r}: shape {shape} needs {_elements(shape)} values, got {len(leaves)}")
        named[name] = item.get("data") if got == shape else nest(leaves, shape)
    wanted = doc.get("outputs")
    names: list[str] | None = None
    if isinstance(wanted, list):
        names = [str(o.get("name")) for o in wanted if isinstance(o, dict)]
    return named, names, doc.get("id")


def encode_outputs(outputs: Sequence[TensorOut]) -> list[dict[str, Any]]:
    """Outputs of a local run as protocol tensors with flat data."""
    encoded = []
    for out in outputs:
        _, leaves = flatten(out.data)
        encoded.append({"name": out.name, "datatype": DTYPE_TO_OIP.get(out.dtype, out.dtype.upper()),
                        "shape": list(out.shape), "data": leaves})
    return encoded


# --------------------------------------------------------------------------- binary tensor data extension
# Triton's and KServe's: a request or answer is a JSON header of ``Inference-Header-Content-Length`` bytes,
# followed by the raw bytes of every tensor marked ``parameters.binary_data_size`` (in order, little-endian,
# row-major; BYTES elements each prefixed by a 4-byte little-endian length). Answers use it for the outputs
# asked for with ``parameters.binary_data: true``, or for all when ``parameters.binary_data_output`` is true.

#: The HTTP header that gives the JSON header's length in bytes.
HEADER_LENGTH: Final = "Inference-Header-Content-Length"
_NUMPY_LE: Final[Mapping[str, str]] = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}


def split_body(body: bytes, header_length: int | None) -> tuple[Any, bytes]:
    """(the JSON header, the tensor bytes after it); all of ``body`` is JSON when there is no header length."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} is {header_length}, but the body has {len(body)} bytes")
    head, raw = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        return json.loads(head), raw
    except (ValueError, UnicodeDecodeError) as exc:
        if header_length is None and _json_prefix(body):
            raise ProtocolError(f"bytes follow the request's JSON: binary tensor data needs the {HEADER_LENGTH} "
                                "header") from None
        what = "body" if header_length is None else f"JSON header (its first {header_length} bytes)"
        raise ProtocolError(f"the request {what} is not JSON: {exc}") from None


def _json_prefix(body: bytes) -> bool:
    """Whether ``body`` starts with a whole JSON object (a binary request sent without its header length)."""
    text = body.decode("utf-8", "replace")
    try:
        doc, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and end < len(text)


def tensor_from_bytes(datatype: Any, raw: bytes, name: str) -> list[Any]:
    """A binary tensor's values, flat; BYTES elements as text (the sandbox's models take strings)."""
    if datatype == "BYTES":
        values: list[Any] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise ProtocolError(f"input {name!r}: a BYTES element's 4-byte length is cut off")
            size = int.from_bytes(raw[offset:offset + 4], "little")
            if offset + 4 + size > len(raw):
                raise ProtocolError(f"input {name!r}: a BYTES element of {size} bytes goes past its data")
            try:
                values.append(raw[offset + 4:offset + 4 + size].decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError(f"input {name!r}: a BYTES element is not UTF-8 text") from None
            offset += 4 + size
        return values
    dtype = _NUMPY_LE.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ProtocolError(f"input {name!r}: datatype {datatype!r} cannot be sent as binary data")
    import numpy as np

    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise ProtocolError(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} values")
    values = np.frombuffer(raw, dtype=dtype).tolist()
    return values


def tensor_to_bytes(datatype: str, flat: Sequence[Any]) -> bytes:
    """Flat values as a binary tensor (a JSON null in float data, a non-finite value, becomes NaN)."""
    if datatype == "BYTES":
        parts = [v if isinstance(v, bytes) else str(v).encode() for v in flat]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    import numpy as np

    values = [math.nan if v is None else v for v in flat] if datatype.startswith("FP") else list(flat)
    return np.asarray(values, dtype=_NUMPY_LE[datatype]).tobytes()


def inline_binary_inputs(doc: Any, raw: bytes) -> Any:
    """The request with each binary input's bytes turned into a JSON ``data`` list, so
    :func:`decode_request` checks both forms alike; ProtocolError when the sizes do not add up."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        if raw:
            raise ProtocolError(f"{len(raw)} bytes follow the JSON header, but it has no inputs list")
        return doc
    inputs: list[Any] = []
    offset = 0
    for item in doc["inputs"]:
        params = item.get("parameters") if isinstance(item, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            inputs.append(item)
            continue
        name = str(item.get("name"))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a byte count")
        if "data" in item:
            raise ProtocolError(f"input {name!r}: has both data and binary_data_size")
        if offset + size > len(raw):
            raise ProtocolError(f"input {name!r}: binary_data_size {size} goes past the end of the body"
                                + ("" if raw else f" (no binary data: is the {HEADER_LENGTH} header missing?)"))
        inputs.append({**item, "data": tensor_from_bytes(item.get("datatype"), raw[offset:offset + size], name)})
        offset += size
    if offset != len(raw):
        raise ProtocolError(f"{len(raw) - offset} bytes after the JSON header belong to no input")
    return {**doc, "inputs": inputs}


def binary_outputs(doc: Any, names: Iterable[str]) -> set[str]:
    """Outputs to answer as binary, by Triton's rule: an output's own ``parameters.binary_data`` when it
    is requested with one, else the request's ``parameters.binary_data_output`` (default false)."""
    params = doc.get("parameters") if isinstance(doc, dict) else None
    default = isinstance(params, dict) and params.get("binary_data_output") is True
    own: dict[str, bool] = {}
    wanted = doc.get("outputs") if isinstance(doc, dict) else None
    for item in wanted if isinstance(wanted, list) else []:
        p = item.get("parameters") if isinstance(item, dict) else None
        if isinstance(p, dict) and isinstance(p.get("binary_data"), bool):
            own[str(item.get("name"))] = p["binary_data"]
    return {n for n in names if own.get(n, default)}


def encode_answer(answer: Mapping[str, Any], binary: set[str]) -> tuple[bytes, int | None]:
    """An infer answer's body, and the JSON header's length when some outputs go as bytes (then the
    body is that header followed by their bytes, and the length goes in ``Inference-Header-Content-Length``)."""
    if not binary:
        return json.dumps(answer, separators=(",", ":")).encode(), None
    outputs: list[Any] = []
    raw: list[bytes] = []
    for out in answer.get("outputs") or []:
        if out.get("name") in binary:
            data = tensor_to_bytes(out["datatype"], out["data"])
            params = {**(out.get("parameters") or {}), "binary_data_size": len(data)}
            out = {**{k: v for k, v in out.items() if k != "data"}, "parameters": params}
            raw.append(data)
        outputs.append(out)
    header = json.dumps({**answer, "outputs": outputs}, separators=(",", ":")).encode()
    return header + b"".join(raw), len(header)
