"""The sandbox's pure parts: patches, selectors, validation, rollout decisions, tables."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from opsgate.sandbox import ApiError, rollout, template_hash, validation
from opsgate.sandbox.kinds import DEPLOYMENT, default_deployment, image_pull_policy
from opsgate.sandbox.patch import json_patch, merge_patch, strategic_merge
from opsgate.sandbox.protobuf import decode_object
from opsgate.sandbox.resources import POD_MERGE_KEYS, PRIMITIVE_MERGE_LISTS
from opsgate.sandbox.selectors import (
    labels_match,
    parse_field_selector,
    parse_label_selector,
    selector_string,
)
from opsgate.sandbox.tables import human_duration, to_table

# --- merge patch (RFC 7386, examples from its appendix) -----------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch(target: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(target)
    assert merge_patch(target, patch) == result
    assert target == before


# --- strategic merge patch ------------------------------------------------------------------------


def smp(original: Any, patch: Any) -> Any:
    return strategic_merge(original, patch, POD_MERGE_KEYS, PRIMITIVE_MERGE_LISTS)


POD = {
    "containers": [
        {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
         "ports": [{"containerPort": 80, "protocol": "TCP"}]},
        {"name": "b", "image": "b:1"},
    ],
    "tolerations": [{"key": "k"}],
}


def test_strategic_merge_lists_by_key() -> None:
    out = smp(POD, {"containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "3"}]}]})
    assert [c["name"] for c in out["containers"]] == ["a", "b"]
    a = out["containers"][0]
    assert a["image"] == "a:2"
    assert a["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}]
    assert a["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    added = smp(POD, {"containers": [{"name": "c", "image": "c:1"}]})
    assert [c["name"] for c in added["containers"]] == ["a", "b", "c"]
    ports = smp(POD, {"containers": [{"name": "a", "ports": [{"containerPort": 443}]}]})
    assert [p["containerPort"] for p in ports["containers"][0]["ports"]] == [80, 443]


def test_strategic_merge_atomic_lists_and_directives() -> None:
    assert smp(POD, {"tolerations": [{"key": "z"}]})["tolerations"] == [{"key": "z"}]
    deleted = smp(POD, {"containers": [{"name": "b", "$patch": "delete"}]})
    assert [c["name"] for c in deleted["containers"]] == ["a"]
    replaced = smp(POD, {"containers": [{"name": "z", "image": "z"}, {"$patch": "replace"}]})
    assert replaced["containers"] == [{"name": "z", "image": "z"}]
    assert smp({"a": {"b": 1, "c": 2}}, {"a": {"$patch": "replace", "d": 3}}) == {"a": {"d": 3}}
    assert smp({"a": {"b": 1}, "x": 1}, {"a": {"$patch": "delete"}}) == {"x": 1}
    assert smp({"a": 1, "b": 2}, {"b": None}) == {"a": 1}
    assert smp({"finalizers": ["a", "b"]}, {"finalizers": ["c", "a"]}) == {"finalizers": ["a", "b", "c"]}
    assert smp({"finalizers": ["a", "b"]}, {"$deleteFromPrimitiveList/finalizers": ["a"]}) == {"finalizers": ["b"]}
    assert smp({"s": {"type": "R", "rollingUpdate": {"x": 1}}}, {"s": {"$retainKeys": ["type"], "type": "Q"}}) == {
        "s": {"type": "Q"}
    }
    ordered = smp(POD, {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]})
    assert [c["name"] for c in ordered["containers"]] == ["b", "a"]
    with pytest.raises(ApiError) as err:
        smp(POD, {"containers": [{"image": "no-name"}]})
    assert err.value.code == 400


# --- JSON patch (RFC 6902) ----------------------------------------------------------------------------


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "remove", "path": "/c"},
            {"op": "copy", "from": "/a/b", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "replace", "path": "/a/b/1", "value": 9},
            {"op": "test", "path": "/e/0", "value": 0},
            {"op": "add", "path": "/k~1v", "value": "slash"},
        ],
    )
    assert out == {"a": {"b": [0, 9, 2, 3]}, "e": [0, 1, 2, 3], "k/v": "slash"}
    assert doc == {"a": {"b": [1, 2]}, "c": "x"}


@pytest.mark.parametrize(
    ("ops", "code"),
    [
        ([{"op": "test", "path": "/a", "value": 2}], 422),
        ([{"op": "replace", "path": "/missing", "value": 1}], 422),
        ([{"op": "remove", "path": "/nope"}], 422),
        ([{"op": "add", "path": "/l/5", "value": 1}], 422),
        ([{"op": "bogus", "path": "/a"}], 400),
        ({"op": "add"}, 400),
        ([{"op": "add", "path": "/a"}], 400),
    ],
)
def test_json_patch_errors(ops: Any, code: int) -> None:
    with pytest.raises(ApiError) as err:
        json_patch({"a": 1, "l": []}, ops)
    assert err.value.code == code


# --- selectors --------------------------------------------------------------------------------------


def test_label_selectors() -> None:
    labels = {"app": "web", "tier": "front"}
    for text, expected in [
        ("app=web", True),
        ("app==web,tier=front", True),
        ("app!=web", False),
        ("app in (web, api)", True),
        ("tier notin (front)", False),
        ("app", True),
        ("!app", False),
        ("missing!=x", True),
        ("", True),
    ]:
        assert labels_match(parse_label_selector(text), labels) is expected, text
    sel = {
        "matchLabels": {"b": "2", "a": "1"},
        "matchExpressions": [{"key": "c", "operator": "In", "values": ["y", "x"]}],
    }
    assert selector_string(sel) == "a=1,b=2,c in (x,y)"
    with pytest.raises(ApiError):
        parse_label_selector("app in web")


def test_field_selectors() -> None:
    fields = {"metadata.name": lambda o: str(o["metadata"]["name"])}
    pred = parse_field_selector("metadata.name=web", fields)
    assert pred({"metadata": {"name": "web"}}) and not pred({"metadata": {"name": "x"}})
    assert parse_field_selector("metadata.name!=web", fields)({"metadata": {"name": "x"}})
    with pytest.raises(ApiError) as err:
        parse_field_selector("spec.foo=1", fields)
    assert err.value.code == 400


# --- validation -------------------------------------------------------------------------------------


def valid_deployment() -> dict[str, Any]:
    return {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }


def test_names() -> None:
    assert validation.dns1123_subdomain("f", "a.b-c") == []
    assert validation.dns1123_label("f", "a.b") != []
    assert validation.dns1123_label("f", "x" * 64) != []
    assert validation.dns1123_subdomain("f", "Bad_Name")[0].message.startswith('Invalid value: "Bad_Name"')
    assert validation.dns1123_subdomain("f", "")[0].reason == "FieldValueRequired"


def test_deployment_validation() -> None:
    assert validation.deployment(valid_deployment(), None) == []
    bad = valid_deployment()
    bad["spec"]["replicas"] = -1
    bad["spec"]["template"]["spec"]["containers"].append({"name": "c", "image": ""})
    bad["spec"]["strategy"] = {"type": "Sideways"}
    fields = {c.field: c.message for c in validation.deployment(bad, None)}
    assert fields["spec.replicas"] == "Invalid value: -1: must be greater than or equal to 0"
    assert fields["spec.template.spec.containers[1].name"] == 'Duplicate value: "c"'
    assert fields["spec.template.spec.containers[1].image"] == "Required value"
    assert "spec.strategy.type" in fields
    moved = valid_deployment()
    moved["spec"]["selector"] = {"matchLabels": {"app": "web", "v": "2"}}
    moved["spec"]["template"]["metadata"]["labels"]["v"] = "2"
    assert [c.field for c in validation.deployment(moved, valid_deployment())] == ["spec.selector"]


# --- rollout decisions --------------------------------------------------------------------------------


def test_template_hash_is_stable_and_ignores_hash_label() -> None:
    template = valid_deployment()["spec"]["template"]
    first = template_hash(template)
    assert first == template_hash(copy.deepcopy(template))
    labelled = copy.deepcopy(template)
    labelled["metadata"]["labels"][rollout.HASH_LABEL] = first
    assert template_hash(labelled) == first
    changed = copy.deepcopy(template)
    changed["spec"]["containers"][0]["image"] = "other"
    assert template_hash(changed) != first
    assert template_hash(template, 1) != first
    assert first.isalnum() and len(first) <= 10


def rs(name: str, revision: int | None, replicas: int = 0, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    ann = dict(annotations or {})
    if revision is not None:
        ann[rollout.REVISION] = str(revision)
    return {
        "metadata": {"name": name, "annotations": ann, "creationTimestamp": f"2024-01-01T00:00:{revision or 0:02d}Z"},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas},
    }


def test_revision_numbering_and_history() -> None:
    d = valid_deployment()
    default_deployment(d)
    d["metadata"]["annotations"] = {rollout.CHANGE_CAUSE: "why", rollout.LAST_APPLIED: "{}"}
    old = [rs("a", 1), rs("b", 2)]
    assert rollout.max_revision(old) + 1 == 3
    fresh = rollout.new_replicaset_annotations(d, {"metadata": {}}, 3)
    assert fresh[rollout.REVISION] == "3" and fresh[rollout.CHANGE_CAUSE] == "why"
    assert rollout.LAST_APPLIED not in fresh and rollout.REVISION_HISTORY not in fresh
    reused = rollout.new_replicaset_annotations(d, rs("a", 1, annotations={rollout.REVISION_HISTORY: "0"}), 3)
    assert reused[rollout.REVISION] == "3" and reused[rollout.REVISION_HISTORY] == "0,1"
    same = rollout.new_replicaset_annotations(d, rs("c", 3), 3)
    assert same[rollout.REVISION] == "3" and rollout.REVISION_HISTORY not in same
    assert same[rollout.MAX_REPLICAS] == "2"  # 1 + ceil(25% of 1)


def test_prune_oldest_idle_beyond_limit() -> None:
    d = valid_deployment()
    d["spec"]["revisionHistoryLimit"] = 2
    olds = [rs("a", 1), rs("b", 2), rs("busy", 3, replicas=1), rs("c", 4), rs("d", 5)]
    assert [r["metadata"]["name"] for r in rollout.replicasets_to_prune(d, olds)] == ["a", "b"]
    d["spec"]["revisionHistoryLimit"] = 0
    assert len(rollout.replicasets_to_prune(d, olds)) == 4


def test_find_new_replicaset_ignores_hash() -> None:
    d = valid_deployment()
    tmpl = copy.deepcopy(d["spec"]["template"])
    tmpl["metadata"]["labels"][rollout.HASH_LABEL] = "abc"
    match = {"metadata": {"name": "m"}, "spec": {"template": tmpl}}
    other = {"metadata": {"name": "o"}, "spec": {"template": {"spec": {}}}}
    assert rollout.find_new_replicaset(d, [other, match]) is match
    assert rollout.find_new_replicaset(d, [other]) is None


def test_status_conditions() -> None:
    d = valid_deployment()
    default_deployment(d)
    d["metadata"]["generation"] = 2
    d["spec"]["replicas"] = 2
    new = {"metadata": {"name": "web-1"}, "spec": {"replicas": 2}, "status": {"replicas": 2, "availableReplicas": 2,
                                                                               "readyReplicas": 2}}
    done = rollout.deployment_status(d, new, [new], now="t")
    assert done["observedGeneration"] == 2 and done["availableReplicas"] == 2
    reasons = {c["type"]: c["reason"] for c in done["conditions"]}
    assert reasons == {"Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}
    assert rollout.deployment_complete(d, done)
    d["spec"]["paused"] = True
    paused = rollout.deployment_status(d, new, [new], now="t")
    assert {c["type"]: c["reason"] for c in paused["conditions"]}["Progressing"] == "DeploymentPaused"
    started = rollout.deployment_status(valid_deployment(), new | {"status": {}}, [new | {"status": {}}], now="t",
                                        created_new=True)
    assert {c["type"]: c["status"] for c in started["conditions"]}["Available"] == "False"
    assert "unavailableReplicas" in started


# --- defaults and tables ------------------------------------------------------------------------------


def test_defaults() -> None:
    d = valid_deployment()
    default_deployment(d)
    rolling = {"maxUnavailable": "25%", "maxSurge": "25%"}
    assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": rolling}
    assert d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    assert image_pull_policy("reg:5000/app:1.2") == "IfNotPresent"
    assert image_pull_policy("reg:5000/app") == "Always"
    assert image_pull_policy("app@sha256:00") == "IfNotPresent"


def test_human_duration_and_table() -> None:
    assert [human_duration(s) for s in (5, 119, 125, 600, 3 * 3600 + 60, 9 * 3600, 3 * 86400 + 3600, 400 * 86400)] == [
        "5s", "119s", "2m5s", "10m", "3h1m", "9h", "3d1h", "400d"
    ]
    d = valid_deployment()
    d["status"] = {"readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    table = to_table(DEPLOYMENT, [d], resource_version="5")
    assert [c["name"] for c in table["columnDefinitions"]][:5] == ["Name", "Ready", "Up-to-date", "Available", "Age"]
    assert table["rows"][0]["cells"][:4] == ["web", "1/1", 1, 1]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


# --- protobuf request bodies ------------------------------------------------------------------------

# What ``kubectl create deployment web --image=nginx:1.0 --replicas=2 --port=80`` POSTs (kubectl 1.37).
KUBECTL_CREATE_DEPLOYMENT = bytes.fromhex(
    "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412bc010a1f0a0377656212001a0022002a003200380042005a0a0a"
    "036170701203776562128a010802120c0a0a0a0361707012037765621a700a1c0a0012001a0022002a003200380042005a0a0a0361"
    "70701203776562125012320a056e67696e7812096e67696e783a312e302a00320a0a001000185022002a0042006a007200800100880100"
    "900100a201001a00320042004a0052005800600068008201008a01009a0100c2010022020a00280038001a0c080010001800200028003800"
    "1a002200"
)


def test_protobuf_deployment_body() -> None:
    obj = decode_object(KUBECTL_CREATE_DEPLOYMENT, "application/vnd.kubernetes.protobuf")
    assert obj == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.0", "ports": [{"containerPort": 80}]}]},
            },
        },
    }


def test_protobuf_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ApiError) as err:
        decode_object(b"not protobuf", "application/vnd.kubernetes.protobuf")
    assert err.value.code == 415
    # Field 99 of the Deployment message is not in the table: refused, not dropped.
    envelope_type = bytes.fromhex("0a150a07617070732f7631120a4465706c6f796d656e74")
    raw = bytes([0x98, 0x06, 0x01])  # field 99, varint 1
    body = b"k8s\x00" + envelope_type + bytes([0x12, len(raw)]) + raw
    with pytest.raises(ApiError) as err2:
        decode_object(body, "application/vnd.kubernetes.protobuf")
    assert err2.value.code == 415
