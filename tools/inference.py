"""Local ONNX inference for the gate: list model signatures, validate inputs, run.

Models are ``<folder>/<name>.onnx`` files and nothing else: a name never
becomes a path on its own. Signatures are read straight from the ONNX protobuf
(without loading weights, so listing stays cheap and tells a scalar from an
input of unknown rank, which onnxruntime's ``get_inputs`` cannot). Inputs are
checked by a pure function against that signature before anything is
converted or run, so an assistant gets one precise sentence instead of an
onnxruntime stack trace. onnxruntime is imported only when a model first runs:
it costs 0.15 s at import and the server must start fast.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from opsgate.vocab.elements import count_elements
from opsgate.vocab.limits import MAX_INPUT_ELEMENTS, MAX_OUTPUT_BYTES, MAX_OUTPUT_ELEMENTS

from .errors import ToolError
from .tensors import (
    MODEL_NAME_PATTERN,
    MODEL_NAME_RE,
    MODELS_DIR_DEFAULT,
    InferArgs,
    InferResult,
    ListModelsArgs,
    ListModelsResult,
    ModelInfo,
    ModelInputError,
    ModelRuntimeError,
    TensorOut,
    TensorSpec,
)
from .untrusted import TEXT_MAX, name_in_text, quoted

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "MODELS_DIR_DEFAULT",
    "MODEL_NAME_PATTERN",
    "InferArgs",
    "InferResult",
    "ListModelsArgs",
    "ListModelsResult",
    "ModelInfo",
    "ModelInputError",
    "ModelRuntimeError",
    "ModelStore",
    "TensorOut",
    "TensorSpec",
    "check_inputs",
    "parse_signature",
]

log = logging.getLogger(__name__)

_SUFFIX: Final = ".onnx"
# Deeper nesting than any real tensor; bounds the walk over untrusted lists.
_MAX_RANK: Final = 32


# --------------------------------------------------------------------------- models


# --------------------------------------------------------------------------- ONNX signature reader
#
# A minimal protobuf walk over ModelProto -> GraphProto -> ValueInfoProto -> TypeProto,
# skipping everything else (nodes, weights) by length. Field numbers are from onnx.proto3.

_Buffer = bytes | mmap.mmap

_ONNX_DTYPES: Final[dict[int, str]] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
}
_TYPE_KINDS: Final[dict[int, str]] = {4: "sequence", 5: "map", 8: "sparse_tensor", 9: "optional"}


def _varint(buf: _Buffer, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("protobuf varint too long")


def _fields(buf: _Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, a, b): a varint's value in a, else the payload span [a, b)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
            continue
        if wire == 2:
            length, pos = _varint(buf, pos, end)
            size = length
        elif wire == 1:
            size = 8
        elif wire == 5:
            size = 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos + size > end:
            raise ValueError("truncated protobuf field")
        yield number, wire, pos, pos + size
        pos += size


def _text(buf: _Buffer, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8")


def _dim(buf: _Buffer, start: int, end: int) -> int | str | None:
    dim: int | str | None = None
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == 0:
            value = a - (1 << 64) if a >= 1 << 63 else a
            dim = value if value >= 0 else None
        elif number == 2 and wire == 2:
            dim = _text(buf, a, b) or None
    return dim


def _tensor_type(buf: _Buffer, start: int, end: int) -> tuple[str, list[int | str | None] | None]:
    dtype = "undefined"
    shape: list[int | str | None] | None = None
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == 0:
            dtype = _ONNX_DTYPES.get(a, f"onnx-type-{a}")
        elif number == 2 and wire == 2:
            shape = [_dim(buf, da, db) for n, w, da, db in _fields(buf, a, b) if n == 1 and w == 2]
    return dtype, shape


def _value_info(buf: _Buffer, start: int, end: int) -> TensorSpec:
    name = ""
    dtype = "undefined"
    shape: list[int | str | None] | None = None
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == 2:
            name = _text(buf, a, b)
        elif number == 2 and wire == 2:
            for t_number, t_wire, ta, tb in _fields(buf, a, b):
                if t_number == 1 and t_wire == 2:
                    dtype, shape = _tensor_type(buf, ta, tb)
                elif t_number in _TYPE_KINDS and t_wire == 2:
                    dtype, shape = _TYPE_KINDS[t_number], None
    return TensorSpec(name=name, dtype=dtype, shape=shape)


def _tensor_name(buf: _Buffer, start: int, end: int) -> str:
    for number, wire, a, b in _fields(buf, start, end):
        if number == 8 and wire == 2:
            return _text(buf, a, b)
    return ""


def parse_signature(buf: _Buffer) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of a serialized ModelProto; inputs backed by an initializer are not inputs.

    Raises ValueError when the bytes are not a model.
    """
    graph: tuple[int, int] | None = None
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == 7 and wire == 2:
            graph = (a, b)
    if graph is None:
        raise ValueError("not an ONNX model: no graph")
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    initialized: set[str] = set()
    for number, wire, a, b in _fields(buf, *graph):
        if wire != 2:
            continue
        if number == 11:
            inputs.append(_value_info(buf, a, b))
        elif number == 12:
            outputs.append(_value_info(buf, a, b))
        elif number == 5:
            initialized.add(_tensor_name(buf, a, b))
        elif number == 15:  # SparseTensorProto: its values tensor carries the name
            for s_number, s_wire, sa, sb in _fields(buf, a, b):
                if s_number == 1 and s_wire == 2:
                    initialized.add(_tensor_name(buf, sa, sb))
    return [s for s in inputs if s.name not in initialized], outputs


