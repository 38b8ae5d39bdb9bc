"""drift's comparison (pure): only the fields Git sets, keyed lists entry by entry, quantities by value,
env values hidden, who changed a field from managedFields, an application's objects only when asked."""

from __future__ import annotations

import copy
from typing import Any

from opsgate.tools.structs.drift import compare, field_managers, git_fields, render_segments
from opsgate.tools.structs.objects import change_cause, opsgate_call_of

KINDS = ("Deployment", "InferenceService")

GIT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"team": "a"}},
    "spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "web", "image": "web:1", "env": [{"name": "TOKEN", "value": "s3cret"}],
         "resources": {"limits": {"cpu": "0.5"}}, "ports": [{"containerPort": 80}]}]}}},
}


def live_of(git: dict[str, Any], **annotations: str) -> dict[str, Any]:
    live = copy.deepcopy(git)
    live["metadata"].update(namespace="shop", uid="u", resourceVersion="9", annotations=annotations,
                            labels={**git["metadata"]["labels"], "pod-template-hash": "x"})
    live["spec"]["progressDeadlineSeconds"] = 600  # a default Git does not set
    c = live["spec"]["template"]["spec"]["containers"][0]
    c["resources"]["limits"]["cpu"] = "500m"  # the API server's canonical form
    c["ports"][0]["protocol"] = "TCP"
    c["terminationMessagePath"] = "/dev/termination-log"
    live["status"] = {"replicas": 2}
    return live


def test_a_live_object_as_git_says_is_in_sync_despite_defaults() -> None:
    [result], only_live = compare([GIT], [live_of(GIT)], "shop", KINDS)
    assert result.state == "in-sync" and result.fields == [] and only_live == []


def test_each_changed_field_names_its_manager_and_hides_env_values() -> None:
    live = live_of(GIT, **{"kubernetes.io/change-cause": change_cause("alice", "ab" * 16)})
    c = live["spec"]["template"]["spec"]["containers"][0]
    c["image"], c["env"][0]["value"], live["spec"]["replicas"] = "web:hotfix", "other", 5
    live["metadata"]["managedFields"] = [
        {"manager": "argocd-controller", "operation": "Apply", "time": "2026-01-01T00:00:00Z",
         "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
             'k:{"name":"web"}': {"f:image": {}, "f:env": {'k:{"name":"TOKEN"}': {"f:value": {}}}}}}}}}},
        {"manager": "kubectl-set", "operation": "Update", "time": "2026-01-02T00:00:00Z",
         "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {'k:{"name":"web"}': {"f:image": {}}}}}}}},
        {"manager": "kubectl", "operation": "Update", "subresource": "scale", "time": "2026-01-03T00:00:00Z",
         "fieldsV1": {"f:spec": {"f:replicas": {}}}},
    ]
    [result], _ = compare([GIT], [live], "shop", KINDS)
    fields = {f.path: f for f in result.fields}
    assert set(fields) == {"spec.replicas", "spec.template.spec.containers[name=web].image",
                           "spec.template.spec.containers[name=web].env[name=TOKEN].value"}
    image = fields["spec.template.spec.containers[name=web].image"]
    assert (image.changed_by, image.changed_at) == (["kubectl-set", "argocd-controller"], "2026-01-02T00:00:00Z")
    assert fields["spec.replicas"].changed_by[0] == "kubectl"
    env = fields["spec.template.spec.containers[name=web].env[name=TOKEN].value"]
    assert "s3cret" not in str(env) and "other" not in str(env)
    assert result.opsgate_call_id == "ab" * 16


def test_missing_stray_and_an_applications_scope() -> None:
    other = copy.deepcopy(GIT)
    other["metadata"]["name"] = "api"
    owned = live_of(GIT, **{"argocd.argoproj.io/tracking-id": "shop-app:apps/Deployment:shop/web"})
    owned["kind"] = "Deployment"
    stray = live_of(GIT)
    stray["metadata"]["name"] = "stray"
    results, only_live = compare([GIT, other], [owned, stray], "shop", KINDS)
    assert [(r.name, r.state) for r in results] == [("web", "in-sync"), ("api", "missing")]
    assert only_live == ["Deployment/stray"]
    scoped, scoped_live = compare([GIT, other], [owned, stray], "shop", KINDS, app="shop-app")
    assert [r.name for r in scoped] == ["web", "api"] and scoped_live == []
    none, _ = compare([GIT], [owned], "shop", KINDS, app="another-app")
    assert none == []
    elsewhere, _ = compare([{**GIT, "metadata": {**GIT["metadata"], "namespace": "prod"}}], [owned], "shop", KINDS)
    assert elsewhere == []


def test_paths_and_causes() -> None:
    assert ("metadata", "labels", "team") in git_fields(GIT)
    path = ("metadata", "labels", "app.kubernetes.io/name")
    assert render_segments(path) == 'metadata.labels["app.kubernetes.io/name"]'
    assert field_managers({"metadata": {}}, ("spec",)) == ([], None)
    assert opsgate_call_of("kubectl scale") is None and opsgate_call_of(None) is None
