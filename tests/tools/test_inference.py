"""ModelStore and check_inputs against real onnxruntime sessions on the shipped models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from opsgate.tools import inference
from opsgate.tools.inference import (
    MODELS_DIR_DEFAULT,
    InferArgs,
    ListModelsArgs,
    ModelInputError,
    ModelRuntimeError,
    ModelStore,
    TensorSpec,
    check_inputs,
    parse_signature,
)

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture
def store() -> ModelStore:
    return ModelStore(MODELS_DIR_DEFAULT)


@pytest.fixture
def tmp_models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("iris", "iris-v2"):
        shutil.copy(MODELS_DIR_DEFAULT / f"{name}.onnx", folder / f"{name}.onnx")
    return folder


def _error(store: ModelStore, model: str, inputs: dict[str, Any]) -> ModelInputError:
    with pytest.raises(ModelInputError) as caught:
        store.infer(InferArgs(model=model, inputs=inputs))
    return caught.value


# --------------------------------------------------------------------------- listing


def test_list_models_shows_shipped_signatures(store: ModelStore) -> None:
    ListModelsArgs()  # no fields
    with pytest.raises(ValidationError):
        ListModelsArgs.model_validate({"x": 1})
    models = {m.name: m for m in store.list_models().models}
    assert sorted(models) == ["iris", "iris-v2"]
    for info in models.values():
        assert [s.model_dump() for s in info.inputs] == [
            {"name": "features", "dtype": "float32", "shape": ["batch", 4]}
        ]
        assert [s.model_dump() for s in info.outputs] == [
            {"name": "probabilities", "dtype": "float32", "shape": ["batch", 3]},
            {"name": "label", "dtype": "int64", "shape": ["batch"]},
        ]
        assert info.size_bytes == (MODELS_DIR_DEFAULT / f"{info.name}.onnx").stat().st_size


def test_signature_reader_agrees_with_onnxruntime() -> None:
    for path in sorted(MODELS_DIR_DEFAULT.glob("*.onnx")):
        inputs, outputs = parse_signature(path.read_bytes())
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for ours, theirs in [(inputs, session.get_inputs()), (outputs, session.get_outputs())]:
            assert [(s.name, s.shape) for s in ours] == [(t.name, t.shape) for t in theirs]


def test_list_models_rereads_only_changed_files(tmp_models: Path) -> None:
    store = ModelStore(tmp_models)
    first = {m.name: m for m in store.list_models().models}
    again = {m.name: m for m in store.list_models().models}
    assert first["iris"] is again["iris"]  # cached by stamp
    (tmp_models / "iris-v2.onnx").unlink()
    (tmp_models / "notes.txt").write_text("not a model")
    (tmp_models / "broken.onnx").write_bytes(b"\xff\xff\xff")
    assert [m.name for m in store.list_models().models] == ["iris"]


# --------------------------------------------------------------------------- inference


def test_infer_matches_onnxruntime_directly(store: ModelStore) -> None:
    for name in ("iris", "iris-v2"):
        result = store.infer(InferArgs(model=name, inputs={"features": IRIS_ROWS}))
        session = onnxruntime.InferenceSession(
            str(MODELS_DIR_DEFAULT / f"{name}.onnx"), providers=["CPUExecutionProvider"]
        )
        probabilities, label = session.run(None, {"features": np.array(IRIS_ROWS, dtype=np.float32)})
        out = {o.name: o for o in result.outputs}
        assert result.model == name
        assert [o.name for o in result.outputs] == ["probabilities", "label"]
        assert (out["probabilities"].dtype, out["probabilities"].shape) == ("float32", [3, 3])
        assert (out["label"].dtype, out["label"].shape) == ("int64", [3])
        np.testing.assert_allclose(np.array(out["probabilities"].data), probabilities, rtol=1e-6)
        np.testing.assert_allclose(np.array(out["probabilities"].data).sum(axis=1), 1.0, rtol=1e-5)
        assert out["label"].data == label.tolist()
        assert out["label"].data == np.argmax(probabilities, axis=1).tolist()
        result.model_dump_json()  # plain lists: JSON-ready


def test_versions_differ(store: ModelStore) -> None:
    outs = [
        store.infer(InferArgs(model=m, inputs={"features": IRIS_ROWS})).outputs[0].data
        for m in ("iris", "iris-v2")
    ]
    assert not np.allclose(outs[0], outs[1])


def test_session_created_once_and_reused(tmp_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[object] = []
    real_new_session = inference._new_session

    def counting(data: bytes) -> Any:
        session = real_new_session(data)
        created.append(session)
        return session

    monkeypatch.setattr(inference, "_new_session", counting)
    store = ModelStore(tmp_models)
    args = InferArgs(model="iris", inputs={"features": IRIS_ROWS[:1]})
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            for _ in range(5):
                store.infer(args)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(created) == 1
    assert store._loaded["iris"].session is created[0]
    store.list_models()
    store.infer(args)
    assert len({id(s) for s in created}) == 1 and len(created) == 1

    # A replaced file is a new model: a new session, and the new weights answer.
    v2 = store.infer(InferArgs(model="iris-v2", inputs={"features": IRIS_ROWS[:1]}))
    os.replace(tmp_models / "iris-v2.onnx", tmp_models / "iris.onnx")
    swapped = store.infer(args)
    assert len(created) == 3
    assert swapped.outputs[0].data == v2.outputs[0].data


def test_onnxruntime_is_imported_lazily() -> None:
    code = (
        "import sys\n"
        "from opsgate.tools import inference\n"
        "inference.ModelStore(inference.MODELS_DIR_DEFAULT).list_models()\n"
        "assert 'onnxruntime' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nothing_written_to_stdout(tmp_models: Path, capfd: pytest.CaptureFixture[str]) -> None:
    store = ModelStore(tmp_models)
    (tmp_models / "broken.onnx").write_bytes(b"junk")
    store.list_models()
    store.infer(InferArgs(model="iris", inputs={"features": IRIS_ROWS}))
    assert capfd.readouterr().out == ""


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("inputs", "field", "rule", "fragment"),
    [
        ({}, "inputs.features", "missing-input", "features"),
        ({"features": IRIS_ROWS, "extra": [1]}, "inputs.extra", "unknown-input", "its inputs are: features"),
        ({"features": [[1, 2, 3, "4"]]}, "inputs.features", "dtype", "expected float32 numbers"),
        ({"features": [[1, 2, 3, True]]}, "inputs.features", "dtype", "boolean"),
        ({"features": [[1, 2, 3, None]]}, "inputs.features", "dtype", "null"),
        (
            {"features": [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]},
            "inputs.features",
            "shape",
            "expected shape [batch, 4], got [2, 5]",
        ),
        ({"features": [1, 2, 3, 4]}, "inputs.features", "shape", "got [4]"),
        ({"features": [[1, 2, 3, 4], [1, 2]]}, "inputs.features", "ragged", "found a list of 2"),
        ({"features": [[1, 2, 3, 4], 5]}, "inputs.features", "ragged", "depth 1"),
        ({"features": [[1, 2, 3, [4]]]}, "inputs.features", "ragged", "deeper"),
        ({"features": [[1.0, 2.0, 3.0, 4.0]] * 26}, "inputs.features", "size", "at most 100 elements"),
        ({"features": [[1.0, 2.0, float("nan"), 4.0]]}, "inputs.features", "finite", "nan"),
        ({"features": [[1.0, 2.0, float("inf"), 4.0]]}, "inputs.features", "finite", "inf"),
        ({"features": [[1.0, 2.0, 1e39, 4.0]]}, "inputs.features", "finite", "beyond the float32 range"),
        ({"features": [[1, 2, 10**400, 4]]}, "inputs.features", "finite", "beyond the float32 range"),
    ],
)
def test_bad_inputs(tmp_models: Path, inputs: dict[str, Any], field: str, rule: str, fragment: str) -> None:
    store = ModelStore(tmp_models, max_input_elements=100)
    error = _error(store, "iris", inputs)
    assert (error.field, error.rule) == (field, rule), error.message
    assert fragment in error.message
    assert error.message.startswith(field)
    assert str(error) == error.message


def test_size_checked_before_walking_everything() -> None:
    spec = [TensorSpec(name="x", dtype="float32", shape=["n"])]
    huge = [0.0] * 5_000_000
    with pytest.raises(ModelInputError) as caught:
        check_inputs(spec, {"x": huge}, max_elements=1000)
    assert caught.value.rule == "size"
    # The budget is shared by all inputs of one call.
    two = [
        TensorSpec(name="a", dtype="float32", shape=["n"]),
        TensorSpec(name="b", dtype="float32", shape=["m"]),
    ]
    check_inputs(two, {"a": [0.0] * 6, "b": [0.0] * 4}, max_elements=10)
    with pytest.raises(ModelInputError) as caught:
        check_inputs(two, {"a": [0.0] * 6, "b": [0.0] * 5}, max_elements=10)
    assert (caught.value.field, caught.value.rule) == ("inputs.b", "size")


@pytest.mark.parametrize(
    "model", ["../iris", "..", "a..b", "models/iris", "/etc/passwd", "iris\\x", "", ".hidden", "x" * 129]
)
def test_model_name_must_be_a_plain_name(model: str) -> None:
    with pytest.raises(ValidationError):
        InferArgs(model=model, inputs={})


def test_infer_args_forbid_extra_fields() -> None:
    with pytest.raises(ValidationError):
        InferArgs.model_validate({"model": "iris", "inputs": {}, "path": "/tmp/x.onnx"})


def test_unknown_model_lists_available(store: ModelStore) -> None:
    error = _error(store, "iris-v3", {"features": IRIS_ROWS})
    assert (error.field, error.rule) == ("model", "unknown-model")
    assert "iris, iris-v2" in error.message
    # Even if validation of InferArgs is bypassed, the store does not take a path.
    error = _error(store, "iris", {})  # sanity: the real one is found (then fails on inputs)
    assert error.rule == "missing-input"
    with pytest.raises(ModelInputError) as caught:
        store.infer(InferArgs.model_construct(model="../models/iris", inputs={"features": IRIS_ROWS}))
    assert caught.value.rule == "unknown-model"


def test_symlinks_may_not_leave_the_folder(tmp_path: Path, tmp_models: Path) -> None:
    outside = tmp_path / "outside.onnx"
    shutil.copy(tmp_models / "iris.onnx", outside)
    (tmp_models / "escape.onnx").symlink_to(outside)
    (tmp_models / "alias.onnx").symlink_to(tmp_models / "iris.onnx")
    (tmp_models / "dir.onnx").mkdir()
    store = ModelStore(tmp_models)
    assert [m.name for m in store.list_models().models] == ["alias", "iris", "iris-v2"]
    assert _error(store, "escape", {"features": IRIS_ROWS}).rule == "unknown-model"
    assert _error(store, "dir", {"features": IRIS_ROWS}).rule == "unknown-model"
    assert store.infer(InferArgs(model="alias", inputs={"features": IRIS_ROWS})).model == "alias"


def test_input_elements_is_a_cheap_count(store: ModelStore) -> None:
    assert store.input_elements(InferArgs(model="iris", inputs={"features": IRIS_ROWS})) == 12
    assert store.input_elements(InferArgs(model="iris", inputs={"a": 3.0, "b": [], "c": [[1, 2]]})) == 3


# --------------------------------------------------------------------------- check_inputs on its own


def test_symbolic_dims_must_agree_across_inputs() -> None:
    spec = [
        TensorSpec(name="a", dtype="float32", shape=["n", 2]),
        TensorSpec(name="b", dtype="float32", shape=["n", None]),
    ]
    feeds = check_inputs(spec, {"a": [[1, 2], [3, 4]], "b": [[1, 2, 3], [4, 5, 6]]}, 100)
    assert feeds["a"].shape == (2, 2) and feeds["b"].shape == (2, 3)
    with pytest.raises(ModelInputError) as caught:
        check_inputs(spec, {"a": [[1, 2], [3, 4]], "b": [[1, 2, 3]]}, 100)
    assert (caught.value.field, caught.value.rule) == ("inputs.b", "shape")
    assert "n=2 as in inputs.a" in caught.value.message
    square = [TensorSpec(name="m", dtype="float32", shape=["k", "k"])]
    with pytest.raises(ModelInputError):
        check_inputs(square, {"m": [[1, 2, 3], [4, 5, 6]]}, 100)


def test_integer_inputs_must_be_exact() -> None:
    spec = [TensorSpec(name="ids", dtype="int64", shape=[None])]
    feeds = check_inputs(spec, {"ids": [1, 2.0, -3]}, 100)
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].tolist() == [1, 2, -3]
    for bad, fragment in [
        (1.5, "1.5"),
        (True, "boolean"),
        ("7", "string"),
        (float("nan"), "nan"),
        (2**63, "9223372036854775807]"),
    ]:
        with pytest.raises(ModelInputError) as caught:
            check_inputs(spec, {"ids": [1, bad]}, 100)
        assert caught.value.rule == "dtype", bad
        assert fragment in caught.value.message
    small = [TensorSpec(name="b", dtype="uint8", shape=[None])]
    with pytest.raises(ModelInputError, match=r"\[0, 255\]"):
        check_inputs(small, {"b": [255, 256]}, 100)


def test_scalar_bool_and_unknown_rank_inputs() -> None:
    spec = [
        TensorSpec(name="s", dtype="float32", shape=[]),
        TensorSpec(name="flag", dtype="bool", shape=[1]),
        TensorSpec(name="any", dtype="float64", shape=None),
    ]
    feeds = check_inputs(spec, {"s": 2, "flag": [True], "any": [[[1.0]]]}, 100)
    assert feeds["s"].shape == () and feeds["s"].dtype == np.float32
    assert feeds["flag"].dtype == np.bool_ and feeds["any"].shape == (1, 1, 1)
    with pytest.raises(ModelInputError) as caught:
        check_inputs(spec, {"s": [2], "flag": [True], "any": 1.0}, 100)
    assert caught.value.rule == "shape"
    with pytest.raises(ModelInputError) as caught:
        check_inputs(spec, {"s": 2, "flag": [1], "any": 1.0}, 100)
    assert caught.value.rule == "dtype"


def test_numpy_arrays_are_accepted_from_python_callers() -> None:
    spec = [TensorSpec(name="x", dtype="float32", shape=["batch", 4])]
    feeds = check_inputs(spec, {"x": np.ones((2, 4))}, 100)
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (2, 4)
    with pytest.raises(ModelInputError, match="finite"):
        check_inputs(spec, {"x": np.full((1, 4), np.nan)}, 100)


# --------------------------------------------------------------------------- synthetic models (need onnx)


def _write_model(
    path: Path,
    inputs: list[Any],
    outputs: list[Any],
    nodes: list[Any],
    initializers: Sequence[Any] = (),
    ir: int = 8,
) -> None:
    onnx = pytest.importorskip("onnx")
    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17 if ir >= 4 else 9)])
    model.ir_version = ir
    path.write_bytes(model.SerializeToString())


def test_signature_distinguishes_scalar_unknown_rank_and_initializers(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    for ir in (3, 8):
        path = tmp_path / f"m{ir}.onnx"
        _write_model(
            path,
            inputs=[
                helper.make_tensor_value_info("scalar", TensorProto.FLOAT, []),
                helper.make_tensor_value_info("anyrank", TensorProto.FLOAT, None),
                helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),
                helper.make_tensor_value_info("ids", TensorProto.INT64, [None, "n", -1, 3]),
            ],
            outputs=[
                helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                helper.make_tensor_value_info("ids_out", TensorProto.INT64, None),
            ],
            nodes=[
                helper.make_node("Add", ["scalar", "w"], ["t"]),
                helper.make_node("Add", ["anyrank", "t"], ["y"]),
                helper.make_node("Identity", ["ids"], ["ids_out"]),
            ],
            initializers=[numpy_helper.from_array(np.array([1.0], dtype=np.float32), "w")],
            ir=ir,
        )
        inputs, _ = parse_signature(path.read_bytes())
        assert [s.model_dump() for s in inputs] == [
            {"name": "scalar", "dtype": "float32", "shape": []},
            {"name": "anyrank", "dtype": "float32", "shape": None},
            {"name": "ids", "dtype": "int64", "shape": [None, "n", None, 3]},
        ]
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["scalar", "anyrank", "ids"]
        store = ModelStore(tmp_path)
        result = store.infer(
            InferArgs(model=f"m{ir}", inputs={"scalar": 1, "anyrank": [[1.0, 2.0]], "ids": [[[[1, 2, 3]]]]})
        )
        assert result.outputs[0].data == [[3.0, 4.0]] and result.outputs[0].shape == [1, 2]
        assert result.outputs[1].data == [[[[1, 2, 3]]]]
    assert onnx is not None


def test_non_finite_outputs_become_null(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    _write_model(
        tmp_path / "log.onnx",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        nodes=[helper.make_node("Log", ["x"], ["y"])],
    )
    result = ModelStore(tmp_path).infer(InferArgs(model="log", inputs={"x": [1.0, 0.0, -1.0]}))
    assert result.outputs[0].data == [0.0, None, None]
    assert "NaN" not in result.model_dump_json() and "Infinity" not in result.model_dump_json()


# --------------------------------------------------------------------------- the shipped files


def test_make_models_is_byte_reproducible(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    script = MODELS_DIR_DEFAULT / "make_models.py"
    completed = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, check=True)
    assert completed.stdout == b""
    built = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert built == ["iris-v2.onnx", "iris.onnx"]
    for name in built:
        assert (tmp_path / name).read_bytes() == (MODELS_DIR_DEFAULT / name).read_bytes(), name


def test_errors_are_tool_errors_for_the_gate(tmp_models: Path) -> None:
    from opsgate.tools.errors import ToolError

    store = ModelStore(tmp_models)
    error = _error(store, "iris", {"features": [[1, 2, 3]]})
    assert isinstance(error, ToolError) and error.code == "invalid_arguments"
    assert (error.field, error.rule) == ("inputs.features", "shape")
    (tmp_models / "broken.onnx").write_bytes(b"\x0a\x03abc")
    with pytest.raises(ModelRuntimeError) as caught:
        store.infer(InferArgs(model="broken", inputs={}))
    assert isinstance(caught.value, ToolError) and caught.value.code == "model_error"
    assert "broken" in caught.value.message


_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=_JUNK, dtype=st.sampled_from(["float32", "int64", "uint8", "bool", "float16"]))
def test_any_json_value_is_fed_or_refused_cleanly(value: Any, dtype: str) -> None:
    spec = [TensorSpec(name="x", dtype=dtype, shape=None)]
    try:
        feeds = check_inputs(spec, {"x": value}, max_elements=30)
    except ModelInputError as error:
        assert error.rule in {"dtype", "shape", "size", "finite", "ragged"}
        assert error.message.startswith("inputs.x: ")
        return
    array = feeds["x"]
    assert array.dtype == np.dtype(dtype) and array.size <= 30
    assert array.tolist() == np.array(value, dtype=dtype).tolist()
