"""Issue 15, policy and bounds (items 8, 9, 10, 15, 16): no bound an assistant or a careless operator can walk around.

Each test starts ``opsgate serve`` as a subprocess (tests/harness.py) on a sandbox
cluster reached through a kubeconfig, drives it with the MCP SDK's client, and
reads the audit log afterwards: the attack or the mistake is refused, the refusal
names the bound, and the log holds the decision (and, for a refusal found while
running, the outcome) with nothing lost.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from opsgate.audit import verify_log
from opsgate.policies import SHIPPED_DIR
from opsgate.sandbox import SandboxCluster
from opsgate.tools.tensors import MODELS_DIR_DEFAULT
from tests.harness import Served, err, ok, serve, server_env, shipped_policy

pytestmark = pytest.mark.anyio

NS = "team-a"
ADMIN = "root-admin"
OPERATOR_BOUNDS = """
[subject."role:operator"]
max_replicas = 10
allow_scale_to_zero = false
image_prefixes = ["registry.example.com/"]
"""
IRIS = f"file://{MODELS_DIR_DEFAULT}/iris.onnx"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.02) as sandbox:
        from kubernetes import client, config

        new_client: Any = config.new_client_from_config_dict
        api = new_client(sandbox.kubeconfig())
        core: Any = client.CoreV1Api(api)
        for name in (NS, "team-b", "prod"):
            core.create_namespace({"metadata": {"name": name}})
        api.close()
        yield sandbox


def bounded_policy(folder: Path, bounds: str = OPERATOR_BOUNDS) -> Path:
    """The shipped roles; alice operator in team-* (bounded), the admin everywhere (unbounded)."""
    policy = shipped_policy(folder, "g, alice, role:operator, team-*", f"g, {ADMIN}, role:admin, *")
    (policy / "bounds.toml").write_text(bounds)
    return policy


@asynccontextmanager
async def serve_as(cluster: SandboxCluster, tmp_path: Path, principal: str, policy: Path) -> AsyncIterator[Served]:
    """A server for ``principal`` with its own audit log (tmp_path/principal), on the shared sandbox."""
    home = tmp_path / principal
    home.mkdir(parents=True, exist_ok=True)
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    async with serve(home, "--principal", principal, "--kubeconfig", str(kubeconfig), "--policy", str(policy)) as s:
        yield s


def rules_of(error: dict[str, Any]) -> set[str]:
    """The rule an error result names, at the top or per field."""
    return {r for r in (error.get("rule"), *(e.get("rule") for e in error.get("errors") or ())) if r}


def decisions(s: Served, tool: str) -> list[dict[str, Any]]:
    return [r for r in s.records() if r["stage"] == "decision" and r["tool"] == tool]


def outcomes(s: Served, tool: str) -> list[dict[str, Any]]:
    return [r for r in s.records() if r["stage"] == "outcome" and r["tool"] == tool]


# --------------------------------------------------------------------------- item 8


async def test_a_lone_csv_policy_still_protects_the_cluster_namespaces(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 8: ``--policy my.csv`` with no bounds.toml beside it kept no protected namespace.

    An admin granted ``*`` deployed into kube-system. Now protection is on unless a bounds
    file turns it off: the write is refused as protected, and audited as a denial.
    """
    my_csv = tmp_path / "mine" / "my.csv"
    my_csv.parent.mkdir()
    my_csv.write_text((SHIPPED_DIR / "policy.csv").read_text() + f"\ng, {ADMIN}, role:admin, *\n")
    async with serve_as(cluster, tmp_path, ADMIN, my_csv) as s:
        who = ok(await s.call("whoami"))
        assert who["protected_namespaces"] == ["kube-system", "kube-public", "kube-node-lease"]
        assert "no bounds.toml" in who["bounds"]
        for namespace in ("kube-system", "kube-public", "kube-node-lease"):
            refused = err(await s.call("deploy", {"name": "miner", "namespace": namespace, "image": "evil:1"}))
            assert refused["code"] == "denied" and f"namespace {namespace} is protected" in refused["message"]
        ok(await s.call("deploy", {"name": "web", "namespace": NS, "image": "nginx:1", "replicas": 1}))
    denied = [d for d in decisions(s, "deploy") if d["decision"]["effect"] == "deny"]
    assert [d["namespace"] for d in denied] == ["kube-system", "kube-public", "kube-node-lease"]
    assert verify_log(s.audit_log).ok