# --------------------------------------------------------------------------- input validation

_NUMPY_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    name: np.dtype(name)
    for name in (
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
    )
}
_NUMPY_DTYPES["string"] = np.dtype(object)
_INT_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    name: (int(np.iinfo(dt).min), int(np.iinfo(dt).max))
    for name, dt in _NUMPY_DTYPES.items()
    if dt.kind in "iu"
}
# dtype.name costs 1.5 us per call; outputs ask it on every inference.
_DTYPE_NAMES: dict[np.dtype[Any], str] = {dt: name for name, dt in _NUMPY_DTYPES.items()}


def _kind(tp: type) -> str:
    kind = _KINDS.get(tp)
    if kind is None:
        kind = _KINDS[tp] = _classify(tp)
    return kind


_KINDS: dict[type, str] = {}


def _classify(tp: type) -> str:
    if issubclass(tp, bool | np.bool_):
        return "bool"
    if issubclass(tp, int | np.integer):
        return "int"
    if issubclass(tp, float | np.floating):
        return "float"
    if issubclass(tp, str):
        return "str"
    if issubclass(tp, list | tuple):
        return "list"
    return "other"


_KIND_WORDS: Final = {"bool": "a boolean", "int": "an integer", "float": "a number", "str": "a string"}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    word = _KIND_WORDS.get(_kind(type(value)), f"a {type(value).__name__}")
    try:
        text = repr(value)
    except ValueError:  # an int past Python's int-to-str digit limit
        text = "a very long integer"
    return f"{word} ({text[:40]}{'...' if len(text) > 40 else ''})"


def _fmt_shape(shape: list[int | str | None] | list[int] | None) -> str:
    if shape is None:
        return "any"
    # A symbolic dim's name comes from the model file: bare if plain, else quoted (issue 15 item 17).
    return "[" + ", ".join("?" if d is None else str(d) if isinstance(d, int) else name_in_text(d) for d in shape) + "]"


def _first_chain_shape(value: Any) -> list[int]:
    """Shape implied by the first element at every level; exact unless the nesting is ragged."""
    shape: list[int] = []
    node = value
    while isinstance(node, list | tuple) and len(shape) <= _MAX_RANK:
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    return shape


