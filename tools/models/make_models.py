"""Build the small ONNX models shipped with opsgate, byte for byte reproducibly.

Run ``python tools/models/make_models.py [OUT_DIR]`` (default: this folder).
The weights are not trained: they come from a seeded generator so that the
files, and every test that runs them, are the same on every machine. Needs the
``onnx`` package (a dev dependency); the server itself only needs onnxruntime.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# onnxruntime 1.17 reads IR version 9 at most; 8 keeps older runtimes working too.
IR_VERSION = 8
N_FEATURES = 4
N_HIDDEN = 16
N_CLASSES = 3
# Published per-feature mean and standard deviation of Fisher's iris data (cm), folded
# into the first layer so iris-like measurements land in the useful range of the weights.
IRIS_MEAN = np.array([5.843, 3.057, 3.758, 1.199])
IRIS_STD = np.array([0.825, 0.434, 1.759, 0.760])

# name -> seed; a new seed is a new "version" with the same signature.
MODELS: dict[str, int] = {"iris": 20240501, "iris-v2": 20240502}


def _initializer(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name=name)


def build_iris(name: str, seed: int) -> onnx.ModelProto:
    """MLP classifier: features[batch, 4] -> probabilities[batch, 3], label[batch]."""
    rng = np.random.default_rng(seed)
    # He-style scaling on standardised inputs keeps the softmax away from saturation.
    w1 = rng.normal(0.0, np.sqrt(2.0 / N_FEATURES), size=(N_HIDDEN, N_FEATURES))
    b1 = rng.normal(0.0, 0.1, size=(N_HIDDEN,))
    w2 = rng.normal(0.0, np.sqrt(2.0 / N_HIDDEN), size=(N_CLASSES, N_HIDDEN))
    b2 = rng.normal(0.0, 0.1, size=(N_CLASSES,))
    # Standardise inside the model: w1 @ ((x - mean) / std) + b1 == (w1 / std) @ x + (b1 - (w1 / std) @ mean).
    w1 = w1 / IRIS_STD
    b1 = b1 - w1 @ IRIS_MEAN

    nodes = [
        helper.make_node("Gemm", ["features", "w1", "b1"], ["hidden_pre"], name="fc1", transB=1),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"], name="relu1"),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        name.replace("-", "_"),
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_FEATURES])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", N_CLASSES]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            _initializer("w1", w1),
            _initializer("b1", b1),
            _initializer("w2", w2),
            _initializer("b2", b2),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="opsgate-make-models",
        producer_version="1",
        doc_string=f"Untrained iris-shaped MLP, numpy default_rng seed {seed}.",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_all(out_dir: Path) -> list[Path]:
    """Write every model to ``out_dir``; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, seed in MODELS.items():
        path = out_dir / f"{name}.onnx"
        # Serialise ourselves: the bytes depend only on the proto, not on onnx.save's options.
        path.write_bytes(build_iris(name, seed).SerializeToString(deterministic=True))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0]) if argv else Path(__file__).resolve().parent
    for path in build_all(out_dir):
        print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
