"""The watch cache and BOOKMARK events: with nothing to deliver for its namespace, the watch still hears the
version the API server has reached (its own sandbox, bookmarks every 0.3 s instead of the minute a real API
server waits), so the cache's resourceVersion advances and its age stays small, without a list."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opsgate.sandbox import SandboxCluster
from opsgate.tools.kube import Kube
from opsgate.tools.listing import ListWorkloadsArgs, list_workloads
from opsgate.tools.workloads import DeployArgs, deploy
from tests.tools.test_informer import Requests, cached_kube, ctx, src, status, until

BOOKMARK_SECONDS = 0.3


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05, watch_bookmark_seconds=BOOKMARK_SECONDS) as sandbox:
        yield sandbox


def test_bookmarks_advance_the_cache_version_without_a_list(cluster: SandboxCluster) -> None:
    requests = Requests(cluster)
    kube, other = cached_kube(cluster), Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)
    try:
        for name in ("mine", "elsewhere"):
            other.call(other.core.create_namespace, {"metadata": {"name": name}}, what="create namespace")
        deploy(kube, DeployArgs(name="web", namespace="mine", image="nginx:1"), ctx())
        until(lambda: status(other, "mine").done, "the rollout done: no more events for the watch")
        args = ListWorkloadsArgs(namespace="mine", kind="Deployment")
        first = src(until(lambda: (page := list_workloads(kube, args, ctx())).workloads[0].ready == 1 and page,
                          "the ready Deployment in the cache"))
        assert first.via == "cache" and first.resource_version is not None
        until(lambda: requests.of("WATCH", "/namespaces/mine/deployments"), "the watch request")
        requests.reset()
        # a write the cache's watch does not select: only a bookmark can say the cluster has gone past it
        written = other.call(other.core.create_namespaced_config_map, "elsewhere", {"metadata": {"name": "c"}},
                             what="create configmap")["metadata"]["resourceVersion"]
        assert int(written) > int(first.resource_version)
        seen = until(lambda: (s := src(list_workloads(kube, args, ctx()))).resource_version is not None
                     and int(s.resource_version) >= int(written) and s, "a bookmark past the write")
        assert seen.via == "cache" and seen.age_seconds is not None and seen.age_seconds < 5
        assert requests.of("GET", "/namespaces/mine/deployments") == 0, "no list: the watch told it"
    finally:
        kube.close()
        other.close()