def _flatten(field: str, value: Any, budget: int, max_elements: int) -> tuple[list[int], list[Any]]:
    """Shape and row-major leaves of a nested list; refuses ragged nesting and over ``budget`` leaves."""

    def too_many() -> ModelInputError:
        return ModelInputError(
            field,
            "size",
            f"{field}: more than {budget} elements; at most {max_elements} elements in total "
            f"are accepted across all inputs of one call",
        )

    if isinstance(value, np.ndarray):
        if value.size > budget:
            raise too_many()
        return list(value.shape), value.ravel().tolist()
    shape = _first_chain_shape(value)
    if len(shape) > _MAX_RANK:
        raise ModelInputError(field, "shape", f"{field}: nested more than {_MAX_RANK} levels deep")
    level: list[Any] = [value]
    for depth, size in enumerate(shape):
        below: list[Any] = []
        for item in level:
            if not isinstance(item, list | tuple) or len(item) != size:
                got = f"a list of {len(item)}" if isinstance(item, list | tuple) else _describe(item)
                raise ModelInputError(
                    field,
                    "ragged",
                    f"{field}: ragged nesting; every list at depth {depth} must have {size} items "
                    f"like the first one, found {got}",
                )
            if len(below) + size > budget:
                raise too_many()
            below.extend(item)
        level = below
    if len(level) > budget:
        raise too_many()
    return shape, level


def _convert(field: str, dtype_name: str, leaves: list[Any]) -> np.ndarray[Any, Any]:
    """Leaves -> 1-d array of the model's dtype, refusing anything that would not convert exactly."""
    dtype = _NUMPY_DTYPES[dtype_name]
    kinds = {_kind(tp) for tp in set(map(type, leaves))}
    if "list" in kinds:
        raise ModelInputError(
            field, "ragged", f"{field}: ragged nesting; some items are nested deeper than others"
        )
    if dtype.kind in "fiu":
        allowed = {"int", "float"}
        expected = f"{dtype_name} {'numbers' if dtype.kind == 'f' else 'integers'}"
    elif dtype.kind == "b":
        allowed, expected = {"bool"}, "booleans (true/false)"
    else:
        allowed, expected = {"str"}, "strings"
    if not kinds <= allowed:
        bad = next(v for v in leaves if _kind(type(v)) not in allowed)
        raise ModelInputError(field, "dtype", f"{field}: expected {expected}, got {_describe(bad)}")

    if dtype.kind == "f":
        try:
            with np.errstate(over="ignore"):
                array = np.array(leaves, dtype=dtype)
        except OverflowError:
            array = np.array([math.inf])  # an int beyond float range; reported below
        if not np.isfinite(array).all():
            bad = next(v for v in leaves if not _finite_in(v, dtype))
            overflow = not (isinstance(bad, float | np.floating) and not math.isfinite(bad))
            why = f", beyond the {dtype_name} range" if overflow else ""
            raise ModelInputError(
                field, "finite", f"{field}: expected finite {dtype_name} numbers, got {_describe(bad)}{why}"
            )
        return array
    if dtype.kind in "iu":
        if "float" in kinds:
            for v in leaves:
                if isinstance(v, float | np.floating) and not float(v).is_integer():
                    raise ModelInputError(field, "dtype", f"{field}: expected {expected}, got {_describe(v)}")
            leaves = [int(v) for v in leaves]
        if leaves:
            least, most = _INT_BOUNDS[dtype_name]
            low, high = min(leaves), max(leaves)
            if low < least or high > most:
                bad = low if low < least else high
                raise ModelInputError(
                    field, "dtype", f"{field}: expected {expected} in [{least}, {most}], got {_describe(bad)}"
                )
    return np.array(leaves, dtype=dtype)


def _finite_in(value: Any, dtype: np.dtype[Any]) -> bool:
    try:
        with np.errstate(over="ignore"):
            return bool(np.isfinite(np.array(value, dtype=dtype)))
    except OverflowError:
        return False


