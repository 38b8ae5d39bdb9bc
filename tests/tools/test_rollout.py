"""Pure decisions behind the Deployment tools: no cluster, no kubernetes client."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from opsgate.tools.errors import ToolError
from opsgate.tools.kube import api_error
from opsgate.tools.listing import ListWorkloadsArgs
from opsgate.tools.structs.diff import HIDDEN, HIDDEN_CHANGED, deployment_view, diff_deployments, render_path
from opsgate.tools.structs.names import (
    env_name_problem,
    image_problem,
    image_registry,
    label_key_problem,
    label_value_problem,
)
from opsgate.tools.structs.objects import (
    CHANGE_CAUSE_ANNOTATION,
    HASH_LABEL,
    NAME_LABEL,
    REVISION_ANNOTATION,
    change_cause,
    owned_by,
    revision_of,
    selector_string,
)
from opsgate.tools.structs.pages import decode_cursor, encode_cursor, fit_page, json_size
from opsgate.tools.structs.patches import (
    DeploySpec,
    choose_rollback_revision,
    deploy_is_noop,
    new_deployment,
    rollback_annotations,
    rollback_patch,
    update_patch,
    updated_deployment,
)
from opsgate.tools.structs.quantities import parse_quantity
from opsgate.tools.structs.status import rollout_progress, rollout_state
from opsgate.tools.structs.templates import strip_hash, templates_equal
from opsgate.tools.workload_types import RollbackArgs, ScaleArgs
from opsgate.tools.workloads import DeployArgs
from opsgate.vocab.names import dns1123_problem


def template(image: str = "nginx:1", *, hash_label: str | None = None, env: list[dict[str, Any]] | None = None,
             **extra: Any) -> dict[str, Any]:
    labels = {NAME_LABEL: "web"}
    if hash_label:
        labels[HASH_LABEL] = hash_label
    container: dict[str, Any] = {"name": "web", "image": image}
    if env is not None:
        container["env"] = env
    return {"metadata": {"labels": labels}, "spec": {"containers": [container], **extra}}


def deployment(image: str = "nginx:1", **kw: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": "42", "generation": 3,
                     "labels": {NAME_LABEL: "web"},
                     "annotations": {REVISION_ANNOTATION: "2", CHANGE_CAUSE_ANNOTATION: "old cause",
                                     "team/owner": "ops"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {NAME_LABEL: "web"}}, "template": template(image, **kw)},
        "status": {"observedGeneration": 3},
    }


# --------------------------------------------------------------------------- rollback target


@pytest.mark.parametrize(
    ("revisions", "to_revision", "expected"),
    [
        ([1, 2, 3], None, 2),  # second-highest
        ([3, 1, 2], None, 2),  # order does not matter
        ([5, 9], None, 5),
        ([2, 7, 0, -1], None, 2),  # unnumbered ReplicaSets are ignored
        ([1, 2, 3], 1, 1),
        ([1, 2, 3], 3, 3),  # the current one: the caller then finds the template equal (no-op)
    ],
)
def test_choose_rollback_revision(revisions: list[int], to_revision: int | None, expected: int) -> None:
    assert choose_rollback_revision(revisions, to_revision) == expected


def test_unknown_revision_lists_the_revisions_there_are() -> None:
    with pytest.raises(ToolError) as info:
        choose_rollback_revision([3, 2, 4], 1)
    err = info.value
    assert (err.code, err.field, err.rule) == ("invalid_arguments", "to_revision", "unknown-revision")
    assert "revision 1 not found" in err.message and "2, 3, 4" in err.message


@pytest.mark.parametrize("revisions", [[1], [], [0]])
def test_no_previous_revision(revisions: list[int]) -> None:
    with pytest.raises(ToolError) as info:
        choose_rollback_revision(revisions, None)
    assert info.value.rule == "no-previous-revision"


def test_unknown_revision_with_no_revisions_at_all() -> None:
    with pytest.raises(ToolError, match="revisions there are: none"):
        choose_rollback_revision([], 2)


# --------------------------------------------------------------------------- templates


def test_templates_equal_ignores_pod_template_hash() -> None:
    assert templates_equal(template(hash_label="abc123"), template())
    assert templates_equal(template(hash_label="abc"), template(hash_label="def"))
    assert not templates_equal(template("nginx:1"), template("nginx:2"))


def test_templates_equal_treats_null_and_empty_alike() -> None:
    a = template()
    b = copy.deepcopy(a)
    b["metadata"]["creationTimestamp"] = None
    b["spec"]["containers"][0]["resources"] = {}
    b["spec"]["volumes"] = []
    assert templates_equal(a, b)
    b["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    assert not templates_equal(a, b)


def test_templates_equal_compares_quantities_by_value() -> None:
    a, b = template(), template()
    a["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1000m", "memory": "1Gi"}}
    b["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "1024Mi"}}
    assert templates_equal(a, b)
    b["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "2"
    assert not templates_equal(a, b)


def test_an_empty_env_value_is_written_as_the_api_returns_it() -> None:
    d = new_deployment(DeploySpec(name="web", image="nginx:1", env={"EMPTY": ""}), "ns", "c")
    assert d["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "EMPTY"}]


def test_strip_hash_drops_an_emptied_label_map_and_leaves_the_input_alone() -> None:
    t = {"metadata": {"labels": {HASH_LABEL: "x"}}, "spec": {}}
    assert strip_hash(t) == {"metadata": {}, "spec": {}}
    assert t["metadata"]["labels"] == {HASH_LABEL: "x"}


def test_rollback_patch_is_kubectls_json_patch_guarded_by_generation() -> None:
    d = deployment("nginx:2")
    rs = {"metadata": {"annotations": {REVISION_ANNOTATION: "1", CHANGE_CAUSE_ANNOTATION: "first",
                                       "deployment.kubernetes.io/desired-replicas": "2", "note": "x"}},
          "spec": {"template": template("nginx:1", hash_label="h1")}}
    ops = rollback_patch(d, rs, "opsgate: alice call c9")
    # Issue 15 item 12: generation (spec and annotations), never the resourceVersion that status writes change.
    assert ops[0] == {"op": "test", "path": "/metadata/generation", "value": 3}
    assert ops[1]["path"] == "/spec/template"
    assert HASH_LABEL not in ops[1]["value"]["metadata"]["labels"]
    assert ops[1]["value"]["spec"]["containers"][0]["image"] == "nginx:1"
    annotations = ops[2]["value"]
    assert (ops[2]["op"], ops[2]["path"]) == ("add", "/metadata/annotations")
    # kubectl: bookkeeping annotations from the Deployment, the rest from the ReplicaSet; then our cause.
    assert annotations == {REVISION_ANNOTATION: "2", "note": "x", CHANGE_CAUSE_ANNOTATION: "opsgate: alice call c9"}
    assert rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL] == "h1"  # input untouched


def test_rollback_annotations_drop_deployment_extras_like_kubectl() -> None:
    out = rollback_annotations(deployment(), {"metadata": {}}, "cause")
    assert out == {REVISION_ANNOTATION: "2", CHANGE_CAUSE_ANNOTATION: "cause"}


def test_owned_by_selects_by_uid_not_selector() -> None:
    mine = {"metadata": {"name": "a", "ownerReferences": [{"uid": "u1"}]}}
    other = {"metadata": {"name": "b", "ownerReferences": [{"uid": "u2"}]}}
    orphan = {"metadata": {"name": "c"}}
    assert [meta["metadata"]["name"] for meta in owned_by([mine, other, orphan], "u1")] == ["a"]


def test_selector_string() -> None:
    assert selector_string({"matchLabels": {"b": "2", "a": "1"}}) == "a=1,b=2"
    assert selector_string({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "x"}]}) is None
    assert selector_string(None) is None


def test_revision_of() -> None:
    assert revision_of(deployment()) == 2
    assert revision_of({"metadata": {"annotations": {REVISION_ANNOTATION: "x"}}}) == 0
    assert revision_of({}) == 0


# --------------------------------------------------------------------------- deploy building


def test_new_deployment_fixes_selector_container_name_and_cause() -> None:
    spec = DeploySpec(name="web", image="nginx:1", env={"A": "1"}, ports=[8080], labels={"team": "x"},
                      resources={"limits": {"cpu": "1"}})
    d = new_deployment(spec, "prod", change_cause("alice", "c1"))
    assert d["spec"]["selector"] == {"matchLabels": {NAME_LABEL: "web"}}
    assert d["spec"]["replicas"] == 1
    assert d["metadata"]["annotations"][CHANGE_CAUSE_ANNOTATION] == "opsgate: alice call c1"
    tmpl = d["spec"]["template"]
    assert tmpl["metadata"]["labels"] == {NAME_LABEL: "web", "team": "x"}
    (c,) = tmpl["spec"]["containers"]
    assert c == {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}],
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}], "resources": {"limits": {"cpu": "1"}}}


def test_updated_deployment_merges_env_and_keeps_the_selector() -> None:
    cur = deployment(env=[{"name": "KEEP", "value": "k"}, {"name": "A", "value": "old"},
                          {"name": "REF", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}])
    cur["spec"]["template"]["metadata"]["labels"][HASH_LABEL] = "zz"
    new = updated_deployment(cur, DeploySpec(name="web", image="nginx:2", env={"A": "new", "B": "b"},
                                             labels={"team": "x"}, replicas=5))
    env = new["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env] == ["KEEP", "A", "REF", "B"]
    assert env[1]["value"] == "new"
    assert new["spec"]["selector"] == cur["spec"]["selector"]
    assert new["spec"]["replicas"] == 5
    assert HASH_LABEL not in new["spec"]["template"]["metadata"]["labels"]
    assert new["spec"]["template"]["metadata"]["labels"]["team"] == "x"
    assert new["metadata"]["labels"]["team"] == "x"
    assert cur["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1"  # input untouched


def test_deploy_noop_and_update_patch() -> None:
    cur = deployment()
    same = updated_deployment(cur, DeploySpec(name="web", image="nginx:1"))
    assert deploy_is_noop(cur, same)
    new = updated_deployment(cur, DeploySpec(name="web", image="nginx:2", replicas=3))
    assert not deploy_is_noop(cur, new)
    ops = update_patch(cur, new, "cause")
    assert ops[0] == {"op": "test", "path": "/metadata/generation", "value": 3}
    assert all(op["path"] != "/metadata/resourceVersion" for op in ops)
    paths = [op["path"] for op in ops]
    assert "/spec/replicas" in paths
    assert "/metadata/annotations/kubernetes.io~1change-cause" in paths  # JSON-pointer escaped
    no_annotations = copy.deepcopy(cur)
    del no_annotations["metadata"]["annotations"]
    assert update_patch(no_annotations, new, "c")[-1] == {
        "op": "add", "path": "/metadata/annotations", "value": {CHANGE_CAUSE_ANNOTATION: "c"}}


def test_deploy_refuses_an_ambiguous_container() -> None:
    cur = deployment()
    cur["spec"]["template"]["spec"]["containers"] = [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]
    with pytest.raises(ToolError) as info:
        updated_deployment(cur, DeploySpec(name="web", image="nginx:2"))
    assert info.value.rule == "ambiguous-container"
    single = deployment()
    single["spec"]["template"]["spec"]["containers"][0]["name"] = "main"
    out = updated_deployment(single, DeploySpec(name="web", image="nginx:2"))
    assert out["spec"]["template"]["spec"]["containers"][0] == {"name": "main", "image": "nginx:2"}


# --------------------------------------------------------------------------- diff


def test_diff_shows_images_and_replicas() -> None:
    after = deployment("nginx:2")
    after["spec"]["replicas"] = 4
    changes = {c.path: (c.before, c.after) for c in diff_deployments(deployment("nginx:1"), after)}
    assert changes == {"containers.web.image": ("nginx:1", "nginx:2"), "replicas": (2, 4)}
    assert diff_deployments(deployment(), deployment()) == []


def test_diff_never_shows_env_values() -> None:
    ref = {"name": "REF", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}
    before = deployment(env=[{"name": "A", "value": "s3cret-a"}, {"name": "GONE", "value": "s3cret-g"}, ref])
    after = deployment(env=[{"name": "A", "value": "s3cret-b"}, {"name": "NEW", "value": "s3cret-n"},
                            {"name": "REF", "value": "s3cret-r"}])
    changes = {c.path: (c.before, c.after) for c in diff_deployments(before, after)}
    assert changes == {
        "containers.web.env.A": (HIDDEN, HIDDEN_CHANGED),
        "containers.web.env.GONE": (HIDDEN, None),
        "containers.web.env.NEW": (None, HIDDEN),
        "containers.web.env.REF": ("secretKeyRef db/pw", HIDDEN),
    }
    assert "s3cret" not in repr(changes)


def test_diff_of_a_create_and_of_other_template_fields() -> None:
    created = diff_deployments(None, deployment())
    assert "template_other" not in {c.path for c in created}
    assert ("containers.web.image", None, "nginx:1") in {(c.path, c.before, c.after) for c in created}
    other = deployment(volumes=[{"name": "v", "emptyDir": {}}])
    assert [c.path for c in diff_deployments(deployment(), other)] == ["template_other"]


def test_render_path_quotes_keys_with_dots_and_slashes() -> None:
    assert render_path(["labels", "app.kubernetes.io/name"]) == 'labels["app.kubernetes.io/name"]'
    assert render_path(["containers", "web", "image"]) == "containers.web.image"


def test_view_is_small() -> None:
    assert set(deployment_view(deployment())) == {"replicas", "paused", "labels", "template_labels", "containers",
                                                  "template_other"}


# --------------------------------------------------------------------------- rollout status


def status_deployment(generation: int = 2, observed: int = 2, desired: int = 3, replicas: int = 3,
                      updated: int = 3, available: int = 3, conditions: list[dict[str, str]] | None = None
                      ) -> dict[str, Any]:
    return {"metadata": {"name": "web", "generation": generation}, "spec": {"replicas": desired},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                       "availableReplicas": available, "conditions": conditions or []}}


@pytest.mark.parametrize(
    ("kw", "summary", "done"),
    [
        ({"observed": 1}, "Waiting for deployment spec update to be observed...", False),
        ({"updated": 1}, 'Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been '
                         "updated...", False),
        ({"replicas": 5}, 'Waiting for deployment "web" rollout to finish: 2 old replicas are pending '
                          "termination...", False),
        ({"available": 1}, 'Waiting for deployment "web" rollout to finish: 1 of 3 updated replicas are '
                           "available...", False),
        ({}, 'deployment "web" successfully rolled out', True),
    ],
)
def test_rollout_state_like_kubectl(kw: dict[str, Any], summary: str, done: bool) -> None:
    state = rollout_state(status_deployment(**kw))
    assert (state.summary, state.done, state.failed) == (summary, done, False)


def test_rollout_state_progress_deadline() -> None:
    cond = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    state = rollout_state(status_deployment(updated=1, conditions=[cond]))
    assert state.failed and not state.done and "exceeded its progress deadline" in state.summary


def test_rollout_progress_is_total_only_when_done() -> None:
    assert rollout_progress(3, 3, 3, 3) == (9.0, 9.0)
    assert rollout_progress(3, 6, 3, 0)[0] < 9
    assert rollout_progress(3, 4, 3, 3)[0] < 9
    assert rollout_progress(0, 0, 0, 0) == (3.0, 3.0)


# --------------------------------------------------------------------------- pagination


def test_fit_page_respects_the_budget() -> None:
    assert fit_page([100] * 100, 4096) == 40  # 40*100 + 39 commas = 4039; one more is 4140
    assert fit_page([5000, 10], 4096) == 1  # an oversized row still makes progress
    assert fit_page([], 4096) == 0
    assert fit_page([10, 10], 4096) == 2


def test_json_size_counts_utf8_bytes() -> None:
    assert json_size({"a": "é"}) == len('{"a":"é"}'.encode())


def test_cursor_round_trip_and_refusals() -> None:
    cursor = encode_cursor("prod", "Deployment", "web-17")
    assert decode_cursor(cursor, "prod", "Deployment") == "web-17"
    for bad, ns, kind in [("garbage!!", "prod", None), (cursor, "other", "Deployment"), (cursor, "prod", None),
                          (encode_cursor("prod", None, "x")[:-3], "prod", None), ("e30", "prod", None)]:
        with pytest.raises(ToolError) as info:
            decode_cursor(bad, ns, kind)
        assert (info.value.field, info.value.rule) == ("cursor", "invalid-cursor")


# --------------------------------------------------------------------------- names and values


@pytest.mark.parametrize(
    ("value", "label_ok", "subdomain_ok"),
    [
        ("web", True, True),
        ("a", True, True),
        ("web-1", True, True),
        ("0web", True, True),
        ("web.example", False, True),
        ("a" * 63, True, True),
        ("a" * 64, False, True),
        ("a" * 253, False, True),
        ("a" * 254, False, False),
        ("", False, False),
        ("Web", False, False),
        ("-web", False, False),
        ("web-", False, False),
        ("web_1", False, False),
        ("web..x", False, False),
        (".web", False, False),
        ("we b", False, False),
        ("web\n", False, False),
        ("wéb", False, False),
    ],
)
def test_dns1123_table(value: str, label_ok: bool, subdomain_ok: bool) -> None:
    assert (dns1123_problem(value, "label") is None) is label_ok
    assert (dns1123_problem(value, "subdomain") is None) is subdomain_ok


@pytest.mark.parametrize(
    ("key", "ok"),
    [("team", True), ("app.kubernetes.io/name", True), ("example.com/a_b.c-d", True), ("a/b/c", False),
     ("/x", False), ("Example.com/x", False), ("x" * 64, False), ("-x", False), ("", False)],
)
def test_label_keys(key: str, ok: bool) -> None:
    assert (label_key_problem(key) is None) is ok


@pytest.mark.parametrize(("value", "ok"), [("", True), ("v1.2_3-x", True), ("x" * 64, False), ("a b", False),
                                           ("-a", False)])
def test_label_values(value: str, ok: bool) -> None:
    assert (label_value_problem(value) is None) is ok


@pytest.mark.parametrize(
    ("image", "ok", "registry"),
    [
        ("nginx", True, "docker.io"),
        ("nginx:1.25", True, "docker.io"),
        ("library/nginx:1.25-alpine", True, "docker.io"),
        ("ghcr.io/acme/web:1.4.2", True, "ghcr.io"),
        ("localhost:5000/web", True, "localhost:5000"),
        ("registry.example.com:443/team/app@sha256:" + "a" * 64, True, "registry.example.com:443"),
        ("Nginx", False, None),
        ("nginx:1 ", False, None),
        ("nginx :1", False, None),
        ("nginx;rm -rf", False, None),
        ("", False, None),
        ("nginx:", False, None),
        ("nginx@sha256:abc", False, None),
        ("a" * 600, False, None),
    ],
)
def test_images(image: str, ok: bool, registry: str | None) -> None:
    assert (image_problem(image) is None) is ok
    if registry is not None:
        assert image_registry(image) == registry


@pytest.mark.parametrize(
    ("text", "value"),
    [("250m", Decimal("0.25")), ("2", Decimal(2)), ("1.5", Decimal("1.5")), ("128Mi", Decimal(128 * 2**20)),
     ("1G", Decimal(10**9)), ("1e3", Decimal(1000)), (".5", Decimal("0.5"))],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1 Gi", "abc", "1Gb", "1..2", "1e"])
def test_parse_quantity_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


@pytest.mark.parametrize(("name", "ok"), [("DB_URL", True), ("a.b-c", True), ("_x", True), ("1X", False),
                                          ("A=B", False), ("", False), ("A B", False)])
def test_env_names(name: str, ok: bool) -> None:
    assert (env_name_problem(name) is None) is ok


# --------------------------------------------------------------------------- argument models


def rules(exc: ValidationError) -> set[str]:
    return {e["type"] for e in exc.errors()}


@pytest.mark.parametrize(
    ("override", "rule"),
    [
        ({"name": "Web"}, "dns1123_label"),
        ({"name": "web.v2"}, "dns1123_label"),  # a container name and label value: no dots
        ({"namespace": "a" * 64}, "dns1123_label"),
        ({"image": "nginx 1"}, "image_reference"),
        ({"replicas": 1001}, "less_than_equal"),
        ({"replicas": -1}, "greater_than_equal"),
        ({"env": {"1BAD": "x"}}, "env_name"),
        ({"ports": [0]}, "port_range"),
        ({"ports": [80, 80]}, "port_duplicate"),
        ({"labels": {"bad key!": "x"}}, "label"),
        ({"labels": {HASH_LABEL: "x"}}, "reserved_label"),
        ({"labels": {NAME_LABEL: "other"}}, "reserved_label"),
        ({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}, "requests_exceed_limits"),
        ({"resources": {"limits": {"cpu": "lots"}}}, "quantity"),
        ({"resources": {"limits": {"gpu": "1"}}}, "extra_forbidden"),
        ({"timeout_seconds": 601}, "less_than_equal"),
        ({"extra": 1}, "extra_forbidden"),
    ],
)
def test_deploy_args_refuse_bad_input(override: dict[str, Any], rule: str) -> None:
    raw = {"name": "web", "namespace": "default", "image": "nginx:1", **override}
    with pytest.raises(ValidationError) as info:
        DeployArgs.model_validate(raw)
    assert rule in rules(info.value)


def test_deploy_args_accept_a_full_request() -> None:
    args = DeployArgs.model_validate({
        "name": "web", "namespace": "prod", "image": "ghcr.io/acme/web:1.2", "replicas": 0,
        "env": {"A": "1"}, "ports": [8080, 9090], "labels": {"team": "x", NAME_LABEL: "web"},
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    })
    assert args.spec().resources == {"requests": {"cpu": "250m", "memory": "128Mi"},
                                     "limits": {"cpu": "1", "memory": "1Gi"}}


def test_env_values_never_reach_a_dump_of_the_arguments() -> None:
    """The gate writes args.model_dump(mode="json") to the audit log: env values must not be in it."""
    args = DeployArgs.model_validate({"name": "web", "namespace": "d", "image": "nginx:1",
                                      "env": {"PLAIN_NAME": "s3cret-value"}})
    assert "s3cret" not in json.dumps(args.model_dump(mode="json")) and "s3cret" not in repr(args)
    assert args.spec().env == {"PLAIN_NAME": "s3cret-value"}
    assert DeployArgs.model_json_schema()["properties"]["env"]["anyOf"][0]["additionalProperties"]["writeOnly"]


def test_other_args_models() -> None:
    ScaleArgs.model_validate({"name": "web.v2", "namespace": "default", "replicas": 1000})
    with pytest.raises(ValidationError):
        ScaleArgs.model_validate({"name": "web", "namespace": "default", "replicas": 1001})
    with pytest.raises(ValidationError):
        RollbackArgs.model_validate({"name": "web", "namespace": "default", "to_revision": 0})
    with pytest.raises(ValidationError):
        ListWorkloadsArgs.model_validate({"namespace": "default", "kind": "Pod"})
    with pytest.raises(ValidationError):
        ListWorkloadsArgs.model_validate({"namespace": "default", "cursor": "x" * 2000})


def test_schema_carries_the_name_patterns() -> None:
    """A new name's rules are in the schema; an existing object's name is checked by the validator alone."""
    props = DeployArgs.model_json_schema()["properties"]
    assert props["name"]["maxLength"] == 63 and props["name"]["pattern"].startswith("^[a-z0-9]")
    ScaleArgs.model_validate({"name": "a" * 253, "namespace": "default", "replicas": 1})
    with pytest.raises(ValidationError):
        ScaleArgs.model_validate({"name": "a" * 254, "namespace": "default", "replicas": 1})


# --------------------------------------------------------------------------- API error mapping


def test_api_error_422_names_the_field() -> None:
    body = ('{"kind":"Status","status":"Failure","reason":"Invalid","code":422,"message":"Deployment.apps '
            '\\"web\\" is invalid","details":{"causes":[{"field":"spec.replicas","reason":"FieldValueInvalid",'
            '"message":"must be greater than or equal to 0"}]}}')
    err = api_error(422, "Unprocessable Entity", body, "update deployment default/web")
    assert (err.code, err.status, err.rule, err.field) == ("api_error", 422, "invalid", "spec.replicas")
    assert "422 Invalid" in err.message and "must be greater than or equal to 0" in err.message


def test_api_error_409_kinds_and_plain_bodies() -> None:
    exists = api_error(409, "Conflict", '{"kind":"Status","reason":"AlreadyExists","message":"exists"}', "create")
    assert exists.rule == "already-exists"
    stale = api_error(409, "Conflict", '{"kind":"Status","reason":"Conflict","message":"modified"}', "patch")
    assert stale.rule == "conflict"
    boom = api_error(503, "Service Unavailable", "upstream down", "read")
    assert (boom.status, boom.rule) == (503, "server-error") and "upstream down" in boom.message
    assert api_error(403, "Forbidden", None, "read").rule == "forbidden"
    assert api_error(418, "Teapot", "", "read").rule == "http-418"


def test_importing_the_tools_does_not_import_kubernetes() -> None:
    """kubernetes costs ~0.3 s at import; the server must start without paying it."""
    code = ("import sys, opsgate.tools.workloads, opsgate.tools.kube, opsgate.tools.structs.patches; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
