"""What telemetry costs a call: off (the default) and on, taking turns call by call in one process.

The gate in process (no stdio, so the difference is not lost in the transport's noise), on a no-op tool
(policy, two fsynced records) and on ``list_workloads`` against a sandbox in this process (one API request,
so one HTTP span). On: every span exported through a batch processor to an exporter that drops them, and
every metric aggregated (an in-memory reader, never collected during the runs), as a collector would cost
minus the network. Off: ``telemetry.ON`` is False, as in a server started without OTEL_* or
--metrics-address; the hooks it passes are counted and timed apart (``hooks_off_ns``), since the tree
without them cannot run in the same process.
"""

from __future__ import annotations

import statistics
import time
import timeit
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

Row = Callable[..., None]


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def hooks_off_ns() -> float:
    """The off path of one call's hooks, in ns: the flag tests (answer, each append, the fsync) and the no-op
    span of the policy decision, as a call with two appends passes them."""
    from opsgate import telemetry

    def once() -> None:
        if telemetry.ON:
            pass
        with telemetry.span("opsgate.policy.decide"):
            pass
        for _ in range(2):
            if telemetry.ON:
                pass
            if telemetry.ON:
                pass

    runs = 200_000
    return min(timeit.repeat(once, number=runs, repeat=5)) / runs * 1e9


def sdk_floor_us(on: Any) -> float:
    """The SDK's own price for what a no-op call records when on, in us: three nested spans with their
    attributes and five metric points with their labels, nothing of opsgate around them."""
    from opsgate.telemetry import names

    labels = {"gen_ai.tool.name": "noop", "opsgate.decision": "allow", "opsgate.outcome": "ok"}

    def once() -> None:
        with on.span("execute_tool noop", {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "noop",
                                           "opsgate.principal": "bench", "mcp.session.id": "s"},
                     "internal") as call:
            with on.span("opsgate.policy.decide", None, "internal"):
                pass
            call.set_attributes({"opsgate.call_id": "c", "opsgate.decision": "allow", "opsgate.rule": "r"})
            with on.span("opsgate.audit.append", {"opsgate.audit.records": 2}, "internal") as append:
                append.set_attribute("opsgate.audit.seq", 1)
            on.add(names.POLICY_DECISIONS, 1, {"opsgate.decision": "allow", "opsgate.denial": "-"})
            on.record(names.AUDIT_FSYNC_DURATION, 0.001, None)
            on.record(names.AUDIT_APPEND_DURATION, 0.001, {"opsgate.audit.ok": True})
        on.add(names.CALLS, 1, labels)
        on.record(names.CALL_DURATION, 0.001, {"mcp.method.name": "tools/call", "gen_ai.tool.name": "noop"})

    runs = 3000
    return min(timeit.repeat(once, number=runs, repeat=5)) / runs * 1e6


async def run(tmp: Path, row: Row, n: int = 1500) -> None:

    from bench.noop_tool import noop_spec
    from opsgate import telemetry
    from opsgate.audit import AuditLog
    from opsgate.policies import load_policy
    from opsgate.sandbox import SandboxCluster
    from opsgate.server.catalog import server_tools
    from opsgate.server.config import Settings
    from opsgate.server.gate import Gate
    from opsgate.server.logs import configure_logging
    from opsgate.server.records import Caller
    from opsgate.telemetry.sdk import Telemetry
    from opsgate.tools.kube import Kube

    configure_logging("info")
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
    on = Telemetry(tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()]))
    with SandboxCluster(rollout_delay=0.01, namespaces=("team-a",)) as cluster:
        telemetry.install(on)  # the Kube is built with telemetry on (its request hook); turned off per call below
        kube = Kube.from_kubeconfig_dict(cluster.kubeconfig())
        caller = Caller("bench", "config", "bench", "bench", "0", uuid.uuid4().hex)
        admin = tmp / "telemetry-admin.csv"
        admin.write_text("p, bench, *, *, *, allow\n")
        policy = load_policy(admin, known_tools={"noop": "read", "list_workloads": "read"})
        gate = Gate(policy=policy, audit=AuditLog(tmp / "telemetry.jsonl"), caller=caller)
        specs = [s for s in server_tools(Settings(audit_log=tmp / "x.jsonl"), kube, lambda: gate)
                 if s.name == "list_workloads"]
        gate.register([*specs, noop_spec()])
        calls: dict[str, tuple[str, dict[str, Any]]] = {
            "noop": ("noop", {}), "list_workloads": ("list_workloads", {"namespace": "team-a"}),
        }
        for label, (tool, arguments) in calls.items():
            times: dict[str, list[float]] = {"off": [], "on": []}
            for i in range(n + 100):
                for mode in ("off", "on") if i % 2 else ("on", "off"):  # alternate which goes first
                    if mode == "on":
                        telemetry.install(on)
                    else:
                        telemetry._impl, telemetry.ON = None, False
                    started = time.perf_counter_ns()
                    result = await gate.call(tool, arguments, caller)
                    if i >= 100:
                        times[mode].append((time.perf_counter_ns() - started) / 1e6)
                    assert not result.is_error, result.content
            off, on_ = statistics.median(times["off"]), statistics.median(times["on"])
            row(f"telemetry: {label} per call p50, off / on (in process)", f"{off:.3f} / {on_:.3f} ms",
                f"+{(on_ - off) * 1000:.0f} us on", f"{n} calls each, taking turns")
        telemetry._impl, telemetry.ON = None, False
        kube.close()
        gate.audit.close()
    floor = sdk_floor_us(on)
    row("telemetry: on, the SDK alone for a no-op call's spans and points", f"{floor:.0f} us", "",
        "the floor of the +us on above")
    tracer_provider.shutdown()
    hooks = hooks_off_ns()
    row("telemetry: off, the hooks one call passes", f"{hooks:.0f} ns", "",
        "no added cost beyond noise: compare with the p50s above")
