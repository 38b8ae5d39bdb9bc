"""scale and rollback over stdio beside the same API calls made directly with the kubernetes client.

Both run against one sandbox cluster in this process, in separate loops (a direct
write between two of ours would make ours retry on a 409). The difference of the
medians is opsgate's own overhead: MCP framing, the gate, two fsynced records.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp import ClientSession

Row = Callable[..., None]
NS = "bench"


def _policy(tmp: Path) -> Path:
    from importlib.resources import files

    folder = tmp / "deploy-policy"
    folder.mkdir(exist_ok=True)
    shipped = files("opsgate.policies")
    for name in ("model.conf", "policy.csv"):
        (folder / name).write_text(shipped.joinpath(name).read_text())
    with (folder / "policy.csv").open("a") as fh:
        fh.write("g, bench, role:operator, *\n")
    return folder


async def _timed(session: ClientSession, tool: str, args: Callable[[int], dict[str, Any]], n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        result = await session.call_tool(tool, args(i))
        out.append((time.perf_counter() - started) * 1000)
        assert not result.is_error, result.content
    return out


def _direct_scale(apps: Any, n: int) -> list[float]:
    """What our scale does: read the Deployment, patch the scale subresource."""
    out = []
    for i in range(n):
        started = time.perf_counter()
        json.loads(apps.read_namespaced_deployment("web", NS, _preload_content=False).data)
        json.loads(apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 2 + i % 2}},
                                                          _preload_content=False).data)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _direct_rollback(apps: Any, n: int) -> list[float]:
    """What kubectl rollout undo does: read, list owned ReplicaSets, one JSON patch of the template, read back."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        d = json.loads(apps.read_namespaced_deployment("web", NS, _preload_content=False).data)
        rs_list = json.loads(apps.list_namespaced_replica_set(NS, _preload_content=False).data)["items"]
        owned = [r for r in rs_list if any(o["uid"] == d["metadata"]["uid"] for o in r["metadata"].get(
            "ownerReferences", []))]
        owned.sort(key=lambda r: int(r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]))
        template = owned[-2]["spec"]["template"]
        template["metadata"]["labels"].pop("pod-template-hash", None)
        patch = [{"op": "replace", "path": "/spec/template", "value": template}]
        json.loads(apps.patch_namespaced_deployment("web", NS, patch, _preload_content=False).data)  # json-patch
        json.loads(apps.read_namespaced_deployment("web", NS, _preload_content=False).data)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def run(tmp: Path, row: Row, session_for: Callable[[list[str]], Any], opsgate_args: Callable[..., list[str]],
              n: int = 200) -> None:
    from kubernetes import client, config

    from opsgate.sandbox import SandboxCluster

    with SandboxCluster(rollout_delay=0.0) as cluster:
        kubeconfig = tmp / "bench-kubeconfig"
        cluster.write_kubeconfig(kubeconfig)
        api_client = config.new_client_from_config_dict(cluster.kubeconfig())
        client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        apps = client.AppsV1Api(api_client)
        args = opsgate_args(tmp, "--principal", "bench", "--kubeconfig", str(kubeconfig), "--policy",
                            str(_policy(tmp)))
        async with session_for(args) as s:
            for image in ("nginx:1.26", "nginx:1.27"):
                await s.call_tool("deploy", {"name": "web", "namespace": NS, "image": image, "replicas": 2})
            await _timed(s, "scale", lambda i: {"name": "web", "namespace": NS, "replicas": 2 + i % 2}, 20)
            ours_scale = await _timed(s, "scale", lambda i: {"name": "web", "namespace": NS,
                                                             "replicas": 2 + i % 2}, n)
            ours_rollback = await _timed(s, "rollback", lambda i: {"name": "web", "namespace": NS}, n // 2)
        _direct_scale(apps, 20)
        direct_scale = _direct_scale(apps, n)
        direct_rollback = _direct_rollback(apps, n // 2)
        api_client.close()
    for tool, ours, direct in (("scale", ours_scale, direct_scale), ("rollback", ours_rollback, direct_rollback)):
        o, d = statistics.median(ours), statistics.median(direct)
        row(f"{tool} round trip over stdio p50 (sandbox)", f"{o:.2f} ms", f"{d:.2f} ms direct", "")
        row(f"{tool}: opsgate's own overhead p50", f"{o - d:+.2f} ms", "0 ms", "< 3 ms")
