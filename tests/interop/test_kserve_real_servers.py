"""kserve_infer against a real KServe model server, and Triton's own HTTP client against the sandbox (issue 14).

- A real ``kserve.ModelServer`` (the PyPI ``kserve`` package: its data plane, FastAPI app, v1 and v2
  endpoints and error handlers) serves the shipped iris ONNX model through a custom ``kserve.Model``
  that runs onnxruntime, in a subprocess on 127.0.0.1 and an ephemeral port. Its model metadata is
  ``"versions": null, "inputs": [], "outputs": []``, as every custom predictor's is. ``opsgate serve``
  (the real stdio server, through the SDK client) calls it with ``kserve_infer`` and its ``url``
  override, for an InferenceService that is Ready in the sandbox cluster: the numbers must equal a
  direct onnxruntime run, over v2 and v1, and KServe's own error text must come back quoted, with its
  HTTP status.
- ``tritonclient.http.InferenceServerClient`` calls the sandbox's model endpoint with JSON tensors and
  with the binary tensor data extension, and gets the same numbers.
- Pure tests of the datatype inference, the metadata-less request and the binary codec.

``python -m tests.interop.test_kserve_real_servers MODEL.onnx`` runs the KServe server alone (it prints its port).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opsgate.tools import oip
from opsgate.tools.kserve.infer import unchecked_note
from opsgate.tools.tensors import MODELS_DIR_DEFAULT, ModelInputError

ROOT = Path(__file__).resolve().parents[2]
IRIS_PATH = Path(MODELS_DIR_DEFAULT) / "iris.onnx"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
NS = "ml"
SERVICE = {"name": "iris", "namespace": NS}


def direct_run(rows: list[list[float]]) -> dict[str, Any]:
    """The model's outputs from onnxruntime itself: what every path must reproduce."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(IRIS_PATH), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"features": np.asarray(rows, dtype=np.float32)})
    return {meta.name: value.tolist() for meta, value in zip(session.get_outputs(), outputs, strict=True)}


# --------------------------------------------------------------------------- pure


def test_datatype_inference() -> None:
    assert oip.infer_datatype([1, 2, 3]) == "INT64"
    assert oip.infer_datatype([1, 2.5]) == "FP32" and oip.infer_datatype([0.5]) == "FP32"
    assert oip.infer_datatype([True, False]) == "BOOL"
    assert oip.infer_datatype(["a", "b"]) == "BYTES"
    for unknown in ([], [True, 1], ["a", 1], [None], [{"x": 1}]):
        assert oip.infer_datatype(unknown) is None, unknown


def test_metadata_of_a_kserve_custom_predictor_parses() -> None:
    meta = oip.parse_metadata({"name": "iris", "versions": None, "platform": "", "inputs": [], "outputs": []},
                              "read")
    assert meta.versions == [] and not meta.checkable
    triton = oip.parse_metadata({"name": "m", "versions": ["1"], "platform": "onnxruntime_onnx",
                                 "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                                 "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}]}, "read")
    assert triton.checkable, "full metadata keeps the check before sending"


def test_a_metadata_less_request_sends_the_tensors_as_given() -> None:
    body, inferred = oip.encode_unchecked({"features": [[5, 3.5, 1.4, 0.2]], "ids": [7, 8], "flags": [True]}, 100)
    assert body["inputs"] == [
        {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.0, 3.5, 1.4, 0.2]},
        {"name": "ids", "shape": [2], "datatype": "INT64", "data": [7, 8]},
        {"name": "flags", "shape": [1], "datatype": "BOOL", "data": [True]},
    ]
    assert inferred == {"features": "FP32", "ids": "INT64", "flags": "BOOL"}
    stated = [oip.OipTensorIn(name="x", datatype="FP64", shape=[2, 2], data=[1, 2, 3, 4]),
              oip.OipTensorIn(name="s", data=[["a"], ["b"]])]
    body, inferred = oip.encode_unchecked(stated, 100)
    assert body["inputs"][0] == {"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}
    assert body["inputs"][1] == {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "b"]}
    assert inferred == {"s": "BYTES"}, "only what was inferred is reported as inferred"
    note = unchecked_note({"features": "FP32"})
    assert note.startswith("no metadata check was possible") and '"features" FP32' in note

    refusals: list[tuple[Any, str]] = [
        ({}, "no-inputs"),
        ({"x": [[1, 2], [3]]}, "ragged"),
        ({"x": [1, "a"]}, "datatype-needed"),
        ({"x": []}, "datatype-needed"),
        ({"x": list(range(101))}, "size"),
        ([oip.OipTensorIn(name="x", datatype="INT8", data=[300])], "datatype"),
        ([oip.OipTensorIn(name="x", datatype="UINT8", data=[-1])], "datatype"),
        ([oip.OipTensorIn(name="x", datatype="INT64", data=[1.5])], "datatype"),
        ([oip.OipTensorIn(name="x", datatype="FP32", data=[float("inf")])], "datatype"),
        ([oip.OipTensorIn(name="x", datatype="BF16", data=[1.0])], "datatype"),
        ([oip.OipTensorIn(name="x", shape=[3], data=[1, 2])], "shape"),
        ([oip.OipTensorIn(name="x", data=[1]), oip.OipTensorIn(name="x", data=[2])], "duplicate-input"),
    ]
    for inputs, rule in refusals:
        with pytest.raises(ModelInputError) as refused:
            oip.encode_unchecked(inputs, 100)
        assert refused.value.rule == rule, (inputs, refused.value.message)


