"""The sandbox cluster through the real ``kubernetes`` Python client over HTTP (no mocks)."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from opsgate.sandbox import AGE_COLUMN, Cause, Column, Controller, ResourceType, SandboxCluster

# The client's config helpers and Watch are untyped; its models are Optional everywhere: tests use Any.
new_client_from_dict: Any = config.new_client_from_config_dict
new_client_from_file: Any = config.new_client_from_config
Watch: Any = watch.Watch

T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture()
def api(cluster: SandboxCluster) -> Iterator[Any]:
    cluster.clear_faults()
    api_client = new_client_from_dict(cluster.kubeconfig())
    yield api_client
    cluster.clear_faults()
    api_client.close()


@pytest.fixture()
def apps(api: Any) -> Any:
    return client.AppsV1Api(api)


@pytest.fixture()
def core(api: Any) -> Any:
    return client.CoreV1Api(api)


@pytest.fixture()
def ns(core: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def deployment(name: str, image: str = "nginx:1.0", replicas: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"kubernetes.io/change-cause": f"deploy {image}"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 80}]}]},
            },
            **spec,
        },
    }


def wait_for(fn: Callable[[], T | None], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def body(exc: ApiException) -> dict[str, Any]:
    """The Status body the server sent, as the exception carries it."""
    assert exc.body is not None
    status: dict[str, Any] = json.loads(exc.body)
    return status


def owned_replicasets(apps: Any, ns: str, dep: Any) -> list[Any]:
    return [
        rs
        for rs in apps.list_namespaced_replica_set(ns).items
        if any(ref.uid == dep.metadata.uid for ref in rs.metadata.owner_references or [])
    ]


def revisions(apps: Any, ns: str, name: str) -> dict[str, str]:
    """ReplicaSet name -> revision annotation."""
    dep = apps.read_namespaced_deployment(name, ns)
    return {
        rs.metadata.name: rs.metadata.annotations["deployment.kubernetes.io/revision"]
        for rs in owned_replicasets(apps, ns, dep)
    }


def rolled_out(apps: Any, ns: str, name: str) -> bool:
    d = apps.read_namespaced_deployment(name, ns)
    want = d.spec.replicas
    conditions = {c.type: c for c in d.status.conditions or []}
    return bool(
        d.status.observed_generation == d.metadata.generation
        and (d.status.updated_replicas or 0) == want
        and (d.status.replicas or 0) == want
        and (d.status.available_replicas or 0) == want
        and conditions.get("Progressing") is not None
        and conditions["Progressing"].reason == "NewReplicaSetAvailable"
        and conditions.get("Available") is not None
        and conditions["Available"].status == "True"
    )


# --- objects, lists, errors ---------------------------------------------------------------------


def test_create_and_read_back_has_server_fields(apps: Any, ns: str) -> None:
    created = apps.create_namespaced_deployment(ns, deployment("web"))
    assert created.metadata.uid
    assert created.metadata.resource_version.isdigit()
    assert created.metadata.generation == 1
    assert created.metadata.creation_timestamp is not None
    read = apps.read_namespaced_deployment("web", ns)
    assert read.metadata.uid == created.metadata.uid
    assert read.spec.strategy.type == "RollingUpdate"
    assert read.spec.revision_history_limit == 10
    assert read.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"
    wait_for(lambda: rolled_out(apps, ns, "web"))


def test_list_kind_selector_and_paging(api: Any, apps: Any, ns: str) -> None:
    for i in range(3):
        dep = deployment(f"d{i}")
        dep["metadata"]["labels"] = {"tier": "front" if i < 2 else "back"}
        apps.create_namespaced_deployment(ns, dep)
    raw = api.call_api(
        *api.param_serialize("GET", f"/apis/apps/v1/namespaces/{ns}/deployments", query_params=[("limit", 2)])
    )
    raw.read()
    page = json.loads(raw.data)
    assert page["kind"] == "DeploymentList" and page["apiVersion"] == "apps/v1"
    assert page["metadata"]["resourceVersion"].isdigit()
    assert len(page["items"]) == 2 and page["metadata"]["continue"]
    rest = apps.list_namespaced_deployment(ns, limit=2, _continue=page["metadata"]["continue"])
    assert [d.metadata.name for d in rest.items] == ["d2"]
    front = apps.list_namespaced_deployment(ns, label_selector="tier=front")
    assert sorted(d.metadata.name for d in front.items) == ["d0", "d1"]
    not_front = apps.list_namespaced_deployment(ns, label_selector="tier!=front")
    assert [d.metadata.name for d in not_front.items] == ["d2"]
    assert apps.list_namespaced_deployment(ns, label_selector="tier in (back,x)").items[0].metadata.name == "d2"
    everywhere = apps.list_deployment_for_all_namespaces(field_selector=f"metadata.namespace={ns}")
    assert len(everywhere.items) == 3


def test_not_found_and_already_exists_status_bodies(apps: Any, ns: str) -> None:
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("nope", ns)
    assert missing.value.status == 404
    assert body(missing.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'deployments.apps "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "group": "apps", "kind": "deployments"},
        "code": 404,
    }
    apps.create_namespaced_deployment(ns, deployment("dup"))
    with pytest.raises(ApiException) as exists:
        apps.create_namespaced_deployment(ns, deployment("dup"))
    assert exists.value.status == 409
    assert body(exists.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as no_ns:
        apps.create_namespaced_deployment("no-such-ns", deployment("x"))
    assert no_ns.value.status == 404
    assert body(no_ns.value)["details"]["kind"] == "namespaces"


def test_stale_resource_version_conflicts(apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web"))
    stale = apps.read_namespaced_deployment("web", ns)
    apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": 3}})
    stale.spec.replicas = 5
    with pytest.raises(ApiException) as err:
        apps.replace_namespaced_deployment("web", ns, stale)
    assert err.value.status == 409
    status = body(err.value)
    assert status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]
    assert status["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    # A merge patch carrying a stale resourceVersion conflicts too.
    with pytest.raises(ApiException) as err2:
        apps.patch_namespaced_deployment(
            "web", ns, {"metadata": {"resourceVersion": stale.metadata.resource_version}, "spec": {"replicas": 4}}
        )
    assert err2.value.status == 409
    # A fresh read replaces, as a client's retry-on-conflict loop does: the Deployment controller's status
    # write may land between this read and the replace (under load it did), which a real API server also
    # answers with 409, so a few rounds are allowed.
    for _attempt in range(5):
        fresh = apps.read_namespaced_deployment("web", ns)
        fresh.spec.replicas = 5
        try:
            assert apps.replace_namespaced_deployment("web", ns, fresh).spec.replicas == 5
            break
        except ApiException as exc:
            assert exc.status == 409
    else:
        pytest.fail("a fresh read's replace conflicted five times in a row")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"].__setitem__("replicas", -1), "spec.replicas"),
        (lambda d: d["metadata"].__setitem__("name", "Bad_Name"), "metadata.name"),
        (lambda d: d["spec"]["template"]["spec"].__setitem__("containers", []), "spec.template.spec.containers"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("image"),
            "spec.template.spec.containers[0].image",
        ),
        (lambda d: d["spec"]["selector"].__setitem__("matchLabels", {"app": "other"}), "spec.template.metadata.labels"),
    ],
)
def test_invalid_objects_are_422_with_causes(
    apps: Any, ns: str, mutate: Callable[[dict[str, Any]], Any], field: str
) -> None:
    dep = deployment("web")
    mutate(dep)
    with pytest.raises(ApiException) as err:
        apps.create_namespaced_deployment(ns, dep)
    assert err.value.status == 422
    status = body(err.value)
    assert status["reason"] == "Invalid" and status["kind"] == "Status"
    assert field in [c["field"] for c in status["details"]["causes"]]
    assert status["details"]["kind"] == "Deployment"
    assert apps.list_namespaced_deployment(ns).items == []


def test_invalid_update_and_bad_namespace_name(apps: Any, core: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web"))
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": -1}})
    assert err.value.status == 422
    with pytest.raises(ApiException) as err2:
        apps.patch_namespaced_deployment("web", ns, {"spec": {"selector": {"matchLabels": {"app": "web", "x": "y"}}}})
    assert err2.value.status == 422
    with pytest.raises(ApiException) as err3:
        core.create_namespace({"metadata": {"name": "a.b"}})  # a label, not a subdomain
    assert err3.value.status == 422
    assert body(err3.value)["details"]["causes"][0]["field"] == "metadata.name"


def test_unsupported_patch_type_is_415(apps: Any, ns: str) -> None:
    """A patch type the server does not know (the Python client refuses to send one: raw, through its pool)."""
    apps.create_namespaced_deployment(ns, deployment("web"))
    api_client = apps.api_client
    answer = api_client.rest_client.pool_manager.request(
        "PATCH", f"{api_client.configuration.host}/apis/apps/v1/namespaces/{ns}/deployments/web",
        body=b"spec: {replicas: 3}", headers={"Content-Type": "application/yaml",
                                              **api_client.configuration.api_key})
    assert answer.status == 415
    assert json.loads(answer.data)["reason"] == "UnsupportedMediaType"
    assert apps.read_namespaced_deployment("web", ns).spec.replicas == 2


# --- patches, generation, rollouts ---------------------------------------------------------------


def test_rollout_revisions_rollback_reuse_and_change_cause(apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web", "nginx:1.0"))
    wait_for(lambda: rolled_out(apps, ns, "web"))
    first = revisions(apps, ns, "web")
    assert list(first.values()) == ["1"]
    first_rs = next(iter(first))

    patched = apps.patch_namespaced_deployment(
        "web",
        ns,
        {
            "metadata": {"annotations": {"kubernetes.io/change-cause": "to v2"}},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2.0"}]}}},
        },
    )
    # Strategic merge: the container was merged by name, its ports kept.
    assert patched.spec.template.spec.containers[0].ports[0].container_port == 80
    assert patched.metadata.generation == 2
    wait_for(lambda: rolled_out(apps, ns, "web"))
    second = revisions(apps, ns, "web")
    assert second[first_rs] == "1" and len(second) == 2
    second_rs = next(name for name, rev in second.items() if rev == "2")
    dep = apps.read_namespaced_deployment("web", ns)
    assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    rs2 = apps.read_namespaced_replica_set(second_rs, ns)
    assert rs2.metadata.annotations["kubernetes.io/change-cause"] == "to v2"
    assert rs2.metadata.labels["pod-template-hash"] == second_rs.rsplit("-", 1)[1]
    assert rs2.metadata.owner_references[0].controller is True
    assert rs2.metadata.owner_references[0].uid == dep.metadata.uid
    assert apps.read_namespaced_replica_set(first_rs, ns).spec.replicas == 0

    apps.patch_namespaced_deployment(
        "web",
        ns,
        {
            "metadata": {"annotations": {"kubernetes.io/change-cause": "back to v1"}},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.0"}]}}},
        },
    )
    wait_for(lambda: rolled_out(apps, ns, "web"))
    third = revisions(apps, ns, "web")
    assert third == {first_rs: "3", second_rs: "2"}  # reused and renumbered; "1" is gone
    rs1 = apps.read_namespaced_replica_set(first_rs, ns)
    assert rs1.metadata.annotations["kubernetes.io/change-cause"] == "back to v1"
    assert rs1.metadata.annotations["deployment.kubernetes.io/revision-history"] == "1"
    assert rs1.spec.replicas == 2 and rs1.status.ready_replicas == 2
    dep = apps.read_namespaced_deployment("web", ns)
    assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    assert dep.status.ready_replicas == 2 and dep.status.available_replicas == 2


def test_generation_bumps_on_spec_and_annotations_not_status(apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web"))
    wait_for(lambda: rolled_out(apps, ns, "web"))
    assert apps.read_namespaced_deployment("web", ns).metadata.generation == 1
    apps.patch_namespaced_deployment("web", ns, {"metadata": {"annotations": {"note": "x"}}})
    assert apps.read_namespaced_deployment("web", ns).metadata.generation == 2
    apps.patch_namespaced_deployment("web", ns, {"metadata": {"labels": {"l": "x"}}})
    assert apps.read_namespaced_deployment("web", ns).metadata.generation == 2
    before = apps.read_namespaced_deployment("web", ns)
    # A no-op patch does not consume a resourceVersion.
    same = apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": before.spec.replicas}})
    assert same.metadata.resource_version == before.metadata.resource_version
    # Status on the main resource is ignored; the status subresource changes only status.
    apps.patch_namespaced_deployment("web", ns, {"status": {"replicas": 99}})
    assert apps.read_namespaced_deployment("web", ns).status.replicas != 99
    apps.patch_namespaced_deployment_status("web", ns, {"spec": {"replicas": 7}, "status": {"collisionCount": 1}})
    after = apps.read_namespaced_deployment_status("web", ns)
    assert after.spec.replicas == before.spec.replicas
    assert after.status.collision_count == 1
    assert after.metadata.generation == 2
    after.status.collision_count = 2
    after.spec.paused = True
    replaced = apps.replace_namespaced_deployment_status("web", ns, after)
    assert replaced.status.collision_count == 2 and not replaced.spec.paused


def test_scale_subresource(apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web", replicas=1))
    wait_for(lambda: rolled_out(apps, ns, "web"))
    scale = apps.read_namespaced_deployment_scale("web", ns)
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert scale.spec.replicas == 1 and scale.status.replicas == 1
    assert scale.status.selector == "app=web"
    scaled = apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}})
    assert scaled.spec.replicas == 3
    wait_for(lambda: rolled_out(apps, ns, "web"))
    assert apps.read_namespaced_deployment("web", ns).status.ready_replicas == 3
    assert len(revisions(apps, ns, "web")) == 1  # scaling makes no new ReplicaSet
    current = apps.read_namespaced_deployment_scale("web", ns)
    current.spec.replicas = 2
    assert apps.replace_namespaced_deployment_scale("web", ns, current).spec.replicas == 2
    with pytest.raises(ApiException) as stale:
        apps.replace_namespaced_deployment_scale("web", ns, current)  # same resourceVersion again
    assert stale.value.status == 409
    with pytest.raises(ApiException) as bad:
        apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": -2}})
    assert bad.value.status == 422
    assert body(bad.value)["details"]["causes"][0]["field"] == "spec.replicas"


def test_json_patch_list_body(apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web"))
    out = apps.patch_namespaced_deployment(
        "web",
        ns,
        [
            {"op": "test", "path": "/spec/replicas", "value": 2},
            {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "nginx:9"},
            {"op": "add", "path": "/metadata/labels", "value": {"team": "a"}},
        ],
    )
    assert out.spec.template.spec.containers[0].image == "nginx:9"
    assert out.metadata.labels == {"team": "a"}
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", ns, [{"op": "test", "path": "/spec/replicas", "value": 5}])
    assert err.value.status == 422


def test_dry_run_changes_nothing(apps: Any, ns: str) -> None:
    dry = apps.create_namespaced_deployment(ns, deployment("ghost"), dry_run="All")
    assert dry.metadata.name == "ghost" and dry.spec.revision_history_limit == 10
    assert apps.list_namespaced_deployment(ns).items == []

    apps.create_namespaced_deployment(ns, deployment("web"))
    wait_for(lambda: rolled_out(apps, ns, "web"))
    before = apps.api_client.sanitize_for_serialization(apps.read_namespaced_deployment("web", ns))
    rs_before = sorted(revisions(apps, ns, "web").items())
    preview = apps.patch_namespaced_deployment(
        "web",
        ns,
        {"spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}},
        dry_run="All",
    )
    assert preview.spec.replicas == 5 and preview.metadata.generation == 2
    scaled = apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 9}}, dry_run="All")
    assert scaled.spec.replicas == 9
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": -1}}, dry_run="All")
    assert err.value.status == 422
    whole = apps.read_namespaced_deployment("web", ns)
    whole.spec.replicas = 6
    assert apps.replace_namespaced_deployment("web", ns, whole, dry_run="All").spec.replicas == 6
    apps.delete_namespaced_deployment("web", ns, dry_run="All")
    time.sleep(0.15)
    after = apps.api_client.sanitize_for_serialization(apps.read_namespaced_deployment("web", ns))
    assert after == before
    assert sorted(revisions(apps, ns, "web").items()) == rs_before


def test_revision_history_limit_prunes(apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web", "img:0", replicas=1, revisionHistoryLimit=2))
    for i in range(1, 5):
        wait_for(lambda: rolled_out(apps, ns, "web"))
        apps.patch_namespaced_deployment(
            "web", ns, {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": f"img:{i}"}]}}}}
        )
    wait_for(lambda: rolled_out(apps, ns, "web"))
    wait_for(lambda: sorted(revisions(apps, ns, "web").values()) == ["3", "4", "5"])


def test_paused_deployment_does_not_roll_out(apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web"))
    wait_for(lambda: rolled_out(apps, ns, "web"))
    apps.patch_namespaced_deployment("web", ns, {"spec": {"paused": True}})
    apps.patch_namespaced_deployment(
        "web", ns, {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:new"}]}}}}
    )
    wait_for(
        lambda: any(
            c.reason == "DeploymentPaused" for c in apps.read_namespaced_deployment("web", ns).status.conditions or []
        )
    )
    time.sleep(0.2)
    assert list(revisions(apps, ns, "web").values()) == ["1"]
    apps.patch_namespaced_deployment("web", ns, {"spec": {"paused": False}})
    wait_for(lambda: rolled_out(apps, ns, "web"))
    assert sorted(revisions(apps, ns, "web").values()) == ["1", "2"]


def test_recreate_strategy_and_delete_cascades(apps: Any, core: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web", strategy={"type": "Recreate"}))
    wait_for(lambda: rolled_out(apps, ns, "web"))
    apps.patch_namespaced_deployment(
        "web", ns, {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}}
    )
    wait_for(lambda: rolled_out(apps, ns, "web"))
    assert len(core.list_namespaced_pod(ns).items) == 2
    status = apps.delete_namespaced_deployment("web", ns)  # this client returns the Status as a dict
    assert status["kind"] == "Status" and status["status"] == "Success"
    wait_for(lambda: not apps.list_namespaced_replica_set(ns).items and not core.list_namespaced_pod(ns).items)


def test_watch_streams_events(apps: Any, ns: str) -> None:
    start = apps.list_namespaced_deployment(ns).metadata.resource_version
    apps.create_namespaced_deployment(ns, deployment("web"))
    seen: list[tuple[str, str]] = []
    w = Watch()
    for event in w.stream(
        apps.list_namespaced_deployment,
        ns,
        resource_version=start,
        timeout_seconds=5,
        field_selector="metadata.name=web",
    ):
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].status and event["object"].status.available_replicas == 2:
            w.stop()
    assert seen[0] == ("ADDED", "web")
    assert ("MODIFIED", "web") in seen


def test_namespaces_lifecycle(core: Any, apps: Any) -> None:
    names = [n.metadata.name for n in core.list_namespace().items]
    assert "default" in names
    ns = core.create_namespace({"metadata": {"name": "scratch-ns"}})
    assert ns.status.phase == "Active"
    apps.create_namespaced_deployment("scratch-ns", deployment("web"))
    core.delete_namespace("scratch-ns")
    with pytest.raises(ApiException) as err:
        core.read_namespace("scratch-ns")
    assert err.value.status == 404
    assert apps.list_namespaced_deployment("scratch-ns").items == []
    with pytest.raises(ApiException) as forbidden:
        core.delete_namespace("default")
    assert forbidden.value.status == 403


# --- faults -----------------------------------------------------------------------------------------


def test_injected_errors(cluster: SandboxCluster, apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web"))
    cluster.inject_fault("GET", r"/deployments/web$", status=500)
    with pytest.raises(ApiException) as err:
        apps.read_namespaced_deployment("web", ns)
    assert err.value.status == 500 and body(err.value)["reason"] == "InternalError"
    cluster.inject_fault("PATCH", r"/scale$", status=503, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as unavailable:
            apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}})
        assert unavailable.value.status == 503
    assert apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}}).spec.replicas == 3
    assert apps.read_namespaced_deployment("web", ns).spec.replicas == 3


def test_injected_delay_and_drop(cluster: SandboxCluster, apps: Any, ns: str) -> None:
    apps.create_namespaced_deployment(ns, deployment("web"))
    # times=0: every try, since urllib3 retries an idempotent GET after a read timeout.
    slow = cluster.inject_fault("GET", r"/deployments/web$", delay=0.6, times=0)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        apps.read_namespaced_deployment("web", ns, _request_timeout=0.2)
    assert slow.hits >= 1
    cluster.clear_faults()
    assert time.monotonic() - started < 3
    time.sleep(0.6)
    fault = cluster.inject_fault("PATCH", r"/deployments/web$", drop=True)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": 4}})
    assert fault.hits == 1
    assert apps.read_namespaced_deployment("web", ns).spec.replicas == 2  # dropped before it ran
    cluster.clear_faults()
    assert apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": 4}}).spec.replicas == 4


def test_kubeconfig_file_round_trip(cluster: SandboxCluster, tmp_path: Any) -> None:
    path = tmp_path / "kube" / "config"
    cluster.write_kubeconfig(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    loaded = json.loads(path.read_text())
    assert loaded["current-context"] == "opsgate-sandbox"
    api_client = new_client_from_file(str(path))
    try:
        version = client.VersionApi(api_client).get_code()
        assert version.major == "1"
    finally:
        api_client.close()
    assert copy.deepcopy(cluster.kubeconfig()) == loaded


# --- a custom resource and its controller, registered in a few lines -----------------------------------


def _size_valid(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    size = (obj.get("spec") or {}).get("size", 0)
    return [] if isinstance(size, int) and size >= 0 else [Cause("spec.size", f"Invalid value: {size}: must be >= 0")]


WIDGET = ResourceType(
    group="example.com",
    version="v1",
    plural="widgets",
    kind="Widget",
    short_names=("wd",),
    status_subresource=True,
    validator=_size_valid,
    columns=(Column("Size", "integer", lambda o: (o.get("spec") or {}).get("size", 0)), AGE_COLUMN),
)


class WidgetController(Controller):  # type: ignore[misc,unused-ignore]  # Any when mypy cannot see the editable install
    name = "widget-controller"
    watches = (WIDGET,)

    def reconcile(self, namespace: str, name: str) -> float | None:
        obj = self.s.find(WIDGET, namespace, name)
        if obj is None:
            return None
        want = {"ready": True, "observedGeneration": obj["metadata"]["generation"]}
        if obj.get("status") != want:
            self.s.update(WIDGET, namespace, name, lambda cur: {**cur, "status": want}, subresource="status")
        return None


def test_custom_resource_with_controller(cluster: SandboxCluster, api: Any, ns: str) -> None:
    cluster.register_resource(WIDGET)
    cluster.add_controller(WidgetController())
    custom: Any = client.CustomObjectsApi(api)
    groups = client.ApisApi(api).get_api_versions()
    assert "example.com" in [g.name for g in groups.groups]
    resources = client.CustomObjectsApi(api).get_api_resources("example.com", "v1")
    assert {r.name for r in resources.resources} == {"widgets", "widgets/status"}
    body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}}
    custom.create_namespaced_custom_object("example.com", "v1", ns, "widgets", body)
    wait_for(lambda: (custom.get_namespaced_custom_object("example.com", "v1", ns, "widgets", "w").get("status") or {})
             .get("ready"))
    patched = custom.patch_namespaced_custom_object("example.com", "v1", ns, "widgets", "w", {"spec": {"size": 3}})
    assert patched["spec"]["size"] == 3 and patched["metadata"]["generation"] == 2
    wait_for(lambda: custom.get_namespaced_custom_object("example.com", "v1", ns, "widgets", "w")["status"]
             ["observedGeneration"] == 2)
    listed = custom.list_namespaced_custom_object("example.com", "v1", ns, "widgets")
    assert listed["kind"] == "WidgetList" and len(listed["items"]) == 1
    with pytest.raises(ApiException) as bad:
        custom.patch_namespaced_custom_object("example.com", "v1", ns, "widgets", "w", {"spec": {"size": -1}})
    assert bad.value.status == 422
    with pytest.raises(ApiException) as smp:
        custom.patch_namespaced_custom_object(
            "example.com", "v1", ns, "widgets", "w", {"spec": {"size": 4}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert smp.value.status == 415  # as a real API server answers for custom resources


def test_run_sandbox_until_sigterm_and_nothing_on_stdout(tmp_path: Any) -> None:
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    code = (
        "import sys; from pathlib import Path; from opsgate.sandbox import run_sandbox; "
        "run_sandbox(int(sys.argv[1]), Path(sys.argv[2]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(port), str(kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: kubeconfig.exists() and kubeconfig.stat().st_size > 0, timeout=15)
        api_client = new_client_from_file(str(kubeconfig))
        try:
            assert client.VersionApi(api_client).get_code().major == "1"
            core: Any = client.CoreV1Api(api_client)
            names = [n.metadata.name for n in core.list_namespace().items]
            assert "default" in names
        finally:
            api_client.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out == ""
    assert f"https://127.0.0.1:{port}" in err and f"export KUBECONFIG={kubeconfig}" in err
