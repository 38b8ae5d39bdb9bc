"""The Deployment tools against the sandbox cluster, over real HTTP, with the real ``kubernetes`` client."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from opsgate.sandbox import SandboxCluster
from opsgate.tools.context import CallContext
from opsgate.tools.errors import ToolError
from opsgate.tools.kube import CONFLICT_ATTEMPTS, ClusterUnreachable, Kube, KubeApiError, KubeTarget, guarded_patch
from opsgate.tools.listing import ListWorkloadsArgs, list_workloads
from opsgate.tools.structs.pages import PAGE_BUDGET_BYTES, json_size
from opsgate.tools.structs.patches import DeploySpec, new_deployment, rollback_patch
from opsgate.tools.workload_types import RollbackArgs, ScaleArgs
from opsgate.tools.workloads import (
    DeployArgs,
    DeployResult,
    RolloutHistoryArgs,
    RolloutStatusArgs,
    deploy,
    rollback_deployment,
    rollout_history,
    rollout_status,
    scale_deployment,
)

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def kube(cluster: SandboxCluster) -> Iterator[Kube]:
    k = Kube.from_kubeconfig_dict(cluster.kubeconfig(), sandbox=True)
    yield k
    k.close()


@pytest.fixture
def ns(kube: Kube, cluster: SandboxCluster) -> Iterator[str]:
    """A fresh namespace per test, so tests never see each other's Deployments."""
    name = f"t{next(_ids)}"
    kube.call(kube.core.create_namespace, {"metadata": {"name": name}}, what="create namespace")
    yield name
    cluster.clear_faults()


def ctx(principal: str = "alice") -> CallContext:
    return CallContext(call_id=f"call-{next(_ids):04d}", principal=principal)


def raw(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = kube.call(kube.apps.read_namespaced_deployment, name, ns, what="read")
    return result


def image_of(kube: Kube, ns: str, name: str) -> str:
    return str(raw(kube, ns, name)["spec"]["template"]["spec"]["containers"][0]["image"])


def settled(kube: Kube, ns: str, name: str, timeout: float = 5.0) -> dict[str, Any]:
    """The Deployment once its rollout is done and the controller has stopped writing to it."""
    deadline = time.monotonic() + timeout
    while True:
        status = rollout_status(kube, RolloutStatusArgs(name=name, namespace=ns), ctx())
        if status.done:
            first = raw(kube, ns, name)
            time.sleep(0.15)
            second = raw(kube, ns, name)
            if first == second:
                return second
        assert time.monotonic() < deadline, f"rollout of {ns}/{name} did not settle: {status.summary}"
        time.sleep(0.05)


def deploy_web(kube: Kube, ns: str, image: str, name: str = "web", **kw: Any) -> DeployResult:
    return deploy(kube, DeployArgs(name=name, namespace=ns, image=image, **kw), ctx())


# --------------------------------------------------------------------------- the main scenario


def test_deploy_history_rollback_renumbers(kube: Kube, ns: str) -> None:
    c1, c2 = ctx("alice"), ctx("bob")
    first = deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1.0", replicas=2,
                                    env={"DB_PASSWORD": SecretStr("s3cret-one")}), c1)
    assert (first.action, first.revision, first.images) == ("created", 1, ["nginx:1.0"])
    assert first.env_names == ["DB_PASSWORD"]

    reports: list[tuple[float, float | None, str | None]] = []
    second = deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:2.0",
                                     env={"DB_PASSWORD": SecretStr("s3cret-two")}, wait=True, timeout_seconds=10), c2,
                    progress=lambda p, t, m: reports.append((p, t, m)))
    assert second.action == "updated" and second.revision == 2
    assert second.rollout is not None and second.rollout.done
    changes = {c.path: (c.before, c.after) for c in second.changes}
    assert changes["containers.web.image"] == ("nginx:1.0", "nginx:2.0")
    assert changes["containers.web.env.DB_PASSWORD"] == ("(hidden)", "(hidden, changed)")
    for text in (second.model_dump_json(), json.dumps(second.audit_summary()), first.model_dump_json()):
        assert "s3cret" not in text
    assert reports and reports[-1][0] == reports[-1][1] and "successfully rolled out" in str(reports[-1][2])

    history = rollout_history(kube, RolloutHistoryArgs(name="web", namespace=ns), ctx())
    assert [r.revision for r in history.revisions] == [1, 2]
    assert history.revisions[0].change_cause == f"opsgate: alice call {c1.call_id}"
    assert history.revisions[1].change_cause == f"opsgate: bob call {c2.call_id}"
    assert history.revisions[1].current and history.revisions[1].images == ["nginx:2.0"]

    c3 = ctx("carol")
    undone = rollback_deployment(kube, RollbackArgs(name="web", namespace=ns), c3)
    assert (undone.action, undone.from_revision, undone.to_revision, undone.new_revision) == ("rolled-back", 2, 1, 3)
    assert {c.path: (c.before, c.after) for c in undone.changes}["containers.web.image"] == ("nginx:2.0", "nginx:1.0")
    assert undone.audit_summary()["revision"] == 3
    assert image_of(kube, ns, "web") == "nginx:1.0"
    d = raw(kube, ns, "web")
    assert d["metadata"]["annotations"]["kubernetes.io/change-cause"] == f"opsgate: carol call {c3.call_id}"
    assert "pod-template-hash" not in d["spec"]["template"]["metadata"]["labels"]

    history = rollout_history(kube, RolloutHistoryArgs(name="web", namespace=ns), ctx())
    assert [r.revision for r in history.revisions] == [2, 3]  # revision 1 reused and renumbered to 3
    assert history.current_revision == 3 and history.revisions[1].images == ["nginx:1.0"]
    assert history.revisions[1].change_cause == f"opsgate: carol call {c3.call_id}"

    again = rollback_deployment(kube, RollbackArgs(name="web", namespace=ns, to_revision=2), ctx())
    assert (again.to_revision, again.new_revision) == (2, 4)
    assert image_of(kube, ns, "web") == "nginx:2.0"
    history = rollout_history(kube, RolloutHistoryArgs(name="web", namespace=ns), ctx())
    assert [r.revision for r in history.revisions] == [3, 4]