def test_binary_tensor_codec() -> None:
    floats = np.asarray([[0.5, 1.25], [2.0, -3.5]], dtype=np.float32)
    words = b"".join(len(w).to_bytes(4, "little") + w for w in (b"ok", "né".encode()))
    header = {"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}},
        {"name": "j", "datatype": "INT64", "shape": [1], "data": [3]},
        {"name": "w", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(words)}},
    ], "parameters": {"binary_data_output": True}, "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}
    head = json.dumps(header).encode()
    doc, raw = oip.split_body(head + floats.tobytes() + words, len(head))
    inlined = oip.inline_binary_inputs(doc, raw)
    assert [i["data"] for i in inlined["inputs"]] == [[0.5, 1.25, 2.0, -3.5], [3], ["ok", "né"]]
    assert oip.binary_outputs(doc, ["x", "y"]) == {"x"}, "an output's own binary_data wins over the default"
    for bad_raw, text in ((raw[:-1], "past the end"), (raw + b"\0", "belong to no input")):
        with pytest.raises(oip.ProtocolError, match=text):
            oip.inline_binary_inputs(doc, bad_raw)
    with pytest.raises(oip.ProtocolError, match="past its data"):
        oip.tensor_from_bytes("BYTES", (10).to_bytes(4, "little") + b"ok", "w")
    with pytest.raises(oip.ProtocolError, match="whole number"):
        oip.tensor_from_bytes("FP32", floats.tobytes()[:15], "a")
    with pytest.raises(oip.ProtocolError, match="Inference-Header-Content-Length"):
        oip.split_body(b"{}", 5)

    answer = {"model_name": "m", "outputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, None]},
                                             {"name": "y", "datatype": "INT64", "shape": [1], "data": [9]}]}
    body, length = oip.encode_answer(answer, {"x"})
    assert length is not None
    head_doc = json.loads(body[:length])
    assert head_doc["outputs"][0] == {"name": "x", "datatype": "FP32", "shape": [2],
                                      "parameters": {"binary_data_size": 8}}
    assert head_doc["outputs"][1]["data"] == [9]
    values = np.frombuffer(body[length:], dtype="<f4")
    assert values[0] == 1.5 and np.isnan(values[1])
    assert oip.encode_answer(answer, set()) == (json.dumps(answer, separators=(",", ":")).encode(), None)


def test_error_text_of_a_fastapi_validation_error() -> None:
    """What KServe's FastAPI answers (422) to a body that is not JSON: its messages, not Python reprs."""
    body = b'{"detail":[{"type":"json_invalid","loc":["body",0],"msg":"JSON decode error","input":{}}]}'
    assert oip.error_text(body) == "JSON decode error"


# --------------------------------------------------------------------------- a real KServe model server


def serve_kserve(model_path: str) -> None:
    """Run KServe's own server with a custom onnxruntime predictor named ``iris`` on 127.0.0.1:<free port>.

    KServe's ``ModelServer.start`` listens on 0.0.0.0 (and gRPC on 8081); this builds the same REST
    server from the ModelServer's data plane, on a socket bound to loopback, and prints its port.
    """
    import socket

    import kserve
    import onnxruntime as ort
    from kserve.errors import InvalidInput
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer
    from kserve.utils.utils import from_np_dtype, generate_uuid

    class OnnxPredictor(kserve.Model):  # type: ignore[misc]
        """A custom predictor as KServe's docs show one: no get_input_types, so metadata lists no inputs."""

        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.load()

        def load(self) -> bool:
            self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
            self.ready = True
            return True

        def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
            names = [i.name for i in self.session.get_inputs()]
            if isinstance(payload, kserve.InferRequest):
                feeds = {}
                for tensor in payload.inputs:
                    if tensor.name not in names:
                        raise InvalidInput(f"unexpected input {tensor.name!r}; this model takes {names}")
                    feeds[tensor.name] = tensor.as_numpy()
                outputs = []
                for meta, value in zip(self.session.get_outputs(), self.session.run(None, feeds), strict=True):
                    out = kserve.InferOutput(name=meta.name, shape=list(value.shape),
                                             datatype=from_np_dtype(value.dtype))
                    out.set_data_from_numpy(value, binary_data=False)
                    outputs.append(out)
                return kserve.InferResponse(model_name=self.name, infer_outputs=outputs,
                                            response_id=payload.id or generate_uuid())
            instances = np.asarray(payload["instances"], dtype=np.float32)
            return {"predictions": self.session.run(None, {names[0]: instances})[0].tolist()}

    class TypedPredictor(OnnxPredictor):
        """One that says what it takes (as Triton and KServe's built-in servers do): opsgate checks first."""

        def get_input_types(self) -> list[dict[str, Any]]:
            return [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]

        def get_output_types(self) -> list[dict[str, Any]]:
            return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}]

    server = kserve.ModelServer(enable_grpc=False, workers=1)
    server.register_model(OnnxPredictor("iris", model_path))
    server.register_model(TypedPredictor("iris-typed", model_path))
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, 0)
    rest.config.host = "127.0.0.1"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    rest.run(sockets=[sock])


