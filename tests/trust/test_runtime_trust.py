"""Issue 15, untrusted text and resources at run time (items 11, 17, 18, 20, 21), through the real stdio server.

Each test starts ``opsgate serve`` as a subprocess (tests/harness.py) on a sandbox
cluster or a models folder the test builds, and drives it with the MCP SDK's client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from opsgate.server.sandbox import SandboxCluster
from tests.harness import Served, err, ok, serve, shipped_policy

pytestmark = pytest.mark.anyio

ADMIN = "runtime-admin"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.02) as sandbox:
        yield sandbox


@asynccontextmanager
async def serve_cluster(cluster: SandboxCluster, tmp_path: Path, *flags: str,
                        policy_lines: tuple[str, ...] = (f"g, {ADMIN}, role:admin, *",),
                        bounds: str | None = None, principal: str = ADMIN) -> AsyncIterator[Served]:
    """A server for ``principal`` on the sandbox, reached through a kubeconfig, with the shipped policy."""
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", *policy_lines)
    if bounds is not None:
        (policy / "bounds.toml").write_text(bounds)
    async with serve(tmp_path, "--principal", principal, "--kubeconfig", str(kubeconfig), "--policy", str(policy),
                     *flags) as served:
        yield served


# --------------------------------------------------------------------------- item 21


async def test_a_slow_cluster_does_not_stall_whoami(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 21: with 60 reads waiting on a slow API, whoami (and its audit appends) still answer at once.

    Cluster calls run on their own thread limiter; audit appends and fast tools keep anyio's
    default one. Before, the 60 reads held all 40 default threads and whoami waited for them.
    """
    namespace = "default"
    delay = 4.0
    async with serve_cluster(cluster, tmp_path, "--kube-timeout-seconds", "30") as s:
        ok(await s.call("whoami"))  # warm: the first call pays for imports
        cluster.inject_fault("GET", r"/deployments/", delay=delay, times=0)
        try:
            async with anyio.create_task_group() as tasks:
                for i in range(60):
                    tasks.start_soon(s.call, "rollout_status", {"name": f"web-{i}", "namespace": namespace})
                await anyio.sleep(1.0)  # every read is in flight, waiting on the cluster
                started = time.monotonic()
                ok(await s.call("whoami"))
                took = time.monotonic() - started
        finally:
            cluster.clear_faults()
    print(f"\nwhoami with 60 slow cluster reads in flight: {took * 1000:.0f} ms")
    assert took < 3.0, f"whoami waited {took:.1f} s behind slow cluster reads"
    outcomes = [r for r in s.records() if r.get("stage") == "outcome"]
    assert sum(1 for r in outcomes if r.get("tool") == "rollout_status") == 60, "every read has its outcome"



# --------------------------------------------------------------------------- item 11

OPERATOR = "runtime-op"
STEP_BOUND = """
[subject."role:operator"]
max_replicas = 10
allow_scale_to_zero = true
max_replicas_change = 2
"""


def _apps(cluster: SandboxCluster) -> Any:
    from kubernetes import client, config

    new_client: Any = config.new_client_from_config_dict
    return client.AppsV1Api(new_client(cluster.kubeconfig()))


def _core(cluster: SandboxCluster) -> Any:
    from kubernetes import client, config

    new_client: Any = config.new_client_from_config_dict
    return client.CoreV1Api(new_client(cluster.kubeconfig()))


async def _changed_while_read(cluster: SandboxCluster, tmp_path: Path, tool: str, fault_path: str,
                              reads_before_tools: int) -> None:
    """Scale web from 5 to 7 (a step of 2, inside the bound) while someone else sets it to 1 after the gate's read.

    The tool's own read is held by a sandbox delay; the test sees it arrive (the fault's hit count),
    then scales the Deployment to 1 itself. The write must not go ahead on the gate's stale 5.
    """
    namespace = f"step-{tool}"
    _core(cluster).create_namespace({"metadata": {"name": namespace}})
    apps = _apps(cluster)
    async with serve_cluster(cluster, tmp_path, policy_lines=(f"g, {OPERATOR}, role:operator, *",),
                             bounds=STEP_BOUND, principal=OPERATOR) as s:
        labels = {"app.kubernetes.io/name": "web"}
        apps.create_namespaced_deployment(namespace, {  # set up by someone with wider bounds
            "metadata": {"name": "web", "labels": labels},
            "spec": {"replicas": 5, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}}})
        fault = cluster.inject_fault("GET", fault_path, delay=1.5, times=reads_before_tools + 1)
        arguments = {"name": "web", "namespace": namespace, "replicas": 7}
        if tool == "deploy":
            arguments["image"] = "nginx:1"
        answer: list[Any] = []

        async def call() -> None:
            answer.append(await s.call(tool, arguments))

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call)
                while fault.hits <= reads_before_tools:  # the gate has read 5; the tool's read is now held
                    await anyio.sleep(0.01)
                apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 1}})
        finally:
            cluster.clear_faults()
        error = err(answer[0])
        assert (error["code"], error["errors"][0]["rule"]) == ("denied", "bound"), error
        assert "from 1 to 7" in error["message"] and "max_replicas_change 2" in error["message"], error
        assert apps.read_namespaced_deployment_scale("web", namespace).spec.replicas == 1
        decisions = [r for r in s.records() if r.get("stage") == "decision" and r.get("call_id") == error["call_id"]]
        assert decisions and decisions[0]["decision"]["effect"] == "allow"  # the gate's read said 5: a step of 2
        outcomes = [r for r in s.records() if r.get("stage") == "outcome" and r.get("call_id") == error["call_id"]]
        assert outcomes[0]["outcome"]["error"]["code"] == "denied", outcomes


async def test_scale_checks_the_step_bound_on_the_read_its_write_is_guarded_by(
    cluster: SandboxCluster, tmp_path: Path
) -> None:
    """Issue 15 item 11: max_replicas_change is checked on the replica count the write is guarded by.

    The gate and the tool both read /scale: the first held read is the gate's, the second the tool's.
    """
    await _changed_while_read(cluster, tmp_path, "scale", r"/deployments/web/scale$", reads_before_tools=1)


async def test_deploy_checks_the_step_bound_on_the_read_its_write_is_guarded_by(
    cluster: SandboxCluster, tmp_path: Path
) -> None:
    """Issue 15 item 11, for deploy: the gate reads /scale, the tool the Deployment (held here)."""
    await _changed_while_read(cluster, tmp_path, "deploy", r"/deployments/web$", reads_before_tools=0)