def test_deploy_same_request_twice_is_unchanged(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1", ports=[80], labels={"team": "web"})
    before = settled(kube, ns, "web")
    again = deploy_web(kube, ns, "nginx:1", ports=[80], labels={"team": "web"})
    assert (again.action, again.changes, again.revision) == ("unchanged", [], 1)
    assert raw(kube, ns, "web")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_deploy_update_keeps_selector_and_sets_fields(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1", env={"A": "1"})
    result = deploy_web(kube, ns, "nginx:1", replicas=3, env={"B": "2"}, ports=[8080],
                        resources={"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}})
    assert result.replicas_before == 1 and result.replicas_after == 3 and result.env_names == ["A", "B"]
    d = raw(kube, ns, "web")
    assert d["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "web"}}
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}}
    assert [p["containerPort"] for p in c["ports"]] == [8080]


def test_rollback_unknown_revision_lists_revisions(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1")
    deploy_web(kube, ns, "nginx:2")
    with pytest.raises(ToolError) as info:
        rollback_deployment(kube, RollbackArgs(name="web", namespace=ns, to_revision=7), ctx())
    assert (info.value.field, info.value.rule) == ("to_revision", "unknown-revision")
    assert "1, 2" in info.value.message


def test_rollback_with_one_revision_and_to_the_current_one(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1")
    with pytest.raises(ToolError) as info:
        rollback_deployment(kube, RollbackArgs(name="web", namespace=ns), ctx())
    assert info.value.rule == "no-previous-revision"
    same = rollback_deployment(kube, RollbackArgs(name="web", namespace=ns, to_revision=1), ctx())
    assert same.action == "unchanged" and "already at revision 1" in same.message


def test_paused_deployment_refused(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1")
    deploy_web(kube, ns, "nginx:2")
    kube.call(kube.apps.patch_namespaced_deployment, "web", ns, {"spec": {"paused": True}},
              _content_type="application/merge-patch+json", what="pause")
    before = raw(kube, ns, "web")
    with pytest.raises(ToolError) as info:
        rollback_deployment(kube, RollbackArgs(name="web", namespace=ns), ctx())
    assert (info.value.rule, info.value.code) == ("paused", "failed_precondition")
    assert raw(kube, ns, "web")["spec"] == before["spec"]


def test_rollback_ignores_replicasets_it_does_not_own(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1")
    settled(kube, ns, "web")
    # A ReplicaSet with matching labels and a higher revision, owned by nobody: never a target.
    stray = {"metadata": {"name": "web-stray", "labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "s"},
                          "annotations": {"deployment.kubernetes.io/revision": "9"}},
             "spec": {"replicas": 0, "selector": {"matchLabels": {"app.kubernetes.io/name": "web",
                                                                  "pod-template-hash": "s"}},
                      "template": {"metadata": {"labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "s"}},
                                   "spec": {"containers": [{"name": "web", "image": "evil:1"}]}}}}
    kube.call(kube.apps.create_namespaced_replica_set, ns, stray, what="create stray")
    history = rollout_history(kube, RolloutHistoryArgs(name="web", namespace=ns), ctx())
    assert [r.revision for r in history.revisions] == [1]
    with pytest.raises(ToolError) as info:
        rollback_deployment(kube, RollbackArgs(name="web", namespace=ns, to_revision=9), ctx())
    assert info.value.rule == "unknown-revision"


# --------------------------------------------------------------------------- dry runs


def test_dry_runs_leave_the_object_byte_for_byte(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1")
    deploy_web(kube, ns, "nginx:2")
    before = settled(kube, ns, "web")

    d = deploy_web(kube, ns, "nginx:3", replicas=4, env={"X": "y"}, dry_run=True)
    assert (d.action, d.dry_run, d.revision, d.images) == ("dry-run", True, None, ["nginx:3"])
    assert {c.path for c in d.changes} >= {"containers.web.image", "replicas", "containers.web.env.X"}
    s = scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=5, dry_run=True), ctx())
    assert (s.action, s.replicas_before, s.replicas_after) == ("dry-run", 1, 5)
    r = rollback_deployment(kube, RollbackArgs(name="web", namespace=ns, dry_run=True), ctx())
    assert (r.action, r.to_revision, r.new_revision) == ("dry-run", 1, None)
    assert [(c.path, c.before, c.after) for c in r.changes] == [("containers.web.image", "nginx:2", "nginx:1")]

    after = raw(kube, ns, "web")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
    assert [x.revision for x in rollout_history(kube, RolloutHistoryArgs(name="web", namespace=ns),
                                                ctx()).revisions] == [1, 2]


def test_dry_run_create_stores_nothing(kube: Kube, ns: str) -> None:
    result = deploy_web(kube, ns, "nginx:1", name="ghost", dry_run=True)
    assert (result.action, result.existed) == ("dry-run", False)
    assert ("containers.ghost.image", None, "nginx:1") in {(c.path, c.before, c.after) for c in result.changes}
    with pytest.raises(KubeApiError) as info:
        raw(kube, ns, "ghost")
    assert info.value.status == 404


# --------------------------------------------------------------------------- scale


def test_scale_within_range(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1")
    up = scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=3), ctx())
    assert (up.action, up.replicas_before, up.replicas_after) == ("scaled", 1, 3)
    assert up.audit_summary()["replicas"] == {"before": 1, "after": 3}
    assert raw(kube, ns, "web")["spec"]["replicas"] == 3
    same = scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=3), ctx())
    assert same.action == "unchanged"
    down = scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=0), ctx())
    assert down.replicas_after == 0
    status = settled(kube, ns, "web")
    assert status["status"].get("replicas", 0) == 0


def test_scale_missing_deployment_is_not_found(kube: Kube, ns: str) -> None:
    with pytest.raises(KubeApiError) as info:
        scale_deployment(kube, ScaleArgs(name="nope", namespace=ns, replicas=1), ctx())
    assert (info.value.status, info.value.rule, info.value.code) == (404, "not-found", "api_error")
    assert "nope" in info.value.message


# --------------------------------------------------------------------------- conflicts and failures


def test_conflict_once_is_retried(kube: Kube, ns: str, cluster: SandboxCluster) -> None:
    deploy_web(kube, ns, "nginx:1")
    deploy_web(kube, ns, "nginx:2")
    fault = cluster.inject_fault("PATCH", rf"/namespaces/{ns}/deployments/web/scale$", status=409, times=1)
    assert scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=2), ctx()).replicas_after == 2
    assert fault.hits == 1
    fault = cluster.inject_fault("PATCH", rf"/namespaces/{ns}/deployments/web$", status=409, times=1)
    assert rollback_deployment(kube, RollbackArgs(name="web", namespace=ns), ctx()).action == "rolled-back"
    assert fault.hits == 1
    assert image_of(kube, ns, "web") == "nginx:1"


