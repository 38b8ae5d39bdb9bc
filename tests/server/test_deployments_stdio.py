"""Deploy, scale and roll back through the stdio MCP client, against the sandbox cluster over HTTP.

The sandbox runs in this test process; the server is a subprocess that reaches it
with the real kubernetes client through a kubeconfig, as it would a real cluster.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from opsgate.audit import verify_log
from opsgate.sandbox import SandboxCluster
from opsgate.tools.kube import CONFLICT_ATTEMPTS
from tests.harness import Served, err, ok, serve, serve_on

pytestmark = pytest.mark.anyio

NS = "team-a"
V1, V2 = "registry.example.com/web:1.0", "registry.example.com/web:2.0"


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture
def api(cluster: SandboxCluster) -> Any:
    """The real kubernetes client, for reading objects back around the server's calls."""
    from kubernetes import client, config

    api_client = config.new_client_from_config_dict(cluster.kubeconfig())
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="prod")))
    return apps


@asynccontextmanager
async def opsgate(tmp_path: Path, cluster: SandboxCluster, principal: str) -> AsyncIterator[Served]:
    """The shipped policy, plus alice as operator in team-* only."""
    async with serve_on(cluster, tmp_path, principal, "g, alice, role:operator, team-*") as served:
        yield served


def image_of(apps: Any, name: str = "web") -> str:
    return str(apps.read_namespaced_deployment(name, NS).spec.template.spec.containers[0].image)


def raw(apps: Any, name: str = "web") -> dict[str, Any]:
    response = apps.read_namespaced_deployment(name, NS, _preload_content=False)
    return json.loads(response.data)  # type: ignore[no-any-return]


async def test_deploy_history_rollback_round_trip(tmp_path: Path, cluster: SandboxCluster, api: Any) -> None:
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async with opsgate(tmp_path, cluster, "alice") as s:
        first = await s.session.call_tool(
            "deploy", {"name": "web", "namespace": NS, "image": V1, "replicas": 2, "wait": True},
            progress_callback=on_progress,
        )
        created = ok(first)
        assert created["action"] == "created" and created["rollout"]["done"] is True
        assert reported, "wait sends MCP progress notifications"

        before = raw(api)
        preview = ok(await s.call("deploy", {"name": "web", "namespace": NS, "image": V2, "dry_run": True}))
        assert preview["action"] == "dry-run"
        assert any(c["before"] == V1 and c["after"] == V2 for c in preview["changes"])
        assert raw(api) == before, "a dry run stores nothing"

        updated = ok(await s.call("deploy", {"name": "web", "namespace": NS, "image": V2}))
        history = ok(await s.call("rollout_history", {"name": "web", "namespace": NS}))
        assert [r["revision"] for r in history["revisions"]] == [1, 2]
        causes = [r["change_cause"] for r in history["revisions"]]
        assert all(c and c.startswith("opsgate: alice call ") for c in causes)
        assert causes[1].endswith(updated_call_id(s, "deploy", -1))
        assert updated["revision"] == 2

        back = ok(await s.call("rollback", {"name": "web", "namespace": NS}))
        assert back["from_revision"] == 2 and back["to_revision"] == 1 and back["new_revision"] == 3
        assert image_of(api) == V1
        history = ok(await s.call("rollout_history", {"name": "web", "namespace": NS}))
        assert [r["revision"] for r in history["revisions"]] == [2, 3], "revision 1 is renumbered to 3"

        again = ok(await s.call("rollback", {"name": "web", "namespace": NS, "to_revision": 2}))
        assert again["new_revision"] == 4 and image_of(api) == V2

        unknown = err(await s.call("rollback", {"name": "web", "namespace": NS, "to_revision": 9}))
        assert (unknown["errors"][0]["field"], unknown["errors"][0]["rule"]) == ("to_revision", "unknown-revision")
        assert "3" in unknown["message"] and "4" in unknown["message"]

        status = ok(await s.call("rollout_status", {"name": "web", "namespace": NS}))
        assert status["revision"] == 4
        listed = ok(await s.call("list_workloads", {"namespace": NS}))
        assert [w["name"] for w in listed["workloads"]] == ["web"]
    outcomes = [r for r in s.records() if r["stage"] == "outcome" and r["tool"] == "rollback"]
    assert outcomes[0]["outcome"]["result"]["changes"], "the outcome records what changed"
    assert verify_log(s.audit_log).ok


def updated_call_id(s: Served, tool: str, index: int) -> str:
    return str([r for r in s.records() if r["stage"] == "decision" and r["tool"] == tool][index]["call_id"])


async def test_dry_runs_change_nothing_and_paused_is_refused(
    tmp_path: Path, cluster: SandboxCluster, api: Any
) -> None:
    async with opsgate(tmp_path, cluster, "alice") as s:
        ok(await s.call("deploy", {"name": "web", "namespace": NS, "image": V1, "wait": True}))
        ok(await s.call("deploy", {"name": "web", "namespace": NS, "image": V2, "wait": True}))
        before = raw(api)  # the rollout is done: the controller has nothing left to write
        assert ok(await s.call("scale", {"name": "web", "namespace": NS, "replicas": 3, "dry_run": True}))["dry_run"]
        assert ok(await s.call("rollback", {"name": "web", "namespace": NS, "dry_run": True}))["dry_run"]
        assert raw(api) == before, "dry runs leave the object byte for byte"

        api.patch_namespaced_deployment("web", NS, {"spec": {"paused": True}})
        paused = err(await s.call("rollback", {"name": "web", "namespace": NS}))
        assert paused["errors"][0]["rule"] == "paused"
        assert image_of(api) == V2