def _check_shape(field: str, spec: TensorSpec, shape: list[int], bound: dict[str, tuple[int, str]]) -> None:
    """Fixed dims exact, symbolic dims consistent across inputs (recorded in ``bound``), null dims free."""
    if spec.shape is None:
        return

    def mismatch(why: str = "") -> ModelInputError:
        text = f"{field}: expected shape {_fmt_shape(spec.shape)}{why}, got {_fmt_shape(shape)}"
        return ModelInputError(field, "shape", text)

    if len(shape) != len(spec.shape):
        raise mismatch()
    new: dict[str, tuple[int, str]] = {}
    for got, want in zip(shape, spec.shape, strict=True):
        if isinstance(want, int) and got != want:
            raise mismatch()
        if isinstance(want, str):
            size, source = bound.get(want) or new.get(want) or (got, field)
            if size != got:
                raise mismatch(f" with {name_in_text(want)}={size} as in {source}")
            new[want] = (size, source)
    bound.update(new)


def input_field(name: str) -> str:
    """Where an input is, in errors: ``inputs.features``, or ``inputs["..."]`` quoted and capped when the name
    (written by whoever wrote the model file, or sent by the caller) is not a plain identifier (issue 15 item 17)."""
    shown = name_in_text(name)
    return f"inputs.{shown}" if shown == name else f"inputs[{shown}]"


def check_inputs(spec: list[TensorSpec], inputs: dict[str, Any], max_elements: int) -> dict[str, np.ndarray]:
    """Validate ``inputs`` against a model's input ``spec``; return the arrays to feed.

    Pure: raises ModelInputError with the first problem found, in the order names,
    then per input (in spec order) nesting and size, shape, dtype, finiteness.
    """
    expected_names = [s.name for s in spec]

    def listed() -> str:
        return ", ".join(name_in_text(n) for n in expected_names) or "(none)"

    for name in inputs:
        if name not in expected_names:
            field = input_field(name)
            raise ModelInputError(
                field, "unknown-input", f"{field}: the model has no input of that name; its inputs are: {listed()}"
            )
    for s in spec:
        if s.name not in inputs:
            field = input_field(s.name)
            raise ModelInputError(field, "missing-input", f"{field}: missing; the model's inputs are: {listed()}")
    feeds: dict[str, np.ndarray] = {}
    bound: dict[str, tuple[int, str]] = {}
    budget = max_elements
    for s in spec:
        field = input_field(s.name)
        if s.dtype not in _NUMPY_DTYPES:
            raise ModelInputError(field, "dtype", f"{field}: inputs of type {s.dtype} are not supported here")
        shape, leaves = _flatten(field, inputs[s.name], budget, max_elements)
        budget -= len(leaves)
        _check_shape(field, s, shape, bound)
        feeds[s.name] = _convert(field, s.dtype, leaves).reshape(shape)
    return feeds


def _output_bytes(value: np.ndarray[Any, Any]) -> int:
    if value.dtype.kind in "OUS":  # strings: their UTF-8 size, not the pointers' (bounded by the element cap)
        return sum(len(str(v).encode("utf-8", "surrogatepass")) for v in value.flat)
    return int(value.nbytes)


def check_output_size(model: str, outputs: list[tuple[str, Any]], max_elements: int = MAX_OUTPUT_ELEMENTS,
                      max_bytes: int = MAX_OUTPUT_BYTES) -> None:
    """Refuse outputs too large to return, before any is converted to Python lists. Pure.

    A model's output size may follow its input values (a Range to an input number), so small inputs
    can ask for millions of numbers: converting and sending them would hold a worker for seconds and
    the event loop while the answer is written. The sentence names the output, its shape and the cap.
    """
    elements = size = 0
    for name, value in outputs:
        if not isinstance(value, np.ndarray):
            continue  # _tensor_out refuses it
        elements += int(value.size)
        if elements > max_elements:
            raise ToolError(
                f"model {model!r}: output {quoted(name)} has {value.size} elements (shape {list(value.shape)}), and "
                f"one call returns at most {max_elements} over all outputs; nothing was returned. Smaller "
                "inputs give a smaller output", code="model_error", field="inputs", rule="output-too-large")
        size += _output_bytes(value)
        if size > max_bytes:
            raise ToolError(
                f"model {model!r}: output {quoted(name)} is {size} bytes with the outputs before it, and one call "
                f"returns at most {max_bytes} bytes; nothing was returned", code="model_error", field="inputs",
                rule="output-too-large")


