"""The Go reference MCP server (containers/kubernetes-mcp-server, client-go) against the sandbox.

Its prebuilt binary comes from the npm package ``kubernetes-mcp-server-linux-amd64`` (pinned in
tests/interop-go/package.json and its lockfile; ``npm ci --prefix tests/interop-go`` installs it). It is
driven over MCP stdio with the Python SDK client and pointed at the sandbox's kubeconfig (HTTPS, the
sandbox's CA, the bearer token): its ``resources_create_or_update`` is a server-side apply, so this is
client-go doing SSA, scale, get, list and pod logs against the sandbox, with what it reports checked
against what the Python client reads.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from opsgate.sandbox import SandboxCluster

pytestmark = pytest.mark.anyio

INTEROP = Path(__file__).parents[1] / "interop-go"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "")
_PACKAGE = f"kubernetes-mcp-server-{platform.system().lower()}-{_ARCH}"
BINARY = Path(os.environ.get("OPSGATE_KUBERNETES_MCP_SERVER")
              or INTEROP / "node_modules" / _PACKAGE / "bin" / _PACKAGE)

if not BINARY.exists():
    pytest.skip(f"the Go reference server is not installed ({BINARY} is absent): run "
                "`npm ci --prefix tests/interop-go` (the npm package kubernetes-mcp-server ships the binary)",
                allow_module_level=True)

new_client_from_dict: Any = config.new_client_from_config_dict
MANAGER = "kubernetes-mcp-server"


@asynccontextmanager
async def go_server(cluster: SandboxCluster, tmp_path: Path) -> AsyncIterator[ClientSession]:
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    params = StdioServerParameters(command=str(BINARY), args=["--kubeconfig", str(kubeconfig)],
                                   env={"HOME": str(home), "PATH": os.environ.get("PATH", "")})
    with (tmp_path / "go-server.stderr").open("w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, arguments: dict[str, Any]) -> str:
    result = await session.call_tool(tool, arguments)
    text = "\n".join(getattr(part, "text", "") for part in result.content)
    assert not result.is_error, f"{tool} failed: {text}"
    return text


def _yaml_after_comment(text: str) -> Any:
    """The Go server puts a ``# ...`` line before the YAML it returns."""
    return yaml.safe_load("\n".join(line for line in text.splitlines() if not line.startswith("#")))


def deployment(image: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "nginx", "image": image}]}},
        },
    }


def wait_ready(apps: Any, name: str, replicas: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        d = apps.read_namespaced_deployment(name, "default")
        if d.status.observed_generation == d.metadata.generation and (d.status.ready_replicas or 0) == replicas \
                and (d.status.replicas or 0) == replicas:
            return
        assert time.monotonic() < deadline, f"{name} did not become ready: {d.status}"
        time.sleep(0.05)


async def test_the_go_server_applies_gets_lists_scales_and_reads_logs(tmp_path: Path) -> None:
    with SandboxCluster(rollout_delay=0.05) as cluster:
        api = new_client_from_dict(cluster.kubeconfig())
        apps: Any = client.AppsV1Api(api)
        core: Any = client.CoreV1Api(api)
        try:
            async with go_server(cluster, tmp_path) as session:
                # create: a server-side apply by client-go, recorded as its manager
                created = await call(session, "resources_create_or_update",
                                     {"resource": json.dumps(deployment("nginx:1", 2))})
                assert "created or updated successfully" in created
                reported = _yaml_after_comment(created)[0]
                assert [(m["manager"], m["operation"]) for m in reported["metadata"]["managedFields"]] == [
                    (MANAGER, "Apply")]
                d = apps.read_namespaced_deployment("web", "default")
                assert d.spec.replicas == 2 and d.metadata.generation == 1
                assert d.metadata.managed_fields[0].manager == MANAGER

                # update: the same apply with a new image
                await call(session, "resources_create_or_update", {"resource": json.dumps(deployment("nginx:2", 2))})
                d = apps.read_namespaced_deployment("web", "default")
                assert d.spec.template.spec.containers[0].image == "nginx:2" and d.metadata.generation == 2

                got = yaml.safe_load(await call(session, "resources_get", {
                    "apiVersion": "apps/v1", "kind": "Deployment", "namespace": "default", "name": "web"}))
                assert got["metadata"]["uid"] == d.metadata.uid
                assert got["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2"

                wait_ready(apps, "web", 2)
                listed = await call(session, "resources_list",
                                    {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "default"})
                header, row = listed.splitlines()[:2]
                assert header.split()[:8] == ["NAMESPACE", "APIVERSION", "KIND", "NAME", "READY", "UP-TO-DATE",
                                              "AVAILABLE", "AGE"]
                assert row.split()[:7] == ["default", "apps/v1", "Deployment", "web", "2/2", "2", "2"]

                # scale through /scale: an Update by client-go's user agent on the scale subresource
                scaled = _yaml_after_comment(await call(session, "resources_scale", {
                    "apiVersion": "apps/v1", "kind": "Deployment", "namespace": "default", "name": "web",
                    "scale": 3}))
                assert scaled["kind"] == "Scale" and scaled["spec"]["replicas"] == 3
                d = apps.read_namespaced_deployment("web", "default")
                assert d.spec.replicas == 3
                by_sub = {(m.manager, m.operation, m.subresource): m.fields_v1 for m in d.metadata.managed_fields}
                assert by_sub[(MANAGER, "Update", "scale")] == {"f:spec": {"f:replicas": {}}}
                assert "f:replicas" not in by_sub[(MANAGER, "Apply", None)]["f:spec"]
                wait_ready(apps, "web", 3)

                pods = core.list_namespaced_pod("default", label_selector="app=web").items
                assert len(pods) == 3
                in_namespace = await call(session, "pods_list_in_namespace", {"namespace": "default"})
                for pod in pods:
                    line = next(x for x in in_namespace.splitlines() if pod.metadata.name in x)
                    assert "Running" in line.split() and "1/1" in line.split() and pod.status.pod_ip in line
                name = pods[0].metadata.name
                logs = await call(session, "pods_log", {"namespace": "default", "name": name})
                expected = core.read_namespaced_pod_log(name, "default")
                assert expected and logs.strip() == expected.strip()
        finally:
            api.close()


async def test_the_go_server_takes_replicas_back_with_a_forced_apply(tmp_path: Path) -> None:
    """client-go's apply is forced (``force=true``): a field another manager owns moves to it, no 409."""
    with SandboxCluster(rollout_delay=0.05) as cluster:
        api = new_client_from_dict(cluster.kubeconfig())
        apps: Any = client.AppsV1Api(api)
        try:
            async with go_server(cluster, tmp_path) as session:
                await call(session, "resources_create_or_update", {"resource": json.dumps(deployment("nginx:1", 2))})
                apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 5}},
                                                       field_manager="hpa-like")
                await call(session, "resources_create_or_update", {"resource": json.dumps(deployment("nginx:1", 2))})
                d = apps.read_namespaced_deployment("web", "default")
                assert d.spec.replicas == 2
                owners = {m.manager for m in d.metadata.managed_fields}
                assert owners == {MANAGER}  # hpa-like lost its only field, so its entry is gone
        finally:
            api.close()
