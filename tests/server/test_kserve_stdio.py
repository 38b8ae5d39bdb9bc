"""InferenceServices through the stdio MCP client, against the sandbox cluster over HTTP.

The sandbox (with its KServe controller and model servers) runs in this test
process; ``opsgate serve`` is a subprocess that reaches it through a kubeconfig,
as it would a real cluster, and calls the model servers at the URLs their status
names. Tool names are deploy_model, model_status, kserve_infer, plus scale,
rollback and list_workloads with ``kind: InferenceService``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from opsgate.audit import verify_log
from opsgate.sandbox import KServeController, SandboxCluster
from opsgate.tools.tensors import MODELS_DIR_DEFAULT
from tests.harness import Served, err, ok, serve_on

pytestmark = pytest.mark.anyio

NS = "team-ml"
IRIS = f"file://{MODELS_DIR_DEFAULT}/iris.onnx"
IRIS_V2 = f"file://{MODELS_DIR_DEFAULT}/iris-v2.onnx"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
SERVICE = {"name": "iris", "namespace": NS}


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        from kubernetes import client, config

        new_client: Any = config.new_client_from_config_dict
        api = new_client(sandbox.kubeconfig())
        core: Any = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        api.close()
        yield sandbox


def hooks(cluster: SandboxCluster) -> KServeController:
    assert cluster.kserve is not None
    return cluster.kserve


async def traffic_settles(s: Served, want: list[tuple[str, int]], seconds: float = 10.0) -> dict[str, Any]:
    """model_status until its traffic split is ``want`` (fails with the last split seen after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        status: dict[str, Any] = ok(await s.call("model_status", SERVICE))
        seen = [(t["revision"], t["percent"]) for t in status["traffic"]]
        if seen == want:
            return status
        assert time.monotonic() < deadline, f"traffic {seen} after {seconds} s, expected {want}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def opsgate(tmp_path: Path, cluster: SandboxCluster, principal: str) -> AsyncIterator[Served]:
    """The shipped policy, plus alice as operator in team-* only."""
    async with serve_on(cluster, tmp_path, principal, "g, alice, role:operator, team-*") as served:
        yield served


async def test_deploy_call_canary_and_roll_back(tmp_path: Path, cluster: SandboxCluster) -> None:
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async with opsgate(tmp_path, cluster, "alice") as s:
        arguments: dict[str, Any] = {**SERVICE, "storage_uri": IRIS, "max_replicas": 3, "wait": True}
        created = ok(await s.session.call_tool("deploy_model", arguments, progress_callback=on_progress))
        assert created["action"] == "created" and created["status"]["ready"] is True
        assert reported and reported[-1] == 3.0, "wait sends MCP progress notifications"

        remote = ok(await s.call("kserve_infer", {**SERVICE, "inputs": {"features": ROWS}}))
        local = ok(await s.call("infer", {"model": "iris", "inputs": {"features": ROWS}}))
        assert remote["outputs"] == local["outputs"], "the same numbers as a local infer of the same model"
        assert remote["served_by"] == "iris-predictor-00001"

        canary = ok(await s.call("deploy_model", {**SERVICE, "storage_uri": IRIS_V2, "canary_traffic_percent": 20,
                                                  "wait": True}))
        assert canary["canary_traffic_percent"] == 20 and canary["notes"]
        status = ok(await s.call("model_status", SERVICE))
        assert [(t["revision"], t["percent"]) for t in status["traffic"]] == [
            ("iris-predictor-00002", 20), ("iris-predictor-00001", 80)]
        served = Counter([ok(await s.call("kserve_infer", {**SERVICE, "inputs": {"features": ROWS}}))["served_by"]
                          for _ in range(5)])
        assert served == {"iris-predictor-00001": 4, "iris-predictor-00002": 1}

        back = ok(await s.call("rollback", {**SERVICE, "kind": "InferenceService"}))
        assert back["strategy"] == "canary-traffic-to-0" and "iris-predictor-00001" in back["message"]
        # The rollback's spec is read back at once (read-your-write); the traffic split is status, which the
        # KServe controller writes after it, as on a real cluster: polled, as an agent would.
        first = ok(await s.call("model_status", SERVICE))
        assert first["canary_traffic_percent"] == 0, "the rollback's own write, read back at once"
        await traffic_settles(s, [("iris-predictor-00002", 0), ("iris-predictor-00001", 100)])

        raw = {"name": "raw", "namespace": NS}
        ok(await s.call("deploy_model", {**raw, "storage_uri": IRIS, "deployment_mode": "RawDeployment",
                                         "wait": True}))
        refused = err(await s.call("deploy_model", {**raw, "storage_uri": IRIS_V2, "canary_traffic_percent": 20}))
        assert refused["errors"][0]["rule"] == "canary-unsupported"
        ok(await s.call("deploy_model", {**raw, "storage_uri": IRIS_V2, "wait": True}))
        restored = ok(await s.call("rollback", {**raw, "kind": "InferenceService"}))
        assert restored["strategy"] == "restored-previous-spec"
        assert restored["message"].startswith("RawDeployment mode has no canary")

        too_many = err(await s.call("scale", {**SERVICE, "kind": "InferenceService", "max_replicas": 11}))
        assert too_many["code"] == "denied" and "max_replicas 10" in too_many["message"]
        scaled = ok(await s.call("scale", {**SERVICE, "kind": "InferenceService", "max_replicas": 5}))
        assert scaled["max_replicas_before"] == 3 and scaled["max_replicas_after"] == 5
        listed = ok(await s.call("list_workloads", {"namespace": NS, "kind": "InferenceService"}))
        assert [w["name"] for w in listed["workloads"]] == ["iris", "raw"]

    decisions = [r for r in s.records() if r["stage"] == "decision"]
    outcomes = {r["call_id"]: r for r in s.records() if r["stage"] == "outcome"}
    # 17 calls besides model_status, which ran once after the canary, once after the rollback, then until the
    # traffic settled (at least once more).
    assert len([d for d in decisions if d["tool"] != "model_status"]) == 17
    assert len([d for d in decisions if d["tool"] == "model_status"]) >= 3
    for decision in decisions:
        if decision["decision"]["effect"] == "allow":
            assert decision["call_id"] in outcomes, f"every allowed call has its outcome: {decision['tool']}"
    infers = [r for r in outcomes.values() if r["tool"] == "kserve_infer"]
    assert infers and all(r["outcome"]["result"]["url"].startswith("http://127.0.0.1:") for r in infers)
    rollbacks = [r["outcome"]["result"]["strategy"] for r in outcomes.values() if r["tool"] == "rollback"]
    assert rollbacks == ["canary-traffic-to-0", "restored-previous-spec"]
    assert verify_log(s.audit_log).ok


async def test_refusals_and_failures_are_clear_and_audited(tmp_path: Path, cluster: SandboxCluster) -> None:
    async with opsgate(tmp_path, cluster, "alice") as s:
        ok(await s.call("deploy_model", {**SERVICE, "storage_uri": IRIS, "wait": True}))
        bad = [
            ({"features": [[5.1, 3.5, 1.4]]}, "inputs.features", "shape"),
            ([{"name": "features", "datatype": "INT64", "shape": [1, 4], "data": [5, 3, 1, 0]}],
             "inputs.features", "datatype"),
            ({"petals": ROWS}, "inputs.petals", "unknown-input"),
        ]
        for inputs, field, rule in bad:
            error = err(await s.call("kserve_infer", {**SERVICE, "inputs": inputs}))
            first = error["errors"][0]
            assert (error["code"], first["field"], first["rule"]) == ("invalid_arguments", field, rule)
        assert hooks(cluster).infer_requests("iris", NS) == [], "refused before any request"

        failed = err(await s.call("deploy_model", {"name": "gone", "namespace": NS,
                                                   "storage_uri": f"file://{MODELS_DIR_DEFAULT}/gone.onnx",
                                                   "wait": True}))
        assert failed["code"] == "rollout_failed" and "ModelLoadFailed" in failed["message"]
        not_ready = err(await s.call("kserve_infer", {"name": "gone", "namespace": NS, "inputs": {"features": ROWS}}))
        assert not_ready["errors"][0]["rule"] == "not-ready" and "RevisionFailed" in not_ready["message"]

        hooks(cluster).inject_fault("iris", NS, status=500)
        broken = err(await s.call("kserve_infer", {**SERVICE, "inputs": {"features": ROWS}}))
        assert broken["code"] == "model_error" and "answered HTTP 500" in broken["message"]
        hooks(cluster).inject_fault("iris", NS, delay=1.0)
        slow = err(await s.call("kserve_infer", {**SERVICE, "inputs": {"features": ROWS}, "timeout_seconds": 0.3}))
        assert slow["code"] == "timeout" and slow["errors"][0]["rule"] == "read-timeout"

    async with opsgate(tmp_path / "bob", cluster, "bob") as viewer:
        assert ok(await viewer.call("model_status", SERVICE))["ready"] is True
        assert ok(await viewer.call("kserve_infer", {**SERVICE, "inputs": {"features": ROWS}}))["outputs"]
        denied = err(await viewer.call("deploy_model", {**SERVICE, "storage_uri": IRIS_V2}))
        assert denied["code"] == "denied"
    outcomes = [r["outcome"] for r in s.records() if r["stage"] == "outcome"]
    errors = [o["error"]["code"] for o in outcomes if o["status"] == "error"]
    assert errors == ["invalid_arguments"] * 3 + ["rollout_failed", "failed_precondition", "model_error", "timeout"]
    assert verify_log(s.audit_log).ok and verify_log(viewer.audit_log).ok