def test_conflict_on_every_try_is_reported(kube: Kube, ns: str, cluster: SandboxCluster) -> None:
    deploy_web(kube, ns, "nginx:1")
    deploy_web(kube, ns, "nginx:2")
    cluster.inject_fault("PATCH", rf"/namespaces/{ns}/deployments/web/scale$", status=409, times=CONFLICT_ATTEMPTS)
    with pytest.raises(KubeApiError) as info:
        scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=2), ctx())
    assert (info.value.status, info.value.rule, info.value.code) == (409, "conflict", "api_error")
    assert "nothing was applied" in info.value.message and f"{CONFLICT_ATTEMPTS} times in a row" in info.value.message
    cluster.inject_fault("PATCH", rf"/namespaces/{ns}/deployments/web$", status=409, times=CONFLICT_ATTEMPTS)
    with pytest.raises(KubeApiError) as info:
        rollback_deployment(kube, RollbackArgs(name="web", namespace=ns), ctx())
    assert info.value.status == 409
    assert image_of(kube, ns, "web") == "nginx:2" and raw(kube, ns, "web")["spec"]["replicas"] == 1


def test_a_rollback_patch_outlives_status_writes_and_a_stale_one_is_refused(kube: Kube, ns: str) -> None:
    """Issue 15 item 12: the guard is what the patch was computed from (generation), not the resourceVersion.

    A status write (what the Deployment controller makes all through a rollout) changes the
    resourceVersion and leaves the patch valid; a spec change (someone scales) makes it stale, and
    the server refuses it with the bare 422 a failed JSON Patch ``test`` gets, which
    guarded_patch reads back and reports as a conflict, with nothing applied.
    """
    deploy_web(kube, ns, "nginx:1")
    deploy_web(kube, ns, "nginx:2")
    rs = kube.call(kube.apps.list_namespaced_replica_set, ns, what="list")["items"]
    first = next(r for r in rs if r["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1")
    read = raw(kube, ns, "web")
    kube.call(kube.apps.patch_namespaced_deployment_status, "web", ns, {"status": {"collisionCount": 7}},
              what="a status write")
    assert raw(kube, ns, "web")["metadata"]["resourceVersion"] != read["metadata"]["resourceVersion"]
    guarded_patch(kube, kube.apps.patch_namespaced_deployment, "web", ns, ops=rollback_patch(read, first, "x"),
                  reread=lambda: raw(kube, ns, "web"), what="rollback", audit_id=None, dry_run=None)
    assert image_of(kube, ns, "web") == "nginx:1"

    stale = raw(kube, ns, "web")
    rs = kube.call(kube.apps.list_namespaced_replica_set, ns, what="list")["items"]
    second = next(r for r in rs if r["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2")
    scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=2), ctx())  # someone else changes the spec
    with pytest.raises(KubeApiError) as info:
        kube.call(kube.apps.patch_namespaced_deployment, "web", ns, rollback_patch(stale, second, "x"),
                  _content_type="application/json-patch+json", what="stale rollback")
    assert (info.value.status, info.value.rule) == (422, "invalid")  # all a real API server says
    with pytest.raises(KubeApiError) as info:
        guarded_patch(kube, kube.apps.patch_namespaced_deployment, "web", ns, ops=rollback_patch(stale, second, "x"),
                      reread=lambda: raw(kube, ns, "web"), what="stale rollback", audit_id=None, dry_run=None)
    assert info.value.rule == "conflict" and "nothing was applied" in info.value.message
    assert image_of(kube, ns, "web") == "nginx:1"


