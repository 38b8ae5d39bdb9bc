"""Cluster faults on every mutating tool's write: clear errors, audited outcomes, never a half-applied change.

For each write a tool makes (deploy create and update, scale, rollback, deploy_model
create and update, and scale/rollback with ``kind: InferenceService``) the sandbox
answers 500, 503, 409 (every time), 403, drops the connection, or answers only after
the server's 10 s read timeout. The error must name the API status or the timeout,
the outcome record must say error, and the object, read back with the real
kubernetes client, must be exactly as before or exactly as the same call leaves
an identical twin object when nothing fails (compared on spec, labels and
annotations, call ids masked). One 409 is retried on a fresh read and succeeds.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from opsgate.audit import verify_log
from opsgate.sandbox import SandboxCluster
from opsgate.tools.kube import CONFLICT_ATTEMPTS, DEFAULT_TIMEOUT, KubeApiError, retry_on_conflict
from opsgate.tools.structs.patches import guard, guard_broken
from opsgate.tools.tensors import MODELS_DIR_DEFAULT
from tests.harness import Served, err, serve_on

PRINCIPAL = "faults-admin"
V1, V2 = "registry.example.com/web:1.0", "registry.example.com/web:2.0"
IRIS, IRIS_V2 = f"file://{MODELS_DIR_DEFAULT}/iris.onnx", f"file://{MODELS_DIR_DEFAULT}/iris-v2.onnx"
READ_TIMEOUT = DEFAULT_TIMEOUT[1]  # the server's Kubernetes read timeout; there is no setting for it yet
SLOW = READ_TIMEOUT + 0.5
CALL_ID = re.compile(r"[0-9a-f]{32}")
# Written by the Deployment controller, not by the call: not part of what a call changes.
CONTROLLER_ANNOTATIONS = ("deployment.kubernetes.io/",)


@dataclass(frozen=True)
class Case:
    """One mutating tool's write: how to set its object up, the call, and the request to fail."""

    id: str
    kind: str  # Deployment or InferenceService
    setup: tuple[tuple[str, dict[str, Any]], ...]
    tool: str
    arguments: dict[str, Any]
    method: str
    path: str  # after /namespaces/<ns>/

    @property
    def name(self) -> str:
        return str(self.arguments["name"])


def _model(**extra: Any) -> dict[str, Any]:
    return {"name": "iris", **extra}


CASES = [
    Case("deploy-create", "Deployment", (), "deploy", {"name": "web", "image": V1, "replicas": 2},
         "POST", r"deployments$"),
    Case("deploy-update", "Deployment", (("deploy", {"name": "web", "image": V1}),),
         "deploy", {"name": "web", "image": V2, "replicas": 3, "env": {"MODE": "x"}}, "PATCH", r"deployments/web$"),
    Case("scale", "Deployment", (("deploy", {"name": "web", "image": V1, "replicas": 1}),),
         "scale", {"name": "web", "replicas": 4}, "PATCH", r"deployments/web/scale$"),
    Case("rollback", "Deployment", (("deploy", {"name": "web", "image": V1}), ("deploy", {"name": "web", "image": V2})),
         "rollback", {"name": "web"}, "PATCH", r"deployments/web$"),
    Case("deploy_model-create", "InferenceService", (), "deploy_model", _model(storage_uri=IRIS, max_replicas=2),
         "POST", r"inferenceservices$"),
    Case("deploy_model-update", "InferenceService", (("deploy_model", _model(storage_uri=IRIS, wait=True)),),
         "deploy_model", _model(storage_uri=IRIS_V2, max_replicas=3), "PATCH", r"inferenceservices/iris$"),
    Case("scale-isvc", "InferenceService", (("deploy_model", _model(storage_uri=IRIS, wait=True)),),
         "scale", _model(kind="InferenceService", min_replicas=2, max_replicas=4), "PATCH", r"inferenceservices/iris$"),
    Case("rollback-isvc", "InferenceService", (
        ("deploy_model", _model(storage_uri=IRIS, wait=True)),
        ("deploy_model", _model(storage_uri=IRIS_V2, canary_traffic_percent=20, wait=True))),
        "rollback", _model(kind="InferenceService"), "PATCH", r"inferenceservices/iris$"),
]
FAULTS = ["500", "503", "409", "403", "drop"]


# --------------------------------------------------------------------------- reading objects back