def _tensor_out(name: str, value: Any) -> TensorOut:
    """An output array as JSON-ready lists; NaN and infinities become null."""
    if not isinstance(value, np.ndarray):
        raise ModelRuntimeError(
            f"output {name_in_text(name)} is not a tensor ({type(value).__name__}); not supported here"
        )
    dtype = _DTYPE_NAMES.get(value.dtype) or value.dtype.name
    if value.dtype.kind == "f":
        finite = np.isfinite(value)
        if not finite.all():
            cells = value.astype(object)
            cells[~finite] = None
            return TensorOut(name=name, dtype=dtype, shape=list(value.shape), data=cells.tolist())
    return TensorOut(name=name, dtype=dtype, shape=list(value.shape), data=value.tolist())


# --------------------------------------------------------------------------- store (the I/O edge)

_Stamp = tuple[int, int, int, int]


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class _Loaded:
    stamp: _Stamp
    info: ModelInfo
    session: onnxruntime.InferenceSession
    output_names: list[str]


def _new_session(data: bytes) -> onnxruntime.InferenceSession:
    import onnxruntime  # lazy: 0.15 s at import, paid on first inference, not at server start

    options = onnxruntime.SessionOptions()
    # Small models: a thread pool costs more in hand-offs than it saves; calls run in parallel instead.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only, and onnxruntime logs to stderr
    return onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


