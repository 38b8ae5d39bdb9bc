"""Over the wire: a real ``opsgate serve`` over stdio, configured only by ``OTEL_*`` variables and
``--metrics-address``, exports its spans with OTLP/HTTP to a receiver in this test (decoded with the
``opentelemetry-proto`` messages) and serves Prometheus text (parsed with ``prometheus_client``'s parser).

The agent's trace continues into opsgate from ``_meta.traceparent``, and on to the sandbox API server, which
records the ``traceparent`` each request carried.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from mcp_types import RequestParamsMeta
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from opsgate.sandbox import SandboxCluster
from tests.harness import err, ok, serve, shipped_policy

pytestmark = pytest.mark.anyio

AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_SPAN = "00f067aa0ba902b7"
SECRET = "s3cr3t-otlp-token-do-not-log"
PASTED = "hunter2-pasted-into-a-tool-name"


class Receiver(HTTPServer):
    """An OTLP/HTTP receiver: every span it got, flattened, the metrics' names, the headers of the requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[dict[str, Any]] = []
        self.metrics: list[str] = []  # names of the metrics exported to /v1/metrics
        self.headers_seen: list[dict[str, str]] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/metrics":
            metrics = ExportMetricsServiceRequest()
            metrics.ParseFromString(body)
            with self.server.lock:
                self.server.metrics.extend(m.name for rm in metrics.resource_metrics for sm in rm.scope_metrics
                                           for m in sm.metrics)
            self._answer(ExportMetricsServiceResponse().SerializeToString())
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "name": span.name, "kind": span.kind, "scope": scope_spans.scope.name,
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex() or None, "status": span.status.code,
                        "start": span.start_time_unix_nano,
                        "attributes": {a.key: _value(a.value) for a in span.attributes}, "resource": resource,
                    })
        with self.server.lock:
            self.server.spans.extend(spans)
            self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        self._answer(ExportTraceServiceResponse().SerializeToString())

    def _answer(self, answer: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.01, namespaces=("team-a",)) as sandbox:
        yield sandbox


def tree(spans: list[dict[str, Any]], root: dict[str, Any], depth: int = 0) -> list[str]:
    """The span tree under ``root`` as indented lines: what the closing note shows of one deploy."""
    keys = ("gen_ai.tool.name", "mcp.method.name", "mcp.session.id", "opsgate.principal", "opsgate.decision",
            "opsgate.rule", "opsgate.call_id", "opsgate.audit.seq", "opsgate.audit.fsync_ms", "http.request.method",
            "url.full", "http.response.status_code", "error.type")
    shown = {k: root["attributes"][k] for k in keys if k in root["attributes"]}
    lines = [f"{'  ' * depth}{root['name']} [{root['span_id']}] {json.dumps(shown)}"]
    for child in sorted((s for s in spans if s["parent"] == root["span_id"]), key=lambda s: s["start"]):
        lines += tree(spans, child, depth + 1)
    return lines


def wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def scrape(address: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_a_stdio_session_exports_its_spans_joined_to_the_agent_and_the_api_server(
    tmp_path: Path, receiver: Receiver, cluster: SandboxCluster
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, team-*")
    env = {
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {SECRET}", "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
        "OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRIC_EXPORT_INTERVAL": "200",
    }
    traceparent = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"
    async with serve(tmp_path, "--principal", "alice", "--kubeconfig", str(kubeconfig), "--policy", str(policy),
                     "--metrics-address", "127.0.0.1:0", env=env) as served:
        arguments: dict[str, Any] = {"namespace": "team-a", "name": "web", "image": "nginx:1.27", "replicas": 1}
        meta = cast(RequestParamsMeta, {"traceparent": traceparent, "tracestate": "agent=1"})  # an open map
        deployed = ok(await served.session.call_tool("deploy", arguments, meta=meta))
        assert deployed["action"] == "created"
        ok(await served.call("list_workloads", {"namespace": "team-a"}))
        denied = err(await served.call("deploy", {"namespace": "prod", "name": "web", "image": "nginx:1.27"}))
        assert denied["code"] == "denied"
        unknown = err(await served.call(f"deploy password={PASTED}", {}))  # the caller's text as a tool name
        assert unknown["code"] == "invalid_arguments"
        wait_for(lambda: any(s["name"] == "tools/call deploy" and s["trace_id"] == AGENT_TRACE
                             for s in receiver.spans), "the deploy's request span")

        # Prometheus text from the endpoint, while the server serves stdio: counters match the calls made.
        started = next(json.loads(line) for line in served.stderr_path.read_text().splitlines()
                       if '"telemetry"' in line)
        families = scrape(started["metrics_address"])
        calls = {(s.labels["gen_ai_tool_name"], s.labels["opsgate_decision"], s.labels["opsgate_outcome"]): s.value
                 for s in families["opsgate_calls"].samples if s.name == "opsgate_calls_total"}
        assert calls == {("deploy", "allow", "ok"): 1.0, ("list_workloads", "allow", "ok"): 1.0,
                         ("deploy", "deny", "denied"): 1.0, ("-", "invalid", "invalid_arguments"): 1.0}
        timed = {(s.labels["gen_ai_tool_name"], s.labels.get("error_type") or None): s.value
                 for s in families["mcp_server_operation_duration_seconds"].samples if s.name.endswith("_count")}
        assert timed == {("deploy", None): 1.0, ("list_workloads", None): 1.0, ("deploy", "denied"): 1.0,
                         ("-", "invalid_arguments"): 1.0}, timed
        kube = sum(s.value for s in families["opsgate_kube_requests"].samples if s.name.endswith("_total"))
        assert kube >= 3  # the deploy's reads and its create, and the list
        records = served.records()
        wait_for(lambda: "opsgate.calls" in receiver.metrics, "the metrics over OTLP")
        assert {"mcp.server.operation.duration", "opsgate.audit.append.duration"} <= set(receiver.metrics)

    spans = list(receiver.spans)
    request = next(s for s in spans if s["name"] == "tools/call deploy" and s["trace_id"] == AGENT_TRACE)
    assert request["parent"] == AGENT_SPAN  # the agent's span, from _meta.traceparent
    assert request["kind"] == 2  # SERVER
    assert request["attributes"]["mcp.method.name"] == "tools/call"
    assert request["attributes"]["gen_ai.tool.name"] == "deploy"
    assert request["attributes"]["opsgate.principal"] == "alice"
    assert request["resource"]["service.name"] == "opsgate"
    assert request["resource"]["deployment.environment.name"] == "test"
    call = next(s for s in spans if s["parent"] == request["span_id"] and s["name"] == "execute_tool deploy")
    http = [s for s in spans if s["parent"] == call["span_id"] and s["kind"] == 3]  # CLIENT
    assert http and all(s["trace_id"] == AGENT_TRACE for s in http)

    # The API server got each request's traceparent: this trace, the HTTP span's id.
    received = {tuple(tp.split("-")[1:3]) for _, _, tp in cluster.traceparents}
    assert {(AGENT_TRACE, s["span_id"]) for s in http} <= received

    # The audit records and the trace find each other both ways.
    mine = [r for r in records if r.get("call_id") == call["attributes"]["opsgate.call_id"]]
    assert [r["stage"] for r in mine] == ["decision", "outcome"]
    assert all(r["trace"] == {"trace_id": AGENT_TRACE, "span_id": call["span_id"]} for r in mine)
    assert call["attributes"]["opsgate.audit.seq"] == mine[0]["seq"]

    # A tool name that is none of ours is the caller's text: no exported span is named by it, nor holds it.
    assert not [s for s in spans if PASTED in json.dumps(s)]
    assert any(s["name"] == "tools/call -" and s["attributes"]["gen_ai.tool.name"] == "-" for s in spans)
    assert any(s["name"] == "execute_tool" and s["attributes"]["gen_ai.tool.name"] == "-" for s in spans)

    # The OTLP headers reached the receiver and nothing else: a secret, never logged nor audited.
    assert any(h.get("authorization") == f"Bearer {SECRET}" for h in receiver.headers_seen)
    assert SECRET not in served.stderr_path.read_text()
    assert SECRET not in served.audit_log.read_text()

    picture = "\n".join([*tree(spans, request), "the API server received:",
                          *(f"  {m} {path} traceparent {tp}" for m, path, tp in cluster.traceparents
                            if tp.split("-")[1] == AGENT_TRACE)])
    (tmp_path / "deploy-trace.txt").write_text(picture)
    if os.environ.get("OPSGATE_TEST_SHOW_TRACE"):
        print(f"agent span {AGENT_SPAN} (trace {AGENT_TRACE})\n{picture}")