def test_policy_check_and_doctor_say_which_bounds_file_applies(tmp_path: Path) -> None:
    """Issue 15 item 8: ``policy check`` and ``doctor`` said OK for a lone csv; now both say that no bounds
    file applies and what stays protected, and name the file when there is one."""
    my_csv = tmp_path / "my.csv"
    my_csv.write_text((SHIPPED_DIR / "policy.csv").read_text())

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "opsgate.server", *args], capture_output=True, text=True,
                              env=server_env({"HOME": str(tmp_path)}), timeout=120, check=False)
        return done.stdout + done.stderr

    checked = run("policy", "check", str(my_csv))
    assert "no bounds.toml beside the policy, so no argument bounds apply" in checked
    assert "protected namespaces: kube-system, kube-public, kube-node-lease (the default)" in checked
    shipped = run("policy", "check", str(SHIPPED_DIR))
    assert f"bounds: {SHIPPED_DIR / 'bounds.toml'}" in shipped
    doctor = run("doctor", "--policy", str(my_csv), "--audit-log", str(tmp_path / "audit.jsonl"))
    assert "no bounds.toml beside the policy" in doctor and "kube-system" in doctor


# --------------------------------------------------------------------------- item 9


async def test_min_replicas_zero_is_bounded_for_inference_services(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 9: ``allow_scale_to_zero = false`` looked only at the larger of min/max_replicas,
    so ``min_replicas=0`` with a max walked around it, in ``scale`` and in ``deploy_model``."""
    policy = bounded_policy(tmp_path / "policy")
    async with serve_as(cluster, tmp_path, "alice", policy) as s:
        service = {"name": "iris9", "namespace": NS}
        deployed = err(await s.call("deploy_model", {**service, "storage_uri": IRIS, "min_replicas": 0,
                                                     "max_replicas": 3}))
        assert deployed["code"] == "denied" and "min_replicas 0" in deployed["message"]
        assert "allow_scale_to_zero = false" in deployed["message"]
        ok(await s.call("deploy_model", {**service, "storage_uri": IRIS, "min_replicas": 1, "max_replicas": 3}))
        scaled = err(await s.call("scale", {**service, "kind": "InferenceService", "min_replicas": 0,
                                            "max_replicas": 2}))
        assert scaled["code"] == "denied" and "allow_scale_to_zero = false" in scaled["message"]
        status = ok(await s.call("list_workloads", {"namespace": NS}))
    row = next(r for r in status["workloads"] if r["name"] == "iris9")
    assert row["desired"] == 1, "minReplicas stayed 1"
    bounds = [d["decision"].get("bound") for d in decisions(s, "deploy_model") + decisions(s, "scale")]
    assert sum(1 for b in bounds if b and "min_replicas 0" in b) == 2, bounds
    assert verify_log(s.audit_log).ok


# --------------------------------------------------------------------------- item 10


@pytest.mark.parametrize("uri", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "gopher://internal.example:70/_payload",
    "file:///etc/passwd",
    f"file://{MODELS_DIR_DEFAULT}/../../../etc/shadow.onnx",
])
async def test_storage_uri_is_bounded_by_default(cluster: SandboxCluster, tmp_path: Path, uri: str) -> None:
    """Issue 15 item 10: the ``models`` bound checked the service's name, and its storageUri could point
    anywhere (the cloud metadata address, gopher://, any file) for any subject. Now a URI with a scheme
    is refused unless the subject's storage_uri_prefixes allow it, for admins too (whose role has no
    bounds); a model from the models folder needs nothing."""
    policy = bounded_policy(tmp_path / "policy")
    async with serve_as(cluster, tmp_path, ADMIN, policy) as s:
        refused = err(await s.call("deploy_model", {"name": "iris10", "namespace": NS, "storage_uri": uri}))
        assert refused["code"] == "denied" and "storage_uri" in refused["message"]
        assert uri not in refused["message"], "the refusal does not repeat the URI (it may hold a secret)"
        ok(await s.call("deploy_model", {"name": "iris10", "namespace": NS, "storage_uri": IRIS, "dry_run": True}))
    denied = [d for d in decisions(s, "deploy_model") if d["decision"]["effect"] == "deny"]
    assert len(denied) == 1 and "storage_uri" in denied[0]["decision"]["bound"]
    assert verify_log(s.audit_log).ok


async def test_storage_uri_prefixes_opt_in_per_subject(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 10: ``storage_uri_prefixes`` opens exactly the prefixes a subject names; a lookalike
    host or a dot segment climbing out of the prefix stays refused."""
    policy = bounded_policy(tmp_path / "policy", OPERATOR_BOUNDS + 'storage_uri_prefixes = ["gs://models-prod/"]\n')
    async with serve_as(cluster, tmp_path, "alice", policy) as s:
        for uri in ("gs://models-prod-evil/x", "gs://models-prod/../other/x", "s3://models-prod/x"):
            refused = err(await s.call("deploy_model", {"name": "fraud", "namespace": NS, "storage_uri": uri}))
            assert refused["code"] == "denied" and "storage_uri" in refused["message"], uri
        passed = await s.call("deploy_model", {"name": "fraud", "namespace": NS,
                                               "storage_uri": "gs://models-prod/fraud/v1", "dry_run": True})
    allowed = decisions(s, "deploy_model")[-1]["decision"]
    assert allowed["effect"] == "allow", (allowed, passed)


# --------------------------------------------------------------------------- item 15


async def test_rollback_does_not_restore_an_image_the_bounds_refuse(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 15: a rollback restored an earlier revision's image from outside image_prefixes.

    The admin (unbounded) deployed revision 1 from an unapproved registry, then revision 2 from
    the approved one; alice (image_prefixes bound) rolling back is refused before any write,
    naming the bound, and the outcome says so in the log.
    """
    policy = bounded_policy(tmp_path / "policy")
    web = {"name": "web15", "namespace": NS}
    async with serve_as(cluster, tmp_path, ADMIN, policy) as admin:
        ok(await admin.call("deploy", {**web, "image": "docker.io/evil/miner:1", "replicas": 1, "wait": True}))
        ok(await admin.call("deploy", {**web, "image": "registry.example.com/web:2", "replicas": 1, "wait": True}))
    async with serve_as(cluster, tmp_path, "alice", policy) as s:
        refused = err(await s.call("rollback", web))
        assert refused["code"] == "denied" and "bound" in rules_of(refused)
        assert "not from an allowed registry for role:operator" in refused["message"]
        assert "revision 1" in refused["message"]
        listed = ok(await s.call("list_workloads", {"namespace": NS}))
    row = next(r for r in listed["workloads"] if r["name"] == "web15")
    assert row["images"] == ["registry.example.com/web:2"], "nothing was written"
    (outcome,) = outcomes(s, "rollback")
    assert outcome["outcome"]["error"]["code"] == "denied" and "bound" in rules_of(outcome["outcome"]["error"])
    assert verify_log(s.audit_log).ok


async def test_rollback_does_not_restore_min_replicas_zero(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 15: an InferenceService rollback restored ``minReplicas: 0`` from the spec opsgate
    recorded, for a caller whose bounds say allow_scale_to_zero = false."""
    policy = bounded_policy(tmp_path / "policy")
    service = {"name": "iris15", "namespace": NS}
    async with serve_as(cluster, tmp_path, ADMIN, policy) as admin:
        ok(await admin.call("deploy_model", {**service, "storage_uri": IRIS, "min_replicas": 0, "max_replicas": 2,
                                             "deployment_mode": "RawDeployment", "wait": True}))
        ok(await admin.call("deploy_model", {**service, "min_replicas": 1, "wait": True}))
    async with serve_as(cluster, tmp_path, "alice", policy) as s:
        refused = err(await s.call("rollback", {**service, "kind": "InferenceService"}))
        assert refused["code"] == "denied" and "bound" in rules_of(refused), refused
        assert "allow_scale_to_zero = false" in refused["message"]
        status = ok(await s.call("list_workloads", {"namespace": NS}))
    row = next(r for r in status["workloads"] if r["name"] == "iris15")
    assert row["desired"] == 1, "minReplicas stayed 1: nothing was written"
    (outcome,) = outcomes(s, "rollback")
    assert "bound" in rules_of(outcome["outcome"]["error"])
    assert verify_log(s.audit_log).ok


# --------------------------------------------------------------------------- item 16


async def test_whoami_reports_grants_where_they_hold_and_denials_say_where(
    cluster: SandboxCluster, tmp_path: Path
) -> None:
    """Issue 15 item 16: ``g, alice, role:operator, team-*`` showed ``allow write * in *``; a denial did
    not say where alice may act. Now each grant carries the namespaces it holds in and the g line
    that gave it, and a denial (and explain_access) names where the call would be allowed."""
    policy = bounded_policy(tmp_path / "policy")
    async with serve_as(cluster, tmp_path, "alice", policy) as s:
        who = ok(await s.call("whoami"))
        writes = [g for g in who["grants"] if g["verb"] == "write"]
        assert [(g["namespaces"], g["via"]) for g in writes] == [("team-*", "role:operator")]
        assert writes[0]["granted_by"] and writes[0]["granted_by"][0].startswith("policy.csv:")
        text = (await s.call("whoami")).content[0].text
        assert "write * in team-*" in text and "in *" not in text.replace("read * in *", "")
        denied = err(await s.call("deploy", {"name": "web", "namespace": "prod", "image": "registry.example.com/w:1"}))
        assert denied["code"] == "denied" and "alice may write with deploy in: team-*" in denied["message"]
        explained = ok(await s.call("explain_access", {"tool": "deploy", "namespace": "prod"}))
        assert explained["allowed"] is False and explained["allowed_in"] == ["team-*"]
    (decision,) = decisions(s, "deploy")
    assert "may write with deploy in: team-*" in decision["decision"]["reason"]


async def test_kserve_infer_is_bounded_by_the_model_a_service_serves(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 10, the calling side: an InferenceService named like an allowed model (``iris``), created
    by someone else with its storageUri pointing at the cloud metadata address, is refused by kserve_infer:
    the bound looks at the model the service serves, not only at its name."""
    from kubernetes import client, config

    new_client: Any = config.new_client_from_config_dict
    api = new_client(cluster.kubeconfig())
    custom: Any = client.CustomObjectsApi(api)
    model = {"modelFormat": {"name": "onnx"}, "storageUri": "http://169.254.169.254/latest/meta-data/iris.onnx"}
    custom.create_namespaced_custom_object("serving.kserve.io", "v1beta1", "team-b", "inferenceservices", {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "iris"},
        "spec": {"predictor": {"model": model}}})
    api.close()
    async with serve_as(cluster, tmp_path, "alice", bounded_policy(tmp_path / "policy")) as served:
        refused = err(await served.call("kserve_infer", {
            "namespace": "team-b", "name": "iris", "inputs": {"features": [[5.1, 3.5, 1.4, 0.2]]}}))
    assert refused["code"] == "denied" and refused["errors"][0]["rule"] == "bound", refused
    assert "storage_uri (http://...)" in refused["message"] and "169.254" not in refused["message"]
    outcome = [r for r in served.records() if r.get("stage") == "outcome"][-1]
    assert outcome["outcome"]["status"] == "error" and outcome["outcome"]["error"]["code"] == "denied"