class ModelStore:
    """The models of one folder: signatures cached per file stamp, one session per model, reused.

    Thread-safe: lookups are lock-free; loading a model takes a lock so a session is built once.
    """

    def __init__(self, folder: Path, max_input_elements: int = MAX_INPUT_ELEMENTS) -> None:
        self.folder = Path(folder).resolve()
        self._prefix = os.path.join(self.folder, "")  # str paths: Path objects cost ~2 us per call
        self.max_input_elements = max_input_elements
        self._infos: dict[str, tuple[_Stamp, ModelInfo]] = {}
        self._loaded: dict[str, _Loaded] = {}
        # Files that failed to parse or load, by name, with the stamp they failed at and why (issue 15
        # item 20): a bad 16 MiB file cost seconds on every list_models. Re-read once it changes.
        self._bad: dict[str, tuple[_Stamp, str]] = {}
        self._lock = threading.Lock()

    # -- resolution

    def _names_on_disk(self) -> list[str]:
        try:
            files = os.listdir(self.folder)
        except OSError:
            return []
        names = (f[: -len(_SUFFIX)] for f in files if f.endswith(_SUFFIX))
        return sorted(n for n in names if _valid_name(n))

    def _locate(self, name: str) -> tuple[str, os.stat_result]:
        """``<folder>/<name>.onnx`` if it is a regular file that is (or links to one) inside the folder."""
        found = self._regular_file(name) if _valid_name(name) else None
        if found is not None:
            return found
        available = ", ".join(self._names_on_disk()) or "(none)"
        raise ModelInputError(
            "model", "unknown-model", f"model: no model named {name!r}; available: {available}"
        )

    def _regular_file(self, name: str) -> tuple[str, os.stat_result] | None:
        path = f"{self._prefix}{name}{_SUFFIX}"
        try:
            st = os.lstat(path)  # the common case, a plain file: no resolve() on the hot path
            if stat.S_ISLNK(st.st_mode):
                target = Path(path).resolve(strict=True)
                if not target.is_relative_to(self.folder):
                    return None
                path = str(target)
                st = os.stat(path)
        except (OSError, RuntimeError):  # RuntimeError: symlink loop on older Pythons
            return None
        return (path, st) if stat.S_ISREG(st.st_mode) else None

    # -- signatures

    def list_models(self) -> ListModelsResult:
        """Signatures of every model in the folder, re-read only when a file's stamp changes."""
        models: list[ModelInfo] = []
        names = self._names_on_disk()
        for name in names:
            try:
                path, st = self._locate(name)
            except ModelInputError:
                continue  # a directory, or a symlink leading out of the folder
            cached = self._infos.get(name)
            if cached is not None and cached[0] == _stamp(st):
                models.append(cached[1])
                continue
            bad = self._bad.get(name)
            if bad is not None and bad[0] == _stamp(st):
                continue  # failed before, unchanged since
            try:
                stamp, info = _read_info(name, path)
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable model %s: %s", path, exc)
                with self._lock:
                    self._bad[name] = (_stamp(st), f"model {name!r} could not be read: {quoted(exc, TEXT_MAX)}")
                continue
            with self._lock:
                self._infos[name] = (stamp, info)
            models.append(info)
        with self._lock:
            for gone in self._infos.keys() - set(names):
                del self._infos[gone]
            for gone in self._loaded.keys() - set(names):
                del self._loaded[gone]
            for gone in self._bad.keys() - set(names):
                del self._bad[gone]
        return ListModelsResult(models=models)

    # -- inference

    def _session(self, name: str) -> _Loaded:
        try:
            path, st = self._locate(name)
        except ModelInputError:
            with self._lock:  # the file is gone: let its session go too
                self._loaded.pop(name, None)
            raise
        loaded = self._loaded.get(name)
        if loaded is not None and loaded.stamp == _stamp(st):
            return loaded
        with self._lock:
            loaded = self._loaded.get(name)
            if loaded is not None and loaded.stamp == _stamp(st):
                return loaded
            bad = self._bad.get(name)
            if bad is not None and bad[0] == _stamp(st):
                raise ModelRuntimeError(bad[1])  # failed before, unchanged since: not parsed again
            try:
                loaded = _load(name, path)
            except ModelRuntimeError as exc:
                self._bad[name] = (_stamp(st), exc.message)
                raise
            self._loaded[name] = loaded
            self._infos[name] = (loaded.stamp, loaded.info)
            return loaded

    def loaded(self, name: str) -> bool:
        """Whether ``name``'s session is built and its file unchanged since: an infer of it loads nothing."""
        loaded = self._loaded.get(name)
        found = self._regular_file(name) if loaded is not None else None
        return found is not None and loaded is not None and loaded.stamp == _stamp(found[1])

    def input_elements(self, args: InferArgs) -> int:
        """Element count of the call's inputs, without touching the model (for policy bounds)."""
        return count_elements(args.inputs)

    def infer(self, args: InferArgs) -> InferResult:
        """Validate ``args`` against the model's signature, run it, return JSON-ready outputs."""
        loaded = self._session(args.model)
        feeds = check_inputs(loaded.info.inputs, args.inputs, self.max_input_elements)
        try:
            values = loaded.session.run(loaded.output_names, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelRuntimeError(f"model {args.model!r} failed to run: {quoted(exc, TEXT_MAX)}") from exc
        check_output_size(args.model, list(zip(loaded.output_names, values, strict=True)))
        return InferResult(
            model=args.model,
            outputs=[_tensor_out(n, v) for n, v in zip(loaded.output_names, values, strict=True)],
        )


def _valid_name(name: str) -> bool:
    return MODEL_NAME_RE.fullmatch(name) is not None and ".." not in name


def _read_info(name: str, path: str) -> tuple[_Stamp, ModelInfo]:
    """Signature through mmap, so the weights of a big model are skipped, not read."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_size == 0:
            raise ValueError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            inputs, outputs = parse_signature(view)
    return _stamp(st), ModelInfo(name=name, inputs=inputs, outputs=outputs, size_bytes=st.st_size)


def _load(name: str, path: str) -> _Loaded:
    """Read the file once; the signature and the session come from the same bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
        inputs, outputs = parse_signature(data)
        session = _new_session(data)
    except Exception as exc:  # OSError, ValueError, or onnxruntime's own types
        raise ModelRuntimeError(f"model {name!r} could not be loaded: {quoted(exc, TEXT_MAX)}") from exc
    info = ModelInfo(name=name, inputs=inputs, outputs=outputs, size_bytes=st.st_size)
    declared = sorted(i.name for i in session.get_inputs())
    if declared != sorted(s.name for s in inputs):
        raise ModelRuntimeError(f"model {name!r}: inputs read from the file disagree with onnxruntime's")
    return _Loaded(_stamp(st), info, session, [o.name for o in outputs])
