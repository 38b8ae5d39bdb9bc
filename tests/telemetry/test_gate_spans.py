"""Spans and metrics of the gate in-process, read through the OpenTelemetry SDK's in-memory exporter and reader:
the real tools, a real audit log and the sandbox's real API server over HTTPS; only the export is in memory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from opsgate import telemetry
from opsgate.audit import AuditLog
from opsgate.policies import SHIPPED_DIR, load_policy
from opsgate.sandbox import SandboxCluster
from opsgate.server.catalog import server_tools, tool_verbs
from opsgate.server.config import Settings
from opsgate.server.gate import Gate
from opsgate.server.records import Caller
from opsgate.telemetry.sdk import Telemetry
from opsgate.tools.kube import Kube
from opsgate.tools.tensors import MODELS_DIR_DEFAULT

pytestmark = pytest.mark.anyio

POLICY = """\
p, role:viewer, *, *, read, allow
g, role:operator, role:viewer, *
p, role:operator, *, *, write, allow
g, alice, role:operator, team-*
"""
BOUNDS = """\
[subject."role:operator"]
rate_limit_per_minute = 2
confirm = ["rollback"]
"""
IRIS = f"file://{MODELS_DIR_DEFAULT}/iris.onnx"
DEPLOY = {"namespace": "team-a", "name": "web", "image": "nginx:1.27", "replicas": 2}


@pytest.fixture
def otel() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry.install(Telemetry(tracer_provider, MeterProvider(metric_readers=[reader])))
    try:
        yield spans, reader
    finally:
        telemetry.shutdown()


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.01, namespaces=("team-a",)) as sandbox:
        yield sandbox


def make_gate(tmp_path: Path, cluster: SandboxCluster) -> tuple[Gate, Kube, Path]:
    folder = tmp_path / "policy"
    folder.mkdir()
    shutil.copy(SHIPPED_DIR / "model.conf", folder / "model.conf")
    (folder / "policy.csv").write_text(POLICY)
    (folder / "bounds.toml").write_text(BOUNDS)
    log_path = tmp_path / "audit.jsonl"
    kube = Kube.from_kubeconfig_dict(cluster.kubeconfig())
    gates: list[Gate] = []
    specs = server_tools(Settings(audit_log=log_path), kube, lambda: gates[0])
    caller = Caller("alice", "config", "alice", "test", "1", uuid.uuid4().hex)
    gate = Gate(policy=load_policy(folder, known_tools=tool_verbs(specs)), audit=AuditLog(log_path), caller=caller)
    gates.append(gate)
    gate.register(specs)
    return gate, kube, log_path


def records(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def attrs_of(item: Any) -> dict[str, Any]:
    """A span's or a data point's attributes, as plain values."""
    return dict(item.attributes or {})


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {m.name: list(m.data.data_points) for rm in data.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics}


async def test_a_deploy_is_one_span_tree_joined_to_its_audit_records_and_the_api_requests(
    tmp_path: Path, cluster: SandboxCluster, otel: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    spans, reader = otel
    gate, kube, log_path = make_gate(tmp_path, cluster)
    try:
        result = await gate.call("deploy", DEPLOY, gate.caller)
    finally:
        kube.close()
    assert not result.is_error, result.content

    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    call = next(s for s in finished if s.name == "execute_tool deploy")
    assert call.parent is None  # no MCP request around it in-process
    attrs = attrs_of(call)
    assert attrs["gen_ai.tool.name"] == "deploy" and attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["opsgate.principal"] == "alice" and attrs["opsgate.decision"] == "allow"
    assert attrs["opsgate.rule"].endswith("policy.csv:3") and attrs["opsgate.outcome"] == "ok"
    children = [s for s in finished if s.parent is not None and s.parent.span_id == call.context.span_id]
    names = [s.name for s in children]
    assert "opsgate.policy.decide" in names and names.count("opsgate.audit.append") == 2  # decision, outcome
    http = [s for s in children if s.kind == SpanKind.CLIENT]
    assert http and {attrs_of(s)["http.request.method"] for s in http} >= {"GET", "POST"}
    for s in http:
        assert attrs_of(s)["server.address"] == "127.0.0.1"
        assert attrs_of(s)["url.full"].startswith(f"{cluster.url}/") and "?" not in attrs_of(s)["url.full"]
        assert 200 <= attrs_of(s)["http.response.status_code"] < 500
    appends = [s for s in children if s.name == "opsgate.audit.append"]
    assert all(isinstance(attrs_of(s)["opsgate.audit.fsync_ms"], float) for s in appends)

    # Both ways: the audit records name the call's span; the span names the call id and the decision's seq.
    trace_id, span_id = f"{call.context.trace_id:032x}", f"{call.context.span_id:016x}"
    mine = [r for r in records(log_path) if r.get("call_id") == attrs["opsgate.call_id"]]
    assert [r["stage"] for r in mine] == ["decision", "outcome"]
    assert all(r["trace"] == {"trace_id": trace_id, "span_id": span_id} for r in mine)
    assert attrs["opsgate.audit.seq"] == mine[0]["seq"]
    assert [attrs_of(s)["opsgate.audit.seq"] for s in appends] == [r["seq"] for r in mine]

    # The API server received each request's traceparent: the HTTP span's own id, in the call's trace.
    sent = {(trace_id, f"{s.context.span_id:016x}") for s in http}
    received = {tuple(tp.split("-")[1:3]) for _, _, tp in cluster.traceparents}
    assert len(sent) == len(http) and sent <= received

    points = metric_points(reader)
    calls = points["opsgate.calls"]
    assert [(p.attributes, p.value) for p in calls] == [
        ({"gen_ai.tool.name": "deploy", "opsgate.decision": "allow", "opsgate.outcome": "ok"}, 1)
    ]
    assert points["mcp.server.operation.duration"][0].count == 1
    assert sum(p.count for p in points["opsgate.audit.append.duration"]) == 2
    assert sum(p.count for p in points["opsgate.audit.fsync.duration"]) >= 2
    kube_requests = {(attrs_of(p)["http.request.method"], attrs_of(p).get("http.response.status_code")): p.value
                     for p in points["opsgate.kube.requests"]}
    assert sum(kube_requests.values()) == len(http)
    assert {m for m, _ in kube_requests} == {attrs_of(s)["http.request.method"] for s in http}


async def test_denials_invalid_calls_and_the_rate_limit_are_counted_and_marked(
    tmp_path: Path, cluster: SandboxCluster, otel: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    spans, reader = otel
    gate, kube, _ = make_gate(tmp_path, cluster)
    try:
        first = await gate.call("deploy", DEPLOY, gate.caller)  # the first of the two writes the minute allows

        async def decline(question: str) -> str:
            return "decline"

        declined = await gate.call("rollback", {"namespace": "team-a", "name": "web"}, gate.caller, ask=decline)
        denied = await gate.call("deploy", {**DEPLOY, "namespace": "prod"}, gate.caller)  # no grant in prod
        limited = await gate.call("deploy", DEPLOY, gate.caller)  # the second write within the minute
        invalid = await gate.call("deploy", {"namespace": "team-a"}, gate.caller)
        unknown = await gate.call("sudo-make-me-admin", {}, gate.caller)
    finally:
        kube.close()
    assert not first.is_error
    assert all(r.is_error for r in (declined, denied, limited, invalid, unknown))

    finished = list(spans.get_finished_spans())
    calls = [s for s in finished if s.name.startswith("execute_tool")]
    assert [s.name for s in calls][-4:] == ["execute_tool deploy", "execute_tool deploy", "execute_tool deploy",
                                            "execute_tool"]  # an unknown name is the caller's text: not a span name
    for s, code in zip(calls[-4:], ["denied", "denied", "invalid_arguments", "invalid_arguments"], strict=True):
        assert s.status.status_code == StatusCode.ERROR and attrs_of(s)["error.type"] == code
    assert attrs_of(calls[-4])["opsgate.decision"] == "deny"
    assert attrs_of(calls[-2])["opsgate.decision"] == "invalid"

    points = metric_points(reader)
    counted = {(attrs_of(p)["gen_ai.tool.name"], attrs_of(p)["opsgate.decision"], attrs_of(p)["opsgate.outcome"]):
               p.value for p in points["opsgate.calls"]}
    assert counted[("deploy", "deny", "denied")] == 2 and counted[("deploy", "allow", "ok")] == 1
    assert counted[("deploy", "invalid", "invalid_arguments")] == 1
    assert counted[("-", "invalid", "invalid_arguments")] == 1
    refusals = points["opsgate.rate_limit.refusals"]
    assert [(p.attributes, p.value) for p in refusals] == [({"gen_ai.tool.name": "deploy", "opsgate.verb": "write"}, 1)]
    decisions = {(attrs_of(p)["opsgate.decision"], attrs_of(p)["opsgate.denial"]): p.value
                 for p in points["opsgate.policy.decisions"]}
    assert decisions[("deny", "policy")] == 1 and decisions[("deny", "rate-limit")] == 1
    assert decisions[("deny", "confirmation")] == 1
    confirmations = points["opsgate.confirmations"]
    assert [(p.attributes, p.value) for p in confirmations] == [
        ({"gen_ai.tool.name": "rollback", "opsgate.answer": "decline"}, 1)
    ]


async def test_a_model_server_request_is_a_client_span_with_its_sizes(
    tmp_path: Path, cluster: SandboxCluster, otel: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    spans, reader = otel
    gate, kube, _ = make_gate(tmp_path, cluster)
    service = {"namespace": "team-a", "name": "iris"}
    try:
        deployed = await gate.call("deploy_model", {**service, "storage_uri": IRIS, "wait": True}, gate.caller)
        assert not deployed.is_error, deployed.content
        spans.clear()
        answer = await gate.call("kserve_infer", {**service, "inputs": {"features": [[5.1, 3.5, 1.4, 0.2]]}},
                                 gate.caller)
    finally:
        kube.close()
    assert not answer.is_error, answer.content
    finished = list(spans.get_finished_spans())
    call = next(s for s in finished if s.name == "execute_tool kserve_infer")
    model = [s for s in finished if s.kind == SpanKind.CLIENT and "/v2/models/" in attrs_of(s)["url.full"]]
    assert model and all(s.parent is not None and s.parent.span_id == call.context.span_id for s in model)
    assert {attrs_of(s)["http.request.method"] for s in model} >= {"POST"}
    assert all(attrs_of(s)["http.response.status_code"] == 200 for s in model)
    assert cluster.kserve is not None  # the model server got each request's traceparent: the HTTP span's id
    received = {tuple(tp.split("-")[1:3]) for _, _, tp in cluster.kserve.traceparents}
    assert {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}") for s in model} <= received
    points = metric_points(reader)
    posts = [p for p in points["opsgate.inference.requests"] if attrs_of(p)["http.request.method"] == "POST"]
    assert sum(p.value for p in posts) == 1
    sent = [p for p in points["opsgate.inference.request.size"] if attrs_of(p)["http.request.method"] == "POST"]
    assert sent[0].count == 1 and sent[0].sum > 0


def test_off_by_default_nothing_of_the_sdk_is_imported_and_a_call_costs_no_span(tmp_path: Path) -> None:
    """Without OTEL_* or --metrics-address: setup says off, and a whole call through the gate (with the
    MCP server module loaded) imports no part of the OpenTelemetry SDK."""
    script = (
        "import asyncio, sys, uuid\n"
        "from opsgate import telemetry\n"
        "assert telemetry.setup(None, {}) is False and telemetry.ON is False\n"
        "from opsgate.server.main import build_gate\n"
        "from opsgate.server.config import Settings\n"
        "from opsgate.server import app\n"
        f"gate, cluster = build_gate(Settings(audit_log={str(tmp_path / 'a.jsonl')!r}, principal='alice'))\n"
        "result = asyncio.run(gate.call('whoami', {}, gate.caller))\n"
        "assert not result.is_error, result\n"
        "cluster.close()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter', "
        "'prometheus_client', 'opsgate.telemetry.sdk'))))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout  # logs go first (no structlog setup here)


def test_policy_reloads_and_their_lint_findings_are_counted(
    tmp_path: Path, cluster: SandboxCluster, otel: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    from opsgate.server.reload import reload_policy

    _, reader = otel
    gate, kube, _ = make_gate(tmp_path, cluster)
    kube.close()
    folder = tmp_path / "policy"
    (folder / "policy.csv").write_text(POLICY + "p, alice, team-a, deploy, write, Deny\n")  # an effect Casbin ignores
    assert reload_policy(gate, folder, gate.verbs) is False
    (folder / "policy.csv").write_text(POLICY + "g, bob, role:operator, team-*\n")
    assert reload_policy(gate, folder, gate.verbs) is True
    points = metric_points(reader)
    reloads = {attrs_of(p)["opsgate.result"]: p.value for p in points["opsgate.policy.reloads"]}
    assert reloads == {"failed": 1, "reloaded": 1}
    lint = {attrs_of(p)["opsgate.severity"]: p.value for p in points["opsgate.policy.lint_failures"]}
    assert lint.get("error", 0) >= 1
