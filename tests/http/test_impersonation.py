"""Impersonation: the team server asks the cluster as the token's person, and the cluster's RBAC decides too.

The sandbox runs in this process with a small RBAC for impersonated users (sandbox/impersonation.py); the
server is a real ``opsgate serve --http`` reaching it through a kubeconfig with the sandbox's admin token
(the one account allowed to impersonate), as it would a real cluster with a service account.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsgate.sandbox import SandboxCluster
from opsgate.sandbox.impersonation import Rbac, grant
from opsgate.tools.kube import ActingFor, Impersonation, Kube, KubeApiError, acting_for, impersonation_headers
from tests.harness import shipped_policy
from tests.http.oidc import Issuer
from tests.http.served import http_server, mcp_session

pytestmark = pytest.mark.anyio
NS = "team-a"


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05, namespaces=[NS]) as sandbox:
        from kubernetes import client, config

        apps = client.AppsV1Api(config.new_client_from_config_dict(sandbox.kubeconfig()))
        labels = {"app": "web"}
        apps.create_namespaced_deployment(NS, client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=1, selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="web:1")]))),
        ))
        yield sandbox


def test_headers_are_the_principal_and_each_group_in_the_clusters_prefix() -> None:
    who = ActingFor("alice", ("group:platform", "group:sre", "group:oncall"))
    headers = impersonation_headers(Impersonation(group_prefix="oidc:"), who)
    assert headers["Impersonate-User"] == "alice"
    groups = {k: v for k, v in headers.items() if k.lower() == "impersonate-group"}
    assert sorted(groups.values()) == ["oidc:oncall", "oidc:platform", "oidc:sre"]
    assert len(set(groups)) == 3  # three spellings of one name: three header lines


def test_the_cluster_hears_every_group_and_an_impersonated_403_is_the_clusters(cluster: SandboxCluster) -> None:
    """Straight through Kube.call: the sandbox reads all three Impersonate-Group lines, and its RBAC's 403 comes
    back as rule cluster-rbac; outside acting_for (the server's own probes) nobody is impersonated."""
    from kubernetes.client import AppsV1Api

    kube = Kube.from_kubeconfig_dict(cluster.kubeconfig())
    kube.impersonation = Impersonation()
    cluster.api.impersonation.rbac = Rbac(groups={"sre": (grant(["get", "list"], namespaces=[NS]),)})
    apps = AppsV1Api(kube.connect())
    with acting_for(ActingFor("alice", ("group:platform", "group:sre", "group:oncall"))):
        assert kube.call(apps.read_namespaced_deployment, "web", NS, what="read")["metadata"]["name"] == "web"
        with pytest.raises(KubeApiError) as refused:
            kube.call(apps.patch_namespaced_deployment_scale, "web", NS, {"spec": {"replicas": 2}}, what="scale")
    seen = cluster.api.impersonation.seen
    assert seen[0].user == "alice" and sorted(seen[0].groups) == ["oncall", "platform", "sre"]
    assert refused.value.rule == "cluster-rbac" and refused.value.status == 403
    assert 'User \\"alice\\" cannot patch resource \\"deployments/scale\\"' in refused.value.message
    count = len(cluster.api.impersonation.seen)
    kube.call(apps.read_namespaced_deployment, "web", NS, what="read")  # no one acting: opsgate's own account
    assert len(cluster.api.impersonation.seen) == count
    kube.close()


def test_an_account_that_may_not_impersonate_is_told_so(cluster: SandboxCluster) -> None:
    from kubernetes.client import AppsV1Api

    kube = Kube.from_kubeconfig_dict(cluster.kubeconfig(token="someone-else"))
    kube.impersonation = Impersonation()
    with acting_for(ActingFor("alice")), pytest.raises(KubeApiError) as refused:
        kube.call(AppsV1Api(kube.connect()).read_namespaced_deployment, "web", NS, what="read")
    assert refused.value.rule == "impersonation-forbidden"
    assert "cannot impersonate" in refused.value.message
    kube.close()


@pytest.mark.parametrize("cache", ["--disable-read-cache", None], ids=["api-reads", "watch-cache"])
async def test_the_token_reaches_the_cluster_and_its_rbac_refuses_what_the_policy_allowed(
        cluster: SandboxCluster, tmp_path: Path, cache: str | None) -> None:
    """alice's token (group platform) is operator in team-* by opsgate's policy; the cluster lets the group
    read but not scale: the read works as alice, the scale is the cluster's 403, not opsgate's denial. With the
    watch cache on, its list and watch are alice's too (one cache per impersonated identity)."""
    cluster.api.impersonation.rbac = Rbac(groups={"oidc:platform": (grant(["get", "list", "watch"]),)})
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", "g, group:platform, role:operator, team-*")
    with Issuer() as issuer, http_server(tmp_path, "--oauth-issuer", issuer.url, "--policy", str(policy),
                                         "--kubeconfig", str(kubeconfig), "--impersonate-group-prefix", "oidc:",
                                         *([cache] if cache else [])) as server:
        async with mcp_session(server.url, issuer.mint(server.url)) as session:
            listed = await session.call_tool("list_workloads", {"namespace": NS})
            assert not listed.is_error, listed.content
            scaled = await session.call_tool("scale", {"namespace": NS, "name": "web", "replicas": 3})
        error: dict[str, Any] = json.loads(scaled.content[0].text)["error"]  # type: ignore[union-attr]
        assert error["code"] == "api_error" and error["http_status"] == 403, error
        assert error["errors"][0]["rule"] == "cluster-rbac", error
        assert "alice" in error["message"]
        outcome = [r for r in server.records() if r.get("stage") == "outcome" and r["tool"] == "scale"][-1]
        assert outcome["outcome"]["error"]["rule"] == "cluster-rbac"
    seen = cluster.api.impersonation.seen
    assert seen and all(s.user == "alice" and s.groups == ("oidc:platform",) for s in seen), seen
    assert any(s.verb == "patch" for s in seen) and any(s.verb in ("get", "list") for s in seen)