def test_injected_500_is_a_clear_api_error(kube: Kube, ns: str, cluster: SandboxCluster) -> None:
    deploy_web(kube, ns, "nginx:1")
    cluster.inject_fault("GET", rf"/namespaces/{ns}/deployments/web$", status=500, times=1)
    call = ctx()
    with pytest.raises(KubeApiError) as info:
        rollout_status(kube, RolloutStatusArgs(name="web", namespace=ns), call)
    err = info.value
    assert (err.code, err.status, err.rule) == ("api_error", 500, "server-error")
    assert err.audit_id == call.call_id  # our call id went out as Audit-ID and came back
    assert "500" in err.message and f"{ns}/web" in err.message


def test_deploy_into_a_missing_namespace(kube: Kube) -> None:
    with pytest.raises(KubeApiError) as info:
        deploy(kube, DeployArgs(name="web", namespace="no-such-ns", image="nginx:1"), ctx())
    assert info.value.status == 404 and "no-such-ns" in info.value.message


def test_slow_cluster_fails_in_seconds(cluster: SandboxCluster, ns: str) -> None:
    quick = Kube.from_kubeconfig_dict(cluster.kubeconfig(), request_timeout=(1.0, 0.3))
    quick.call(quick.apps.list_namespaced_deployment, ns, what="warm up")
    cluster.inject_fault("GET", rf"/namespaces/{ns}/deployments/slow$", delay=1.5, times=1)
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable) as info:
        rollout_status(quick, RolloutStatusArgs(name="slow", namespace=ns), ctx())
    assert time.monotonic() - started < 1.2
    assert (info.value.code, info.value.rule) == ("cluster_unreachable", "timeout")
    assert cluster.url in info.value.message and "0.3 s" in info.value.message
    quick.close()