async def test_scale_is_bounded_by_policy(tmp_path: Path, cluster: SandboxCluster, api: Any) -> None:
    async with opsgate(tmp_path, cluster, "alice") as s:
        ok(await s.call("deploy", {"name": "web", "namespace": NS, "image": V1, "replicas": 1}))
        scaled = ok(await s.call("scale", {"name": "web", "namespace": NS, "replicas": 10}))
        assert scaled["replicas_before"] == 1 and scaled["replicas_after"] == 10
        refused = err(await s.call("scale", {"name": "web", "namespace": NS, "replicas": 11}))
        assert refused["code"] == "denied" and "max_replicas 10" in refused["message"]
        assert refused["decision"]["bound"]
        assert api.read_namespaced_deployment_scale("web", NS).spec.replicas == 10
        elsewhere = err(await s.call("deploy", {"name": "web", "namespace": "prod", "image": V1}))
        assert elsewhere["code"] == "denied" and "default deny" in elsewhere["message"]
    denials = [r for r in s.records() if r["stage"] == "decision" and r["decision"]["effect"] == "deny"]
    assert {r["namespace"] for r in denials} == {NS, "prod"}


async def test_a_viewer_is_denied_every_mutating_tool(tmp_path: Path, cluster: SandboxCluster, api: Any) -> None:
    api.create_namespaced_deployment(NS, {
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": V1}]}}},
    })
    before = raw(api)["spec"]
    calls: list[tuple[str, dict[str, Any]]] = [
        ("deploy", {"name": "web", "namespace": NS, "image": V2}),
        ("scale", {"name": "web", "namespace": NS, "replicas": 2}),
        ("rollback", {"name": "web", "namespace": NS}),
    ]
    async with opsgate(tmp_path, cluster, "bob") as s:
        for tool, arguments in calls:
            denied = err(await s.call(tool, arguments))
            assert denied["code"] == "denied", (tool, denied)
        assert ok(await s.call("rollout_status", {"name": "web", "namespace": NS}))
    assert raw(api)["spec"] == before, "the controller may update status; the spec is untouched"
    decisions = {r["tool"]: r["decision"]["effect"] for r in s.records() if r["stage"] == "decision"}
    assert decisions == {"deploy": "deny", "scale": "deny", "rollback": "deny", "rollout_status": "allow"}


async def test_api_faults_come_back_as_clear_errors(tmp_path: Path, cluster: SandboxCluster, api: Any) -> None:
    async with opsgate(tmp_path, cluster, "alice") as s:
        ok(await s.call("deploy", {"name": "web", "namespace": NS, "image": V1, "replicas": 1}))
        cluster.inject_fault("PATCH", r"/deployments/web", status=409, times=1)
        assert ok(await s.call("scale", {"name": "web", "namespace": NS, "replicas": 2}))["replicas_after"] == 2

        cluster.inject_fault("PATCH", r"/deployments/web", status=409, times=CONFLICT_ATTEMPTS)
        conflict = err(await s.call("scale", {"name": "web", "namespace": NS, "replicas": 3}))
        assert conflict["errors"][0]["rule"] == "conflict"

        cluster.inject_fault("PATCH", r"/deployments/web", status=500, times=1)
        broken = err(await s.call("deploy", {"name": "web", "namespace": NS, "image": V2}))
        assert broken["code"] == "api_error" and "500" in broken["message"]
        assert image_of(api) == V1, "nothing half-applied"
        assert api.read_namespaced_deployment_scale("web", NS).spec.replicas == 2
    outcomes = [r["outcome"] for r in s.records() if r["stage"] == "outcome"]
    errors = [o["error"] for o in outcomes if o["status"] == "error"]
    assert [e["rule"] for e in errors] == ["conflict", "server-error"]
    assert [e["http_status"] for e in errors] == [409, 500]
    deploy = next(r for r in s.records() if r["stage"] == "decision" and r["tool"] == "deploy")
    assert deploy["object"] == {"kind": "Deployment", "namespace": NS, "name": "web"}


async def test_bad_names_never_reach_the_api(tmp_path: Path, cluster: SandboxCluster, api: Any) -> None:
    async with opsgate(tmp_path, cluster, "alice") as s:
        for arguments in (
            {"name": "Web_1", "namespace": NS, "image": V1},
            {"name": "web", "namespace": "Team A", "image": V1},
            {"name": "web", "namespace": NS, "image": "has space:1"},
            {"name": "web", "namespace": NS, "image": V1, "replicas": -1},
        ):
            error = err(await s.call("deploy", arguments))
            assert error["code"] == "invalid_arguments", error
    assert api.list_namespaced_deployment(NS).items == []


async def test_a_slow_cluster_fails_the_call_within_the_configured_timeout(
    tmp_path: Path, cluster: SandboxCluster, api: Any
) -> None:
    import time

    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    async with serve(tmp_path, "--principal", "alice", "--kubeconfig", str(kubeconfig),
                     "--kube-timeout-seconds", "1") as s:
        cluster.inject_fault("GET", r"/deployments", delay=5.0, times=0)
        started = time.monotonic()
        error = err(await s.call("rollout_status", {"name": "web", "namespace": NS}))
        took = time.monotonic() - started
        cluster.clear_faults()
    assert error["code"] == "cluster_unreachable" and error["errors"][0]["rule"] == "timeout", error
    assert took < 4.5, took  # 1 s read timeout (a read is never retried), not 5 s