class Objects:
    """The real kubernetes client, reading what the server's calls left behind."""

    def __init__(self, cluster: SandboxCluster) -> None:
        from kubernetes import client, config

        new_client: Any = config.new_client_from_config_dict
        self.api: Any = new_client(cluster.kubeconfig())
        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def state(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """What a call may change (spec, labels, annotations), call ids masked; None when there is no object."""
        from kubernetes.client.exceptions import ApiException

        try:
            if kind == "Deployment":
                response = self.apps.read_namespaced_deployment(name, namespace, _preload_content=False)
            else:
                response = self.custom.get_namespaced_custom_object(
                    "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        obj = json.loads(response.data)
        annotations = {k: v for k, v in (obj["metadata"].get("annotations") or {}).items()
                       if not k.startswith(CONTROLLER_ANNOTATIONS)}
        view = {"spec": obj.get("spec"), "labels": obj["metadata"].get("labels"), "annotations": annotations}
        return json.loads(CALL_ID.sub("<call>", json.dumps(view, sort_keys=True)))  # type: ignore[no-any-return]


@dataclass
class Session:
    portal: BlockingPortal
    served: Served
    objects: Objects
    twins: dict[str, dict[str, Any] | None]

    def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        call = partial(self.served.session.call_tool, tool, arguments, read_timeout_seconds=60)
        return self.portal.call(call)

    def ok(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = self.call(tool, arguments)
        assert not result.is_error, result.content[0].text
        return result.structured_content  # type: ignore[no-any-return]

    def prepare(self, case: Case, namespace: str) -> dict[str, Any] | None:
        """A fresh namespace with the case's object set up; its state before the call."""
        self.objects.namespace(namespace)
        for tool, arguments in case.setup:
            self.ok(tool, {**arguments, "namespace": namespace})
        return self.objects.state(case.kind, namespace, case.name)

    def expected(self, case: Case) -> dict[str, Any] | None:
        """The state the call leaves when nothing fails, measured on a twin set up the same way."""
        if case.id not in self.twins:
            namespace = f"twin-{case.id.replace('_', '-')}"
            self.prepare(case, namespace)
            self.ok(case.tool, {**case.arguments, "namespace": namespace})
            self.twins[case.id] = self.objects.state(case.kind, namespace, case.name)
        return self.twins[case.id]

    def outcome(self, call_id: str) -> dict[str, Any]:
        found = [r for r in self.served.records() if r.get("stage") == "outcome" and r.get("call_id") == call_id]
        assert len(found) == 1, f"one outcome record for call {call_id}, found {len(found)}"
        return found[0]["outcome"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.02) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def session(cluster: SandboxCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """One server for the module (each case works in its own namespace); its log verifies at the end."""
    tmp = tmp_path_factory.mktemp("faults")
    admin = f"g, {PRINCIPAL}, role:admin, *"  # admin: no bounds, no rate limit
    with start_blocking_portal("asyncio") as portal, portal.wrap_async_context_manager(
        serve_on(cluster, tmp, PRINCIPAL, admin)
    ) as served:
        objects = Objects(cluster)
        yield Session(portal, served, objects, {})
        objects.api.close()
    report = verify_log(served.audit_log)
    assert report.ok, (report.problem, report.detail)


def namespace_of(case: Case, fault: str) -> str:
    return f"{case.id.replace('_', '-')}-{fault}"


def inject(cluster: SandboxCluster, case: Case, namespace: str, fault: str, times: int = 0) -> None:
    path = rf"/namespaces/{namespace}/{case.path}"
    if fault == "drop":
        cluster.inject_fault(case.method, path, drop=True, times=times)
    elif fault == "slow":
        cluster.inject_fault(case.method, path, delay=SLOW, times=times)
    else:
        cluster.inject_fault(case.method, path, status=int(fault), times=times)


def check_error(session: Session, result: Any, fault: str) -> str:
    """The error names the status (or the timeout / dropped connection), and the outcome record says so."""
    assert result.is_error, f"the call succeeded through a {fault} fault: {result.structured_content}"
    error = err(result)
    message = error["message"]
    if fault == "slow":
        assert (error["code"], error["errors"][0]["rule"]) == ("cluster_unreachable", "timeout"), error
        assert f"no answer within {READ_TIMEOUT:g} s" in message and "may or may not have been applied" in message
    elif fault == "drop":
        assert (error["code"], error["errors"][0]["rule"]) == ("cluster_unreachable", "connection-dropped"), error
        assert "connection was dropped" in message and "may or may not have been applied" in message
    else:
        assert error["code"] == "api_error" and error["http_status"] == int(fault), error
        assert (f"HTTP {fault}" if fault == "409" else f"answered {fault}") in message, message
        rule = {"409": "conflict", "403": "forbidden"}.get(fault, "server-error")
        assert error["errors"][0]["rule"] == rule, error
        if fault == "409":
            assert "nothing was applied" in message, message
    outcome = session.outcome(error["call_id"])
    assert outcome["status"] == "error" and outcome["error"]["code"] == error["code"], outcome
    if fault not in ("slow", "drop"):
        assert outcome["error"]["http_status"] == int(fault), outcome
    return str(error["call_id"])


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_failed_write_is_clear_audited_and_never_half_applied(
    session: Session, cluster: SandboxCluster, case: Case, fault: str
) -> None:
    expected = session.expected(case)
    namespace = namespace_of(case, fault)
    before = session.prepare(case, namespace)
    assert before != expected, "the call must change something for the test to mean anything"
    inject(cluster, case, namespace, fault)
    try:
        result = session.call(case.tool, {**case.arguments, "namespace": namespace})
    finally:
        cluster.clear_faults()
    check_error(session, result, fault)
    after = session.objects.state(case.kind, namespace, case.name)
    assert after == before, f"{case.id} through {fault}: the object changed although the write failed"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_one_conflict_is_retried_on_a_fresh_read(session: Session, cluster: SandboxCluster, case: Case) -> None:
    expected = session.expected(case)
    namespace = namespace_of(case, "409-once")
    session.prepare(case, namespace)
    inject(cluster, case, namespace, "409", times=1)
    try:
        session.ok(case.tool, {**case.arguments, "namespace": namespace})
    finally:
        cluster.clear_faults()
    assert session.objects.state(case.kind, namespace, case.name) == expected


def test_a_write_slower_than_the_client_timeout_is_all_or_nothing(session: Session, cluster: SandboxCluster) -> None:
    """Every mutating tool at once (so the test takes one timeout, not eight): a timeout error that says the
    change may have been applied, and an object that is either as before or exactly as a clean call leaves it."""
    expected = {case.id: session.expected(case) for case in CASES}
    before = {}
    for case in CASES:
        namespace = namespace_of(case, "slow")
        before[case.id] = session.prepare(case, namespace)
        inject(cluster, case, namespace, "slow")
    results: dict[str, Any] = {}

    async def one(case: Case) -> None:
        arguments = {**case.arguments, "namespace": namespace_of(case, "slow")}
        results[case.id] = await session.served.session.call_tool(case.tool, arguments, read_timeout_seconds=60)

    async def all_at_once() -> None:
        async with anyio.create_task_group() as tasks:
            for case in CASES:
                tasks.start_soon(one, case)

    started = time.monotonic()
    try:
        session.portal.call(all_at_once)
        time.sleep(max(0.0, started + SLOW + 1.0 - time.monotonic()))  # the delayed writes land (or not) by now
    finally:
        cluster.clear_faults()
    landed = []
    for case in CASES:
        check_error(session, results[case.id], "slow")
        after = session.objects.state(case.kind, namespace_of(case, "slow"), case.name)
        assert after in (before[case.id], expected[case.id]), f"{case.id}: half applied after a timeout"
        landed.append(after == expected[case.id])
    print(f"\nslow writes applied after the client gave up: {sum(landed)} of {len(landed)}")


# --------------------------------------------------------------------------- the guard and the retry, pure


def test_guards_test_what_was_read_and_fall_back_to_the_resource_version() -> None:
    """Issue 15 item 12: a guard is a JSON Patch test of what the write was computed from, which a status
    write leaves alone; a path the object lacks (a Scale at 0 replicas omits it) falls back to resourceVersion."""
    read = {"metadata": {"generation": 3, "resourceVersion": "7"}, "spec": {"replicas": 2}, "status": {"x": 1}}
    ops = guard(read, "/metadata/generation", "/spec/replicas")
    assert ops == [{"op": "test", "path": "/metadata/generation", "value": 3},
                   {"op": "test", "path": "/spec/replicas", "value": 2}]
    status_written = {**read, "metadata": {"generation": 3, "resourceVersion": "9"}, "status": {"x": 2}}
    assert not guard_broken(status_written, ops)
    assert guard_broken({**read, "metadata": {"generation": 4, "resourceVersion": "9"}}, ops)
    assert guard_broken({**read, "spec": {}}, ops)
    fallback = guard({"metadata": {"resourceVersion": "7"}, "spec": {}}, "/spec/replicas")
    assert fallback == [{"op": "replace", "path": "/metadata/resourceVersion", "value": "7"}]
    assert guard_broken({"metadata": {"resourceVersion": "8"}}, fallback)
    assert not guard_broken({"metadata": {"resourceVersion": "7"}}, fallback)


def test_conflicts_are_retried_with_a_growing_pause_and_other_errors_are_not() -> None:
    pauses: list[float] = []
    failures = iter([409, 422, 409])

    def overtaken_three_times() -> str:
        status = next(failures, None)
        if status is None:
            return "written"
        raise KubeApiError("x", status=status, reason="Conflict", rule="conflict")

    assert retry_on_conflict(overtaken_three_times, what="w", kind="Deployment", sleep=pauses.append) == "written"
    assert len(pauses) == 3 and pauses[0] < pauses[2] <= 0.2

    def always() -> str:
        raise KubeApiError("x", status=409, reason="Conflict", rule="conflict")

    with pytest.raises(KubeApiError) as info:
        retry_on_conflict(always, what="scale deployment a/b", kind="Deployment", sleep=lambda _: None)
    assert f"{CONFLICT_ATTEMPTS} times in a row" in info.value.message and info.value.rule == "conflict"
    calls: list[int] = []

    def invalid() -> str:
        calls.append(1)
        raise KubeApiError("x", status=422, reason="Invalid", rule="invalid")

    with pytest.raises(KubeApiError):
        retry_on_conflict(invalid, what="w", kind="Deployment", sleep=lambda _: None)
    assert calls == [1], "a real refusal is not retried"
