"""server/rbac.py holds what the tools really call: every tool runs against the sandbox, each request is told
apart by method and path, and the permissions it used must be the ones the table lists for that tool."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from opsgate.sandbox import SandboxCluster
from opsgate.server.catalog import server_tools
from opsgate.server.config import Settings
from opsgate.server.rbac import APPS, CACHE_NEEDS, KSERVE, TOOL_NEEDS, ApiAccess, cluster_needs
from opsgate.server.toolspec import ToolSpec
from opsgate.tools.context import CallContext
from opsgate.tools.kube import Kube
from opsgate.tools.tensors import MODELS_DIR_DEFAULT

pytestmark = pytest.mark.anyio

IRIS = f"file://{MODELS_DIR_DEFAULT}/iris.onnx"
IRIS_V2 = f"file://{MODELS_DIR_DEFAULT}/iris-v2.onnx"
# Every resource a tool might touch, so a call outside the table is named, not only counted.
RESOURCES = [(APPS, "deployments"), (APPS, "deployments/scale"), (APPS, "replicasets"), (APPS, "statefulsets"),
             (KSERVE, "inferenceservices"), ("", "pods"), ("", "events"), ("", "services"), ("", "namespaces")]
_HTTP = {"get": ("GET", True), "list": ("GET", False), "create": ("POST", False), "patch": ("PATCH", True),
         "update": ("PUT", True), "delete": ("DELETE", True)}
_ids = itertools.count(1)


def _path(group: str, resource: str, item: bool) -> str:
    root = "/api/v1" if group == "" else f"/apis/{re.escape(group)}/[^/]+"
    plural, _, sub = resource.partition("/")
    where = "" if plural == "namespaces" else "/namespaces/[^/]+"
    return f"^{root}{where}/{plural}" + ("/[^/]+" if item or sub else "") + (f"/{sub}" if sub else "") + "$"


class Recorder:
    """Pass-through faults (no status, no delay) on the sandbox: each counts the requests it matches."""

    def __init__(self, cluster: SandboxCluster) -> None:
        self.cluster = cluster
        self.faults: dict[tuple[str, str, str], Any] = {}
        self.other: Any = None

    def start(self) -> None:
        self.cluster.clear_faults()
        self.faults = {(g, r, verb): self.cluster.inject_fault(method, _path(g, r, item), times=0)
                       for g, r in RESOURCES for verb, (method, item) in _HTTP.items()}
        self.other = self.cluster.inject_fault(None, ".*", times=0)  # anything else: must stay 0

    def used(self) -> set[tuple[str, str, str]]:
        assert self.other.hits == 0, "a request outside the known resources (see RESOURCES)"
        return {key for key, fault in self.faults.items() if fault.hits}


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def kube(cluster: SandboxCluster) -> Iterator[Kube]:
    k = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)
    yield k
    k.close()


def _declared(tool: str) -> set[tuple[str, str, str]]:
    return {(a.group, a.resource, verb) for a in TOOL_NEEDS.get(tool, ()) for verb in a.verbs}


def gitops_repo(folder: Path) -> Path:
    """A Git repository whose one folder holds a Deployment: what drift compares the cluster with."""
    (folder / "apps").mkdir(parents=True)
    (folder / "apps" / "web.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
                                              "spec: {replicas: 2}\n")
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.com"}
    for argv in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "manifests"]):
        subprocess.run(["git", "-C", str(folder), *argv], check=True, env={**os.environ, **identity})
    return folder


async def test_each_tool_uses_exactly_the_permissions_the_table_lists(cluster: SandboxCluster, kube: Kube,
                                                                      tmp_path: Path) -> None:
    # GitOps mode only for a namespace no write below uses: drift reads the cluster against its folder
    settings = Settings(gitops_repo=gitops_repo(tmp_path / "repo"), gitops_paths={"in-git": "apps"})
    specs: dict[str, ToolSpec[Any, Any]] = {s.name: s for s in server_tools(settings, kube)}
    ns = f"rbac{next(_ids)}"
    kube.call(kube.core.create_namespace, {"metadata": {"name": ns}}, what="create namespace")
    recorder = Recorder(cluster)
    used: dict[str, set[tuple[str, str, str]]] = {}

    async def call(tool: str, **arguments: Any) -> Any:
        spec = specs[tool]
        args = spec.args_model.model_validate({"namespace": ns, **arguments})
        recorder.start()
        try:
            if spec.current_state is not None:  # the gate's read for max_replicas_change is the tool's too
                await spec.current_state(args)
            return await spec.run(args, CallContext(call_id=f"c{next(_ids)}", principal="alice"))
        finally:
            seen = recorder.used()
            cluster.clear_faults()
            outside = seen - _declared(tool)
            assert not outside, f"{tool} calls {sorted(outside)}, which server/rbac.py does not list for it"
            used.setdefault(tool, set()).update(seen)

    await call("deploy", name="web", image="nginx:1.27", replicas=2, wait=True)
    await call("deploy", name="web", image="nginx:1.28")
    await call("rollout_status", name="web")
    await call("rollout_history", name="web")
    await call("scale", name="web", replicas=3)
    await call("rollback", name="web")
    await call("deploy_model", name="iris", storage_uri=IRIS, wait=True)
    await call("deploy_model", name="iris", storage_uri=IRIS_V2, canary_traffic_percent=20, wait=True)
    deadline = time.monotonic() + 10
    while not (await call("model_status", name="iris")).done:
        assert time.monotonic() < deadline, "the canary never became ready"
        await anyio.sleep(0.05)
    await call("kserve_infer", name="iris", inputs={"features": [[5.1, 3.5, 1.4, 0.2]]})
    await call("scale", name="iris", kind="InferenceService", min_replicas=1, max_replicas=2)
    await call("rollback", name="iris", kind="InferenceService")
    await call("list_workloads")
    await call("drift", namespace="in-git")

    unused = {tool: sorted(_declared(tool) - used.get(tool, set())) for tool in TOOL_NEEDS}
    assert not {t: u for t, u in unused.items() if u}, f"listed in server/rbac.py but never called: {unused}"
    cluster_tools = {name for name, spec in specs.items() if spec.open_world}
    assert set(TOOL_NEEDS) == cluster_tools, "every tool that calls the cluster has its row, and only those"


def test_needs_merge_by_resource_in_rbac_verb_order() -> None:
    merged = cluster_needs(["scale", "deploy", "whoami"])
    assert merged[0] == ApiAccess(APPS, "deployments/scale", ("get", "patch"))
    assert ApiAccess(APPS, "deployments", ("get", "create", "patch")) in merged
    assert ApiAccess(KSERVE, "inferenceservices", ("get", "patch")) in merged
    assert cluster_needs(["whoami", "list_models"]) == []


def _verb_of(request: Any) -> tuple[str, str, str] | None:
    """(group, resource, verb) of a namespaced request as RBAC names it, from its method, path and query."""
    match = re.match(r"^/apis?/(?:(?P<group>[^/]+)/)?[^/]+/namespaces/[^/]+/(?P<rest>.+)$", request.path)
    if match is None or request.method != "GET":
        return None
    plural, _, name = match["rest"].partition("/")
    group = "" if request.path.startswith("/api/") else match["group"]
    watching = request.query.get("watch") in ("1", "true")
    return (group, plural, "get" if name else "watch" if watching else "list")


def test_with_the_watch_cache_the_reads_list_and_watch_what_cache_needs_lists(cluster: SandboxCluster,
                                                                             kube: Kube) -> None:
    ns = f"rbac{next(_ids)}"
    kube.call(kube.core.create_namespace, {"metadata": {"name": ns}}, what="create namespace")
    specs: dict[str, ToolSpec[Any, Any]] = {s.name: s for s in server_tools(Settings(), kube)}
    for tool, args in (("deploy", {"name": "web", "image": "nginx:1.27"}), ("deploy_model", {"name": "iris",
                                                                                           "storage_uri": IRIS})):
        anyio.run(specs[tool].run, specs[tool].args_model.model_validate({"namespace": ns, **args}),
                  CallContext(call_id=f"c{next(_ids)}", principal="alice"))
    seen: list[tuple[str, str, str]] = []
    handle = cluster.api.handle

    def recording(request: Any) -> Any:
        if (verb := _verb_of(request)) is not None:
            seen.append(verb)
        return handle(request)

    cluster.api.handle = recording  # type: ignore[method-assign,assignment]
    try:
        for tool in CACHE_NEEDS:
            cached = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)  # a cache of its own
            cached.use_read_cache(idle_seconds=60)
            try:
                spec = {s.name: s for s in server_tools(Settings(), cached)}[tool]
                seen.clear()
                name = {"list_workloads": {}, "model_status": {"name": "iris"}}.get(tool, {"name": "web"})
                anyio.run(spec.run, spec.args_model.model_validate({"namespace": ns, **name}),
                          CallContext(call_id=f"c{next(_ids)}", principal="alice"))
                wanted = {(a.group, a.resource, v) for a in CACHE_NEEDS[tool] for v in a.verbs}
                deadline = time.monotonic() + 10
                while not wanted <= set(seen):  # the watch starts in its own thread, after the list
                    assert time.monotonic() < deadline, f"{tool}: {sorted(wanted - set(seen))} never asked"
                    time.sleep(0.02)
                outside = set(seen) - wanted - _declared(tool)
                assert not outside, f"{tool} with the cache calls {sorted(outside)}, which server/rbac.py does not list"
            finally:
                cached.close()
    finally:
        cluster.api.handle = handle  # type: ignore[method-assign]
    assert set(CACHE_NEEDS) <= set(TOOL_NEEDS)
    needs = cluster_needs(["list_workloads", "rollout_history", "scale"], read_cache=True)
    assert ApiAccess(APPS, "deployments", ("watch",), optional=True) in needs  # list is needed anyway
    assert ApiAccess(APPS, "replicasets", ("watch",), optional=True) in needs
    assert not any(a.optional for a in cluster_needs(["list_workloads"]))
