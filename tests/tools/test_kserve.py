"""The InferenceService tools against the sandbox cluster, over real HTTP, with the real ``kubernetes`` client.

deploy_model, model_status, kserve_infer, and scale/rollback/list_workloads with
``kind: InferenceService``, called as the server calls them: ``tool(kube, args, ctx)``.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from opsgate.policies import BoundAttrs
from opsgate.sandbox import KServeController, SandboxCluster
from opsgate.tools.context import CallContext
from opsgate.tools.errors import ToolError
from opsgate.tools.inference import InferArgs, ModelStore
from opsgate.tools.kserve import (
    PREVIOUS_SPEC_ANNOTATION,
    DeployModelArgs,
    KServeInferArgs,
    ModelStatusArgs,
    current_replicas,
    deploy_model,
    kserve_infer,
    model_status,
    rollback_inference_service,
    scale_inference_service,
)
from opsgate.tools.kube import Kube
from opsgate.tools.listing import ListWorkloadsArgs, list_workloads
from opsgate.tools.oip import OipTensorIn
from opsgate.tools.tensors import MODELS_DIR_DEFAULT, ModelInputError
from opsgate.tools.workload_types import RollbackArgs, ScaleArgs
from opsgate.tools.workloads import DeployArgs, deploy

IRIS = f"file://{MODELS_DIR_DEFAULT}/iris.onnx"
IRIS_V2 = f"file://{MODELS_DIR_DEFAULT}/iris-v2.onnx"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def kube(cluster: SandboxCluster) -> Iterator[Kube]:
    k = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)
    yield k
    k.close()


@pytest.fixture
def ns(kube: Kube, cluster: SandboxCluster) -> Iterator[str]:
    name = f"m{next(_ids)}"
    kube.call(kube.core.create_namespace, {"metadata": {"name": name}}, what="create namespace")
    yield name
    hooks(cluster).clear_faults()


def hooks(cluster: SandboxCluster) -> KServeController:
    assert cluster.kserve is not None
    return cluster.kserve


def ctx(principal: str = "alice") -> CallContext:
    return CallContext(call_id=f"call-{next(_ids):04d}", principal=principal)


def raw(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    from kubernetes.client import CustomObjectsApi

    result: dict[str, Any] = kube.call(CustomObjectsApi(kube.connect()).get_namespaced_custom_object,
                                       "serving.kserve.io", "v1beta1", ns, "inferenceservices", name, what="read")
    return result


def local(model: str, rows: list[list[float]] = ROWS) -> Any:
    return ModelStore(MODELS_DIR_DEFAULT).infer(InferArgs(model=model, inputs={"features": rows}))


def infer(kube: Kube, ns: str, name: str = "iris", inputs: Any = None, **kw: Any) -> Any:
    given = {"features": ROWS} if inputs is None else inputs
    return kserve_infer(kube, KServeInferArgs(name=name, namespace=ns, inputs=given, **kw), ctx())


def settle(kube: Kube, ns: str, name: str, timeout: float = 5.0) -> Any:
    """model_status once the latest spec is served (or failed)."""
    deadline = time.monotonic() + timeout
    while True:
        s = model_status(kube, ModelStatusArgs(name=name, namespace=ns), ctx())
        if s.done or (s.model and s.model.transition_status in ("BlockedByFailedLoad", "InvalidSpec")):
            return s
        assert time.monotonic() < deadline, s.summary
        time.sleep(0.02)


def test_deploy_wait_and_infer_match_local_inference(kube: Kube, cluster: SandboxCluster, ns: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    c = ctx()
    created = deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS, wait=True), c,
                           lambda v, t, m: progress.append((v, t, m)))
    assert created.action == "created" and created.mode == "Serverless" and created.status is not None
    assert created.status.ready and created.status.done
    assert created.status.traffic[0].revision == "iris-predictor-00001" and created.status.traffic[0].percent == 100
    assert progress[-1][0] == progress[-1][1] == 3.0 and "Ready" in str(progress[-1][2])
    assert {c.path for c in created.changes} == {"storage_uri", "model_format", "protocol_version"}
    obj = raw(kube, ns, "iris")
    assert obj["metadata"]["annotations"]["kubernetes.io/change-cause"] == f"opsgate: alice call {c.call_id}"
    assert obj["spec"]["predictor"]["model"] == {"modelFormat": {"name": "onnx"}, "storageUri": IRIS,
                                                 "protocolVersion": "v2"}

    result = infer(kube, ns)
    assert result.outputs == local("iris").outputs, "the same numbers as a local run of the same model"
    assert result.model == "iris" and result.protocol == "v2" and result.model_version == "1"
    assert result.served_by == "iris-predictor-00001" and result.url == created.status.url
    assert result.audit_summary()["outputs"] == [{"name": "probabilities", "shape": [2, 3]},
                                                 {"name": "label", "shape": [2]}]
    oip_form = [OipTensorIn(name="features", datatype="FP32", shape=[2, 4], data=[v for r in ROWS for v in r])]
    assert infer(kube, ns, inputs=oip_form).outputs == result.outputs, "flat protocol form, same answer"

    again = deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS), ctx())
    assert again.action == "unchanged" and again.changes == []


def test_canary_promote_and_serverless_rollback(kube: Kube, cluster: SandboxCluster, ns: str) -> None:
    deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS, wait=True), ctx())
    canary = deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS_V2,
                                                canary_traffic_percent=20, wait=True), ctx())
    assert canary.action == "updated" and canary.canary_traffic_percent == 20
    assert any("20%" in n and "iris-predictor-00001" in n for n in canary.notes)
    assert [(c.path, c.before, c.after) for c in canary.changes] == [
        ("canary_traffic_percent", None, 20), ("storage_uri", IRIS, IRIS_V2)]
    s = model_status(kube, ModelStatusArgs(name="iris", namespace=ns), ctx())
    assert [(t.revision, t.percent, t.tag) for t in s.traffic] == [
        ("iris-predictor-00002", 20, "latest"), ("iris-predictor-00001", 80, "prev")]
    assert s.latest_rolled_out_revision == "iris-predictor-00001" and s.latest_ready_revision == "iris-predictor-00002"
    assert "20% iris-predictor-00002 (latest, canary), 80% iris-predictor-00001 (prev)" in s.summary
    served = Counter(infer(kube, ns).served_by for _ in range(10))
    assert served == {"iris-predictor-00001": 8, "iris-predictor-00002": 2}, "status and serving agree"
    tagged = infer(kube, ns)
    assert tagged.outputs in (local("iris").outputs, local("iris-v2").outputs)

    back = rollback_inference_service(kube, RollbackArgs(name="iris", namespace=ns, kind="InferenceService"), ctx())
    assert back.action == "rolled-back" and back.strategy == "canary-traffic-to-0"
    assert back.from_revision == 2 and back.to_revision == 1
    assert "canaryTrafficPercent to 0" in back.message and "iris-predictor-00001" in back.message
    s = settle(kube, ns, "iris")
    assert [(t.revision, t.percent) for t in s.traffic] == [("iris-predictor-00002", 0), ("iris-predictor-00001", 100)]
    assert {infer(kube, ns).served_by for _ in range(5)} == {"iris-predictor-00001"}
    same = rollback_inference_service(kube, RollbackArgs(name="iris", namespace=ns, kind="InferenceService"), ctx())
    assert same.action == "unchanged" and "already 0" in same.message

    promoted = deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, promote=True, wait=True), ctx())
    assert promoted.canary_traffic_percent is None and promoted.status is not None
    assert promoted.status.latest_rolled_out_revision == "iris-predictor-00002"
    assert promoted.status.previous_rolled_out_revision == "iris-predictor-00001"
    assert [(t.revision, t.percent) for t in promoted.status.traffic] == [("iris-predictor-00002", 100)]
    assert infer(kube, ns).outputs == local("iris-v2").outputs

    undo = rollback_inference_service(kube, RollbackArgs(name="iris", namespace=ns, kind="InferenceService"), ctx())
    assert undo.strategy == "restored-previous-spec" and "no canary is taking traffic" in undo.message
    assert f"storageUri {IRIS_V2} -> {IRIS}" in undo.message
    s = settle(kube, ns, "iris")
    assert s.latest_rolled_out_revision == "iris-predictor-00003" and s.storage_uri == IRIS
    assert infer(kube, ns).outputs == local("iris").outputs


def test_raw_mode_has_no_canary_and_rolls_back_the_recorded_spec(kube: Kube, ns: str) -> None:
    args: dict[str, Any] = {"name": "raw", "namespace": ns, "deployment_mode": "RawDeployment"}
    created = deploy_model(kube, DeployModelArgs(**args, storage_uri=IRIS, wait=True), ctx())
    assert created.mode == "RawDeployment" and created.status is not None and created.status.traffic == []
    with pytest.raises(ToolError) as refused:
        deploy_model(kube, DeployModelArgs(name="raw", namespace=ns, storage_uri=IRIS_V2, canary_traffic_percent=20),
                     ctx())
    assert refused.value.rule == "canary-unsupported" and "RawDeployment" in refused.value.message
    with pytest.raises(ToolError) as mode:
        deploy_model(kube, DeployModelArgs(name="raw", namespace=ns, deployment_mode="Serverless"), ctx())
    assert mode.value.field == "deployment_mode" and mode.value.rule == "immutable-deployment-mode"

    deploy_model(kube, DeployModelArgs(name="raw", namespace=ns, storage_uri=IRIS_V2, wait=True), ctx())
    assert infer(kube, ns, "raw").outputs == local("iris-v2").outputs
    recorded = json.loads(raw(kube, ns, "raw")["metadata"]["annotations"][PREVIOUS_SPEC_ANNOTATION])
    assert recorded["predictor"]["model"]["storageUri"] == IRIS

    preview = rollback_inference_service(
        kube, RollbackArgs(name="raw", namespace=ns, kind="InferenceService", dry_run=True), ctx())
    assert preview.action == "dry-run" and raw(kube, ns, "raw")["spec"]["predictor"]["model"]["storageUri"] == IRIS_V2
    back = rollback_inference_service(kube, RollbackArgs(name="raw", namespace=ns, kind="InferenceService"), ctx())
    assert back.action == "rolled-back" and back.strategy == "restored-previous-spec"
    assert back.message.startswith("RawDeployment mode has no canary: restored the previous spec")
    assert [(c.path, c.before, c.after) for c in back.changes] == [("storage_uri", IRIS_V2, IRIS)]
    settle(kube, ns, "raw")
    assert infer(kube, ns, "raw").outputs == local("iris").outputs
    forward = rollback_inference_service(kube, RollbackArgs(name="raw", namespace=ns, kind="InferenceService"), ctx())
    assert forward.action == "rolled-back", "the spec replaced is recorded in turn, so a second rollback undoes it"
    assert raw(kube, ns, "raw")["spec"]["predictor"]["model"]["storageUri"] == IRIS_V2

    with pytest.raises(ToolError) as no_revision:
        rollback_inference_service(
            kube, RollbackArgs(name="raw", namespace=ns, kind="InferenceService", to_revision=1), ctx())
    assert no_revision.value.field == "to_revision"


def test_dry_run_scale_and_list(kube: Kube, ns: str) -> None:
    preview = deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS, dry_run=True,
                                                 min_replicas=1, max_replicas=2), ctx())
    assert preview.action == "dry-run" and not preview.existed
    assert ("max_replicas", None, 2) in [(c.path, c.before, c.after) for c in preview.changes]
    assert list_workloads(kube, ListWorkloadsArgs(namespace=ns), ctx()).workloads == [], "a dry run stores nothing"

    assert current_replicas(kube, ns, "iris") == BoundAttrs(current_replicas=0), "not created yet"
    deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS, max_replicas=2, wait=True), ctx())
    assert current_replicas(kube, ns, "iris") == BoundAttrs(current_replicas=2), "for the max_replicas_change bound"
    before = raw(kube, ns, "iris")
    dry = scale_inference_service(
        kube, ScaleArgs(name="iris", namespace=ns, kind="InferenceService", max_replicas=5, dry_run=True),
        ctx())
    assert dry.action == "dry-run" and dry.max_replicas_after == 5 and raw(kube, ns, "iris") == before
    scaled = scale_inference_service(kube, ScaleArgs(name="iris", namespace=ns, kind="InferenceService", min_replicas=2,
                                                     max_replicas=5), ctx())
    assert (scaled.action, scaled.kind, scaled.replicas_before) == ("scaled", "InferenceService", None)
    assert (scaled.min_replicas_before, scaled.min_replicas_after) == (None, 2)
    assert (scaled.max_replicas_before, scaled.max_replicas_after) == (2, 5)
    assert scaled.message and "new revision" in scaled.message
    assert scaled.audit_summary()["max_replicas"] == {"before": 2, "after": 5}
    same = scale_inference_service(
        kube, ScaleArgs(name="iris", namespace=ns, kind="InferenceService", max_replicas=5), ctx())
    assert same.action == "unchanged"
    autoscale = scale_inference_service(
        kube, ScaleArgs(name="iris", namespace=ns, kind="InferenceService", scale_target=40,
                        scale_metric="concurrency"), ctx())
    assert (autoscale.scale_target_after, autoscale.scale_metric_after) == (40, "concurrency")
    predictor = raw(kube, ns, "iris")["spec"]["predictor"]
    assert (predictor["scaleTarget"], predictor["scaleMetric"], predictor["maxReplicas"]) == (40, "concurrency", 5)
    with pytest.raises(ToolError) as inverted:
        scale_inference_service(
            kube, ScaleArgs(name="iris", namespace=ns, kind="InferenceService", min_replicas=9), ctx())
    assert inverted.value.rule == "replica-range"

    deploy(kube, DeployArgs(name="iris", namespace=ns, image="registry.example.com/web:1"), ctx())
    rows = list_workloads(kube, ListWorkloadsArgs(namespace=ns), ctx()).workloads
    assert [(r.name, r.kind) for r in rows] == [("iris", "Deployment"), ("iris", "InferenceService")]
    served = rows[1]
    assert served.images == [IRIS] and served.desired == 2 and served.revision in (1, 2)
    only = list_workloads(kube, ListWorkloadsArgs(namespace=ns, kind="InferenceService"), ctx()).workloads
    assert [r.kind for r in only] == ["InferenceService"]


def test_bad_inputs_are_refused_before_any_request(kube: Kube, cluster: SandboxCluster, ns: str) -> None:
    deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS, wait=True), ctx())
    cases: list[tuple[Any, str, str, str]] = [
        ({"features": [[5.1, 3.5, 1.4]]}, "inputs.features", "shape", "expected shape [?, 4], got [1, 3]"),
        ({"features": [["a", "b", "c", "d"]]}, "inputs.features", "dtype", "expected float32 numbers"),
        ({"features": ROWS, "extra": [1]}, "inputs.extra", "unknown-input", "its inputs are: features"),
        ({}, "inputs.features", "missing-input", "missing"),
        ([OipTensorIn(name="features", datatype="FP64", shape=[1, 4], data=ROWS[0])], "inputs.features",
         "datatype", "datatype FP64 does not match the model's FP32"),
        ([OipTensorIn(name="features", datatype="FP32", shape=[1, 4], data=[1.0, 2.0])], "inputs.features",
         "shape", "needs 4 values, got 2"),
    ]
    for inputs, field, rule, text in cases:
        with pytest.raises(ModelInputError) as refused:
            infer(kube, ns, inputs=inputs)
        assert (refused.value.field, refused.value.rule) == (field, rule), inputs
        assert text in refused.value.message and refused.value.code == "invalid_arguments"
    assert hooks(cluster).infer_requests("iris", ns) == [], "the model server saw no infer request"


def test_not_ready_500_timeout_and_unreachable_are_clear(kube: Kube, cluster: SandboxCluster, ns: str) -> None:
    with pytest.raises(ToolError) as failed:
        deploy_model(kube, DeployModelArgs(name="gone", namespace=ns, storage_uri="file:///nowhere/gone.onnx",
                                           wait=True, timeout_seconds=5), ctx())
    assert failed.value.code == "rollout_failed" and "BlockedByFailedLoad" in failed.value.message
    s = model_status(kube, ModelStatusArgs(name="gone", namespace=ns), ctx())
    assert not s.ready and s.url is None and s.conditions[0].type == "PredictorConfigurationReady"
    assert s.conditions[0].reason == "RevisionFailed" and s.model is not None
    assert s.model.failure_reason == "ModelLoadFailed"
    with pytest.raises(ToolError) as not_ready:
        infer(kube, ns, "gone")
    assert not_ready.value.rule == "not-ready" and "RevisionFailed" in not_ready.value.message
    assert "ModelLoadFailed" in not_ready.value.message

    deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS, wait=True), ctx())
    hooks(cluster).inject_fault("iris", ns, status=500)
    with pytest.raises(ToolError) as broken:
        infer(kube, ns)
    assert (broken.value.code, broken.value.rule) == ("model_error", "server-error")
    assert 'answered HTTP 500, saying: "injected fault: the model server failed' in broken.value.message

    hooks(cluster).inject_fault("iris", ns, delay=1.0)
    started = time.monotonic()
    with pytest.raises(ToolError) as slow:
        infer(kube, ns, timeout_seconds=0.3)
    assert (slow.value.code, slow.value.rule) == ("timeout", "read-timeout")
    assert "did not answer within 0.3 s" in slow.value.message and time.monotonic() - started < 1.0

    hooks(cluster).inject_fault("iris", ns, drop=True)
    with pytest.raises(ToolError) as dropped:
        infer(kube, ns)
    assert (dropped.value.code, dropped.value.rule) == ("model_unreachable", "connection-dropped")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ToolError) as refused:
        infer(kube, ns, url=f"http://127.0.0.1:{port}")
    assert (refused.value.code, refused.value.rule) == ("model_unreachable", "connect-failed")
    with pytest.raises(ToolError) as missing:
        infer(kube, ns, "nothing-here")
    assert missing.value.code == "api_error" and "not found" in missing.value.message
    assert infer(kube, ns).outputs == local("iris").outputs, "after the faults, calls work again"


def test_v1_protocol(kube: Kube, ns: str) -> None:
    deploy_model(kube, DeployModelArgs(name="v1", namespace=ns, storage_uri="iris", protocol_version="v1",
                                       wait=True), ctx())
    result = infer(kube, ns, "v1", inputs={"instances": ROWS})
    assert result.protocol == "v1" and result.outputs[0].name == "predictions"
    expected = local("iris")
    assert [p["label"] for p in result.outputs[0].data] == expected.outputs[1].data
    with pytest.raises(ToolError) as wrong:
        infer(kube, ns, "v1")
    assert wrong.value.rule == "v1-instances"


def test_argument_rules() -> None:
    with pytest.raises(ValueError, match="promote removes"):
        DeployModelArgs(name="iris", namespace="default", promote=True, canary_traffic_percent=10)
    with pytest.raises(ValueError, match="must not exceed"):
        DeployModelArgs(name="iris", namespace="default", min_replicas=3, max_replicas=2)
    for name in ("Iris", "1iris", "x" * 48):
        with pytest.raises(ValueError):
            DeployModelArgs(name=name, namespace="default", storage_uri=IRIS)
    with pytest.raises(ValueError):
        DeployModelArgs(name="iris", namespace="default", storage_uri="has space")
    with pytest.raises(ValueError):
        ScaleArgs(name="iris", namespace="default", kind="InferenceService", replicas=2)
    with pytest.raises(ValueError):
        ScaleArgs(name="iris", namespace="default", kind="InferenceService")
    with pytest.raises(ValueError):
        ScaleArgs(name="web", namespace="default", min_replicas=1)
    assert ScaleArgs(name="iris", namespace="default", kind="InferenceService", min_replicas=1,
                     max_replicas=4).bound_replicas() == 4
    args = KServeInferArgs(name="iris", namespace="default", inputs={"features": ROWS}, url="http://localhost:8080")
    assert args.bound_attrs() == BoundAttrs(model="iris", input_elements=8, url_override=True)
    assert DeployModelArgs(name="iris", namespace="default", max_replicas=3).bound_attrs().replicas == 3
    with pytest.raises(ValueError):
        KServeInferArgs(name="iris", namespace="default", inputs={}, url="file:///etc/passwd")
    with pytest.raises(ValueError):
        KServeInferArgs(name="iris", namespace="default", inputs={}, timeout_seconds=31)
