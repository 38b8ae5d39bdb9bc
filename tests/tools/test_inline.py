"""A read tried on the event loop (tools/inline.py): answers from the watch cache, or stops before it would wait.

The catalog runs the cached read tools under ``cache_only`` first and, on WouldWait, again in a worker
thread. Here, against the sandbox over real HTTPS: a cache hit makes no request, and every kind of wait
(the API server, a client not built yet, a first list, a watch behind this server's write, an object the
cache does not hold) stops at once, before any request goes out.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from opsgate.sandbox import SandboxCluster
from opsgate.tools.inline import WouldWait, cache_only
from opsgate.tools.kube import Kube
from opsgate.tools.listing import ListWorkloadsArgs, list_workloads
from opsgate.tools.workload_types import ScaleArgs
from opsgate.tools.workloads import (
    DeployArgs,
    RolloutHistoryArgs,
    deploy,
    rollout_history,
    scale_deployment,
)
from tests.tools.test_informer import Requests, cached_kube, ctx, live, status

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def requests(cluster: SandboxCluster) -> Requests:
    return Requests(cluster)


@pytest.fixture(scope="module")
def kube(cluster: SandboxCluster, requests: Requests) -> Iterator[Kube]:
    k = cached_kube(cluster)
    yield k
    k.close()


@pytest.fixture
def ns(kube: Kube, requests: Requests) -> Iterator[str]:
    name = f"i{next(_ids)}"
    kube.call(kube.core.create_namespace, {"metadata": {"name": name}}, what="create namespace")
    deploy(kube, DeployArgs(name="web", namespace=name, image="nginx:1", replicas=2), ctx())
    yield name
    requests.event_delay = 0.0


def test_a_cached_read_answers_under_cache_only_without_a_request(kube: Kube, requests: Requests, ns: str) -> None:
    live(kube, requests, ns)
    requests.reset()
    with cache_only():
        seen = status(kube, ns)
        page = list_workloads(kube, ListWorkloadsArgs(namespace=ns, kind="Deployment"), ctx())
    assert seen.desired == 2 and seen.source.via == "cache"
    assert [r.name for r in page.workloads] == ["web"] and page.source is not None and page.source.via == "cache"
    assert requests.counts == {}


def test_every_wait_stops_before_it_starts(cluster: SandboxCluster, kube: Kube, requests: Requests, ns: str) -> None:
    live(kube, requests, ns)
    fresh = cached_kube(cluster)  # its client is not built yet: building it reads files
    plain = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)  # the cache off: every read asks the API
    plain.connect()
    try:
        requests.reset()
        for reads in (lambda: status(fresh, ns), lambda: status(plain, ns),
                      lambda: status(kube, ns, "absent"),  # not in the cache: the API's 404 is the thread's to get
                      lambda: rollout_history(kube, RolloutHistoryArgs(name="web", namespace=ns), ctx())):
            with cache_only(), pytest.raises(WouldWait):
                reads()  # ReplicaSets of ns are not watched yet: their first list is the thread's to make
        assert requests.counts == {}
        cache = kube.read_cache
        assert cache is not None and ("replicasets", ns) not in cache.watched
    finally:
        fresh.close()
        plain.close()


def test_a_watch_behind_this_servers_write_stops_at_once_and_the_thread_sees_the_write(
        kube: Kube, requests: Requests, ns: str) -> None:
    requests.event_delay = 0.3  # each event of the watch opened now arrives 0.3 s late
    live(kube, requests, ns)
    scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=5), ctx())
    started = time.monotonic()
    with cache_only(), pytest.raises(WouldWait):
        status(kube, ns)
    assert time.monotonic() - started < 0.2  # looked at, not waited for
    assert status(kube, ns).desired == 5  # outside: waits for the watch, read-your-write as before
