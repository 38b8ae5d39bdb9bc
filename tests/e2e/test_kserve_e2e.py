"""The InferenceService scenario against a REAL cluster with KServe installed.

Runs only when OPSGATE_E2E_KUBECONFIG names a kubeconfig. Optional:
OPSGATE_E2E_NAMESPACE (default ``opsgate-e2e``, created if missing);
OPSGATE_E2E_MODEL_URI, an ONNX model KServe can fetch (default KServe's own
example, ``gs://kfserving-examples/models/onnx``); OPSGATE_E2E_MODEL_INPUTS, a
JSON object of inputs for it (without it, only the metadata check is exercised);
OPSGATE_E2E_KSERVE_URL, a base URL to call instead of ``status.url`` (e.g. a
port-forward to the ingress gateway, when the service's host does not resolve
from here). Creates and deletes one InferenceService, ``opsgate-e2e-model``; the
canary step needs Serverless mode.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.harness import err, serve

KUBECONFIG = os.environ.get("OPSGATE_E2E_KUBECONFIG")
NAMESPACE = os.environ.get("OPSGATE_E2E_NAMESPACE", "opsgate-e2e")
MODEL_URI = os.environ.get("OPSGATE_E2E_MODEL_URI", "gs://kfserving-examples/models/onnx")
MODEL_INPUTS = os.environ.get("OPSGATE_E2E_MODEL_INPUTS")
KSERVE_URL = os.environ.get("OPSGATE_E2E_KSERVE_URL")
NAME = "opsgate-e2e-model"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not KUBECONFIG, reason="set OPSGATE_E2E_KUBECONFIG to run against a real cluster"),
]


def _custom() -> Any:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api_client = config.new_client_from_config(config_file=KUBECONFIG)
    try:
        client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    return client.CustomObjectsApi(api_client)


def ok(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text
    return result.structured_content  # type: ignore[no-any-return]


async def test_inference_service_round_trip_on_a_real_cluster(tmp_path: Path) -> None:
    custom = _custom()
    policy = tmp_path / "policy.csv"
    policy.write_text(
        "g, role:everyone, role:viewer, *\np, role:viewer, *, *, read, allow\n"
        f"p, e2e, {NAMESPACE}, *, write, allow\n"
    )
    base = {"name": NAME, "namespace": NAMESPACE}
    call_url = {"url": KSERVE_URL} if KSERVE_URL else {}
    try:
        async with serve(tmp_path, "--principal", "e2e", "--kubeconfig", str(KUBECONFIG),
                         "--policy", str(policy)) as s:
            created = ok(await s.call("deploy_model", {**base, "storage_uri": MODEL_URI, "wait": True,
                                                       "timeout_seconds": 600}))
            assert created["status"]["ready"], created["status"]["summary"]
            status = ok(await s.call("model_status", base))
            assert status["url"] and status["latest_ready_revision"]

            probe = await s.call("kserve_infer", {**base, **call_url, "inputs": {"opsgate-no-such-input": [0]}})
            assert probe.is_error, "the metadata check refuses an input the model does not have"
            error = err(probe)
            assert error["code"] == "invalid_arguments" and "its inputs are" in error["message"]
            if MODEL_INPUTS:
                answer = ok(await s.call("kserve_infer", {**base, **call_url, "inputs": json.loads(MODEL_INPUTS)}))
                assert answer["outputs"]

            if status["mode"] != "RawDeployment":
                canary = ok(await s.call("deploy_model", {**base, "min_replicas": 1, "canary_traffic_percent": 20,
                                                          "wait": True, "timeout_seconds": 600}))
                percents = sorted(t["percent"] for t in canary["status"]["traffic"])
                assert percents == [20, 80], canary["status"]["traffic"]
                back = ok(await s.call("rollback", {**base, "kind": "InferenceService"}))
                assert back["strategy"] == "canary-traffic-to-0"
    finally:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            custom.delete_namespaced_custom_object("serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices",
                                                   NAME)
