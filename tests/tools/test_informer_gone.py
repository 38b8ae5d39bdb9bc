"""The watch cache after a 410 Gone: the version its watch would resume from is compacted away, so it lists again.

Apart from tests/tools/test_informer.py (whose fixtures and helpers it uses) because it is the slow one:
10,000 events of watch log must go by while the watch is down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opsgate.sandbox import SandboxCluster
from opsgate.sandbox.kinds import NAMESPACE
from opsgate.tools.kube import Kube
from opsgate.tools.workloads import DeployArgs, deploy
from tests.tools.test_informer import Requests, cluster, ctx, kube, live, ns, requests, status, until

__all__ = ["cluster", "kube", "ns", "requests"]  # the fixtures, used by name


def labelled(value: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A store update that labels the object: one more event in the watch log."""
    return lambda cur: {**cur, "metadata": {**cur["metadata"], "labels": {"n": value}}}


def test_a_410_gone_lists_again(cluster: SandboxCluster, kube: Kube, requests: Requests, ns: str) -> None:
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1", replicas=1), ctx())
    live(kube, requests, ns)
    # The watch goes down and cannot come back, while more than the sandbox's 10,000 events of watch log go by:
    # the version it watched from is compacted away, so watching again from it answers 410 Gone.
    cluster.inject_fault("GET", rf"/namespaces/{ns}/deployments$", drop=True, times=0)
    assert cluster._server is not None
    cluster._server.close_connections()
    until(lambda: status(kube, ns).source.via == "api", "reads going to the API while the watch is down")
    other = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)
    other.call(other.apps.patch_namespaced_deployment_scale, "web", ns, {"spec": {"replicas": 7}}, what="scale")
    other.close()
    for i in range(10_050):
        cluster.store.update(NAMESPACE, "", ns, labelled(str(i)))
    down = status(kube, ns)
    assert down.desired == 7 and down.source.via == "api" and down.source.note == "the cache's watch is reconnecting"
    requests.reset()
    cluster.clear_faults()
    seen = until(lambda: (s := status(kube, ns)).source.via == "cache" and s, "the cache back", timeout=15)
    assert seen.desired == 7
    assert requests.of("GET", f"/namespaces/{ns}/deployments") == 1, "a 410 lists again"