@pytest.fixture(scope="module")
def kserve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real KServe server's base URL, up and ready; stopped at the end of the module."""
    folder = tmp_path_factory.mktemp("kserve")
    out, errs = folder / "stdout", folder / "stderr"
    with out.open("wb") as stdout, errs.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tests.interop.test_kserve_real_servers", str(IRIS_PATH)],
                                cwd=ROOT, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        url = ""
        while True:
            assert proc.poll() is None, f"the KServe server exited: {errs.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the KServe server did not start: {errs.read_text()[-2000:]}"
            first = out.read_text().split("\n", 1)
            if not url and len(first) == 2:
                url = f"http://127.0.0.1:{int(first[0])}"
            if url:
                try:
                    with urllib.request.urlopen(f"{url}/v2/models/iris/ready", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError):
                    pass
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A sandbox cluster where InferenceServices ml/iris and ml/iris-typed (protocol v2) are Ready."""
    from kubernetes import client, config

    from opsgate.sandbox import SandboxCluster

    with SandboxCluster(rollout_delay=0.05) as sandbox:
        new_client: Any = config.new_client_from_config_dict
        api = new_client(sandbox.kubeconfig())
        core: Any = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        custom: Any = client.CustomObjectsApi(api)
        where = ("serving.kserve.io", "v1beta1", NS, "inferenceservices")
        model = {"modelFormat": {"name": "onnx"}, "storageUri": f"file://{IRIS_PATH}", "protocolVersion": "v2"}
        for name in ("iris", "iris-typed"):
            custom.create_namespaced_custom_object(*where, {
                "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": name},
                "spec": {"predictor": {"model": model}}})
        deadline = time.monotonic() + 10
        for name in ("iris", "iris-typed"):
            while True:
                conditions = (custom.get_namespaced_custom_object(*where, name).get("status") or {}).get("conditions")
                if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions or []):
                    break
                assert time.monotonic() < deadline, f"the sandbox's InferenceService {name} did not become Ready"
                time.sleep(0.05)
        api.close()
        yield sandbox


@asynccontextmanager
async def opsgate(tmp_path: Path, cluster: Any) -> AsyncIterator[Any]:
    """``opsgate serve`` as a viewer whose bounds allow the ``url`` override (the real server is not the
    service's status.url)."""
    from tests.harness import serve, write_policy

    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = write_policy(tmp_path / "policy", ["p, role:viewer, *, *, read, allow", "g, bob, role:viewer, *"])
    (policy / "bounds.toml").write_text('[subject."role:viewer"]\nallow_url_override = true\n')
    async with serve(tmp_path, "--principal", "bob", "--kubeconfig", str(kubeconfig),
                     "--policy", str(policy)) as served:
        yield served


@pytest.mark.anyio
async def test_kserve_infer_against_a_real_kserve_model_server(tmp_path: Path, cluster: Any,
                                                              kserve_url: str) -> None:
    from tests.harness import err, ok

    with urllib.request.urlopen(f"{kserve_url}/v2/models/iris", timeout=5) as answer:
        metadata = json.loads(answer.read())
    assert metadata["versions"] is None and metadata["inputs"] == [] and metadata["outputs"] == [], \
        "what a real KServe custom predictor answers (the case this test exists for)"
    with urllib.request.urlopen(f"{kserve_url}/v2/models/iris-typed", timeout=5) as answer:
        typed_metadata = json.loads(answer.read())
    assert typed_metadata["versions"] is None and typed_metadata["inputs"][0]["name"] == "features"
    want = direct_run(ROWS)
    async with opsgate(tmp_path, cluster) as s:
        v2 = ok(await s.call("kserve_infer", {**SERVICE, "url": kserve_url, "inputs": {"features": ROWS}}))
        assert v2["protocol"] == "v2" and v2["url"] == kserve_url
        assert {o["name"]: o["data"] for o in v2["outputs"]} == want, "the numbers of a direct onnxruntime run"
        assert [o["shape"] for o in v2["outputs"]] == [[3, 3], [3]]
        assert v2["metadata_checked"] is False
        assert v2["notes"] and v2["notes"][0].startswith("no metadata check was possible")
        assert '"features" FP32' in v2["notes"][0], "says which datatype it inferred"

        stated = [{"name": "features", "datatype": "FP32", "shape": [3, 4], "data": [v for row in ROWS for v in row]}]
        same = ok(await s.call("kserve_infer", {**SERVICE, "url": kserve_url, "inputs": stated}))
        assert same["outputs"] == v2["outputs"] and "inferred" not in same["notes"][0]

        v1 = ok(await s.call("kserve_infer", {**SERVICE, "url": kserve_url, "protocol": "v1",
                                              "inputs": {"instances": ROWS}}))
        assert v1["protocol"] == "v1" and v1["outputs"][0]["data"] == want["probabilities"]
        assert v1["metadata_checked"] is False

        wrong = err(await s.call("kserve_infer", {**SERVICE, "url": kserve_url, "inputs": {"feature": ROWS}}))
        assert (wrong["code"], wrong["http_status"]) == ("model_error", 400), wrong
        assert "answered HTTP 400, saying: " in wrong["message"]
        assert json.dumps("unexpected input 'feature'; this model takes ['features']") in wrong["message"], \
            "KServe's own message, quoted as a JSON string"

        typed = {"name": "iris-typed", "namespace": NS, "url": kserve_url}
        checked = ok(await s.call("kserve_infer", {**typed, "inputs": {"features": ROWS}}))
        assert checked["metadata_checked"] is True and checked["notes"] == []
        assert {o["name"]: o["data"] for o in checked["outputs"]} == want
        refused = err(await s.call("kserve_infer", {**typed, "inputs": {"feature": ROWS}}))
        assert refused["code"] == "invalid_arguments" and "http_status" not in refused, \
            "KServe's full metadata (versions null) still lets opsgate refuse before sending"

        ints = err(await s.call("kserve_infer", {**SERVICE, "url": kserve_url,
                                                 "inputs": {"features": [[5, 3, 1, 0]]}}))
        assert (ints["code"], ints["http_status"]) == ("model_error", 500), ints
        assert 'saying: "' in ints["message"] and "tensor(int64)" in ints["message"], \
            "ints are sent as the INT64 they are; the model's refusal comes back quoted"


# --------------------------------------------------------------------------- Triton's client, the sandbox's server


def test_triton_http_client_against_the_sandbox_model_endpoint(cluster: Any) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    url = cluster.kserve.url_of("iris", NS)
    assert url is not None
    want = direct_run(ROWS)
    rows = np.asarray(ROWS, dtype=np.float32)
    tc = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        assert tc.is_server_live() and tc.is_model_ready("iris")
        meta = tc.get_model_metadata("iris")
        assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]

        for binary in (False, True):
            features = triton.InferInput("features", list(rows.shape), "FP32")
            features.set_data_from_numpy(rows, binary_data=binary)
            outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "label")]
            result = tc.infer("iris", [features], outputs=outputs)
            assert result.as_numpy("probabilities").tolist() == want["probabilities"], binary
            assert result.as_numpy("label").tolist() == want["label"], binary
            sizes = [(o.get("parameters") or {}).get("binary_data_size") for o in result.get_response()["outputs"]]
            assert sizes == ([3 * 3 * 4, 3 * 8] if binary else [None, None]), sizes

        everything = tc.infer("iris", [features])  # no outputs named: the client asks for all, binary
        assert everything.as_numpy("label").tolist() == want["label"]
        assert all("data" not in o for o in everything.get_response()["outputs"])

        misnamed = triton.InferInput("feature", list(rows.shape), "FP32")
        misnamed.set_data_from_numpy(rows, binary_data=True)
        with pytest.raises(InferenceServerException, match="unexpected input 'feature'"):
            tc.infer("iris", [misnamed])
    finally:
        tc.close()
    answered = [r for r in cluster.kserve.infer_requests("iris", NS) if r.status == 200]
    assert len(answered) >= 3

    header = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 4],
                                     "parameters": {"binary_data_size": rows.nbytes}}]}).encode()
    for headers, text in (({}, "needs the Inference-Header-Content-Length header"),
                          ({"Inference-Header-Content-Length": "x"}, "must be a byte count")):
        request = urllib.request.Request(f"{url}/v2/models/iris/infer", data=header + rows.tobytes(), method="POST",
                                         headers={"Content-Type": "application/octet-stream", **headers})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 400 and text in json.loads(refused.value.read())["error"]


if __name__ == "__main__":
    serve_kserve(sys.argv[1])
