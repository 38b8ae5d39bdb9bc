"""Who the server acts for: --principal, else the cluster's SelfSubjectReview, else the OS user (README, `--principal`).

The cluster is the sandbox reached through a kubeconfig, as a real one would be;
the server asks it with the real ``kubernetes`` client over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from opsgate.sandbox import SandboxCluster
from opsgate.server.identity import resolve_identity
from opsgate.tools.errors import ToolError
from tests.harness import serve

REVIEWS = r"/apis/authentication\.k8s\.io/v1/selfsubjectreviews"



@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    users = {"opsgate-sandbox-token": "sandbox-admin", "dana-token": "dana@example.com", "spaced": "Dana Scully",
             "role-token": "role:admin"}
    with SandboxCluster(kserve=False, users=users) as c:
        yield c


# --- the order, pure ---------------------------------------------------------------------------------


def test_configured_principal_wins_and_the_cluster_is_not_asked() -> None:
    def ask() -> str:
        raise AssertionError("the cluster was asked although --principal was given")

    who = resolve_identity("alice", ask)
    assert (who.principal, who.source, who.note) == ("alice", "config", None)


def test_the_clusters_answer_comes_before_the_os_user() -> None:
    who = resolve_identity(None, lambda: "system:serviceaccount:ops:deployer")
    assert (who.principal, who.source) == ("system:serviceaccount:ops:deployer", "cluster")


@pytest.mark.parametrize("answer", ["Dana Scully", "role:admin", "a,b", "*"])
def test_a_name_that_cannot_be_a_principal_falls_back_to_the_os_user(answer: str) -> None:
    who = resolve_identity(None, lambda: answer)
    assert who.source == "os-user" and who.principal == who.os_user
    assert who.note is not None and "cannot be a principal" in who.note


def test_a_cluster_that_does_not_answer_falls_back_to_the_os_user() -> None:
    def ask() -> str:
        raise ToolError("connection refused", code="cluster_unreachable")

    who = resolve_identity(None, ask)
    assert who.source == "os-user" and who.note is not None and "connection refused" in who.note


# --- the sandbox answers like a cluster --------------------------------------------------------------


def test_the_sandbox_answers_a_self_subject_review_from_the_token(cluster: SandboxCluster, tmp_path: Path) -> None:
    for token, expected in (("dana-token", "dana@example.com"), ("unknown", "system:anonymous")):
        kubeconfig = tmp_path / f"{token}.kubeconfig"
        cluster.write_kubeconfig(kubeconfig, token=token)
        api = config.new_client_from_config(str(kubeconfig))
        try:
            review = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
        finally:
            api.close()
        assert review.status and review.status.user_info
        assert review.status.user_info.username == expected
    resources = json.loads(_get(cluster, "/apis/authentication.k8s.io/v1"))["resources"]
    assert [(r["name"], r["verbs"]) for r in resources] == [("selfsubjectreviews", ["create"])]


def _get(cluster: SandboxCluster, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(cluster.url + path, timeout=5, context=cluster.ssl_context()) as response:
        return str(response.read().decode())


# --- the server, over stdio ---------------------------------------------------------------------------


async def _whoami(cluster: SandboxCluster, tmp_path: Path, token: str, *flags: str) -> tuple[dict[str, str], Path]:
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig, token=token)
    async with serve(tmp_path, "--kubeconfig", str(kubeconfig), *flags) as s:
        who = (await s.call("whoami")).structured_content
        start = next(r for r in s.records() if r["stage"] == "start")
    assert start["principal"] == who["principal"] and start["principal_source"] == who["principal_source"]
    return who, s.stderr_path


@pytest.mark.anyio
async def test_without_principal_the_server_acts_as_who_the_cluster_says(
    cluster: SandboxCluster, tmp_path: Path
) -> None:
    who, _ = await _whoami(cluster, tmp_path, "dana-token")
    assert (who["principal"], who["principal_source"]) == ("dana@example.com", "cluster")


@pytest.mark.anyio
async def test_principal_flag_wins_and_the_cluster_is_not_asked(cluster: SandboxCluster, tmp_path: Path) -> None:
    probe = cluster.inject_fault("POST", REVIEWS, status=500, times=0)  # would fail the probe, if made
    try:
        who, _ = await _whoami(cluster, tmp_path, "dana-token", "--principal", "alice")
    finally:
        cluster.clear_faults()
    assert (who["principal"], who["principal_source"]) == ("alice", "config")
    assert probe.hits == 0


@pytest.mark.anyio
async def test_an_unusable_cluster_name_means_the_os_user_and_says_why(cluster: SandboxCluster, tmp_path: Path) -> None:
    who, stderr = await _whoami(cluster, tmp_path, "spaced")
    assert who["principal_source"] == "os-user" and who["principal"] == who["os_user"]
    logged = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "principal_from_os_user" and "Dana Scully" in e.get("reason", "") for e in logged)


@pytest.mark.anyio
async def test_a_cluster_without_self_subject_review_means_the_os_user(
    cluster: SandboxCluster, tmp_path: Path
) -> None:
    cluster.inject_fault("POST", REVIEWS, status=404, times=0)  # a cluster older than 1.28
    try:
        who, stderr = await _whoami(cluster, tmp_path, "dana-token")
    finally:
        cluster.clear_faults()
    assert who["principal_source"] == "os-user" and who["principal"] == who["os_user"]
    assert "principal_from_os_user" in stderr.read_text()