def test_unreachable_and_dropped_connections(cluster: SandboxCluster, ns: str, kube: Kube) -> None:
    nowhere = Kube(KubeTarget(sandbox_url="http://127.0.0.1:9"), request_timeout=(1.0, 1.0))
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable) as info:
        list_workloads(nowhere, ListWorkloadsArgs(namespace="default"), ctx())
    assert time.monotonic() - started < 3
    assert info.value.rule == "connect-failed" and "http://127.0.0.1:9" in info.value.message
    assert nowhere.describe()["server"] == "http://127.0.0.1:9"

    deploy_web(kube, ns, "nginx:1")
    cluster.inject_fault("PATCH", rf"/namespaces/{ns}/deployments/web/scale$", drop=True, times=1)
    with pytest.raises(ClusterUnreachable) as info:
        scale_deployment(kube, ScaleArgs(name="web", namespace=ns, replicas=2), ctx())
    assert info.value.rule == "connection-dropped"
    assert "may or may not have been applied" in info.value.message


def test_bad_kubeconfig_is_a_config_error() -> None:
    broken = Kube.from_kubeconfig_dict({"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": []})
    assert "error" in broken.describe()
    with pytest.raises(ToolError) as info:
        broken.connect()
    assert info.value.code == "cluster_config"


# --------------------------------------------------------------------------- listing


def test_list_workloads_paginates_under_the_byte_budget(kube: Kube, ns: str) -> None:
    names = [f"app-{i:03d}-{'x' * 30}" for i in range(60)]
    for name in names:
        body = new_deployment(DeploySpec(name=name, image=f"ghcr.io/acme/{name[:7]}:1.0.0"), ns, "seed")
        kube.call(kube.apps.create_namespaced_deployment, ns, body, what="seed")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = list_workloads(kube, ListWorkloadsArgs(namespace=ns, cursor=cursor), ctx())
        pages += 1
        assert json_size(page.model_dump(mode="json")) <= PAGE_BUDGET_BYTES
        assert page.total == 60 and page.workloads
        seen.extend(row.name for row in page.workloads)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages > 1 and seen == sorted(names)
    row = list_workloads(kube, ListWorkloadsArgs(namespace=ns, kind="Deployment"), ctx()).workloads[0]
    assert row.kind == "Deployment" and row.desired == 1 and row.images == ["ghcr.io/acme/app-000:1.0.0"]
    assert row.age_seconds is not None and row.age_seconds >= 0
    with pytest.raises(ToolError) as info:
        list_workloads(kube, ListWorkloadsArgs(namespace="default", cursor=page.next_cursor or "bogus"), ctx())
    assert info.value.rule == "invalid-cursor"


def test_rollout_status_fields(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1", replicas=2, wait=True, timeout_seconds=10)
    status = rollout_status(kube, RolloutStatusArgs(name="web", namespace=ns), ctx())
    assert status.done and status.summary == 'deployment "web" successfully rolled out'
    assert (status.desired, status.updated, status.available, status.revision) == (2, 2, 2, 1)
    assert status.generation == status.observed_generation
    assert {c.type for c in status.conditions} == {"Available", "Progressing"}
    assert all(len(c.message or "") <= 256 for c in status.conditions)


def test_wait_timeout_says_the_rollout_goes_on(kube: Kube, ns: str) -> None:
    deploy_web(kube, ns, "nginx:1")
    # Paused, the controller never rolls the new template out: the wait ends with a clear timeout, not a hang.
    kube.call(kube.apps.patch_namespaced_deployment, "web", ns, {"spec": {"paused": True}},
              _content_type="application/merge-patch+json", what="pause")
    reports: list[str | None] = []
    started = time.monotonic()
    with pytest.raises(ToolError) as info:
        deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:2", wait=True, timeout_seconds=1), ctx(),
               progress=lambda p, t, m: reports.append(m))
    assert 1.0 <= time.monotonic() - started < 2.5
    assert (info.value.code, info.value.rule) == ("timeout", "rollout-timeout")
    assert "still going after 1 s" in info.value.message and "0 out of 1 new replicas" in info.value.message
    assert reports and all(r and "successfully" not in r for r in reports)
    assert image_of(kube, ns, "web") == "nginx:2"  # the change itself was applied


def test_a_failing_progress_callback_does_not_fail_the_call(kube: Kube, ns: str) -> None:
    def broken(p: float, t: float | None, m: str | None) -> None:
        raise RuntimeError("client went away")

    result = deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1", wait=True, timeout_seconds=10),
                    ctx(), progress=broken)
    assert result.rollout is not None and result.rollout.done
