"""The OpenTelemetry SDK behind :mod:`opsgate.telemetry`: imported only when telemetry is on.

The SDK's classes read their own variables: ``Resource.create`` reads ``OTEL_RESOURCE_ATTRIBUTES`` and
``OTEL_SERVICE_NAME``, ``TracerProvider`` reads ``OTEL_TRACES_SAMPLER(_ARG)``, the OTLP exporters read
``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout, compression; headers are secrets and are never
logged here), the batch processor and periodic reader their ``OTEL_BSP_*`` and ``OTEL_METRIC_EXPORT_*``.
What is decided here is only which exporter each name means: ``otlp`` is OTLP over HTTP/protobuf (the
spec's default protocol; the Python SDK's own default, gRPC, is not in the extra), ``console`` writes to
stderr (stdout belongs to MCP), ``prometheus`` is a scrape endpoint.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.metrics import Counter, Histogram, Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry

from . import TelemetryUnavailable, names, split_address

SCOPE: Final = "opsgate"
_KINDS: Final = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT, "server": SpanKind.SERVER}
# Seconds: the HTTP conventions' advice, from half a millisecond (an fsync, a sandbox read) to 10 s.
SECONDS_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
                          1.0, 2.5, 5.0, 7.5, 10.0)
BYTES_BUCKETS: Final = tuple(float(64 * 4**i) for i in range(10))  # 64 B .. 16 MiB
DEFAULT_PROMETHEUS: Final = ("localhost", 9464)  # OTEL_EXPORTER_PROMETHEUS_HOST / _PORT defaults


def url_without_secrets(url: str) -> str:
    """``url.full`` as recorded: scheme, host, port and path; a user:password and the query are left out. Pure."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def service_resource() -> Resource:
    """The resource from ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` (the SDK reads them), named
    ``opsgate`` when neither names the service (the SDK would say ``unknown_service``)."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "opsgate"}))
    return resource


def _span_exporters(exporter_names: Sequence[str], env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in exporter_names:
        if name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            _http_protobuf_only(protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter(out=sys.stderr))
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: {name!r} is not an exporter opsgate has (otlp, console, none)")
    return exporters


def _http_protobuf_only(protocol: str | None) -> None:
    if protocol not in (None, "", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: opsgate exports OTLP over http/protobuf only")


def _metric_readers(exporter_names: Sequence[str], env: Mapping[str, str]) -> tuple[list[MetricReader], bool]:
    """The push readers, and whether a Prometheus reader was asked for by name."""
    readers: list[MetricReader] = []
    prometheus = False
    for name in exporter_names:
        if name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            _http_protobuf_only(protocol)
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif name == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
        elif name == "prometheus":
            prometheus = True
        else:
            raise ValueError(
                f"OTEL_METRICS_EXPORTER: {name!r} is not an exporter opsgate has (otlp, prometheus, console, none)"
            )
    return readers, prometheus


@dataclass
class _HttpCall:
    """The span of one HTTP request, remembering what the duration metric is labelled with."""

    span: trace.Span
    labels: dict[str, Any]
    status: int | None = None
    error_type: str | None = field(default=None)

    def set_attribute(self, key: str, value: Any) -> None:
        if key == "http.response.status_code":
            self.status = int(value)
            self.labels[key] = self.status
        self.span.set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)


class Telemetry:
    """A tracer and a meter with opsgate's instruments, and what must be shut down with them."""

    def __init__(self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None,
                 registry: CollectorRegistry | None = None, http_server: Any = None) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.registry = registry
        self.http_server = http_server
        self._tracer = tracer_provider.get_tracer(SCOPE) if tracer_provider is not None else None
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        if meter_provider is not None:
            self._instruments(meter_provider.get_meter(SCOPE))

    def _instruments(self, meter: Meter) -> None:
        for name in names.COUNTERS:
            self._counters[name] = meter.create_counter(name, unit="{count}")
        for name, unit in names.HISTOGRAMS.items():
            buckets = SECONDS_BUCKETS if unit == "s" else BYTES_BUCKETS
            self._histograms[name] = meter.create_histogram(
                name, unit=unit, explicit_bucket_boundaries_advisory=list(buckets)
            )

    @classmethod
    def from_env(cls, traces: Sequence[str], metrics: Sequence[str], metrics_address: str | None,
                 env: Mapping[str, str]) -> Telemetry:
        """Built from the variables and set as the global providers (the MCP SDK's request spans use them)."""
        try:
            span_exporters = _span_exporters(traces, env)
            readers, prometheus = _metric_readers(metrics, env)
        except ValueError as exc:
            raise TelemetryUnavailable(str(exc)) from None
        resource = service_resource()
        tracer_provider = None
        if span_exporters:
            tracer_provider = TracerProvider(resource=resource)
            for exporter in span_exporters:
                tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(tracer_provider)
        registry = None
        address: tuple[str, int] | None = None
        if metrics_address is not None or prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            registry = CollectorRegistry()
            readers.append(PrometheusMetricReader(registry=registry))
            try:
                address = split_address(metrics_address) if metrics_address is not None else (
                    env.get("OTEL_EXPORTER_PROMETHEUS_HOST") or DEFAULT_PROMETHEUS[0],
                    int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT") or DEFAULT_PROMETHEUS[1]),
                )
            except ValueError as exc:
                raise TelemetryUnavailable(f"--metrics-address: {exc}") from None
        meter_provider = None
        if readers:
            from opentelemetry import metrics as otel_metrics

            meter_provider = MeterProvider(resource=resource, metric_readers=readers)
            otel_metrics.set_meter_provider(meter_provider)
        http_server = None
        if registry is not None and address is not None:
            from prometheus_client import start_http_server

            try:
                http_server, _thread = start_http_server(address[1], address[0], registry=registry)
            except OSError as exc:
                raise TelemetryUnavailable(f"the metrics endpoint cannot listen on {address[0]}:{address[1]}: "
                                  f"{exc.strerror or exc}") from None
        return cls(tracer_provider, meter_provider, registry, http_server)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where the scrape endpoint listens (the port the OS chose for port 0)."""
        if self.http_server is None:
            return None
        host, port = self.http_server.server_address[:2]
        return str(host), int(port)

    def shutdown(self) -> None:
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()

    # ---------------------------------------------------------------- traces

    @contextmanager
    def _span(self, name: str, attributes: Mapping[str, Any] | None, kind: str) -> Iterator[trace.Span]:
        assert self._tracer is not None
        # No exception text on a span: it may quote what a caller sent; the class name says enough.
        with self._tracer.start_as_current_span(name, kind=_KINDS[kind], attributes=attributes,
                                                record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                self.fail(span, type(exc).__qualname__)
                raise

    def span(self, name: str, attributes: Mapping[str, Any] | None, kind: str) -> AbstractContextManager[Any]:
        if self._tracer is None:
            from . import NOOP

            return NOOP
        return self._span(name, attributes, kind)

    @staticmethod
    def fail(span: Any, error_type: str, description: str | None = None) -> None:
        span.set_attribute("error.type", error_type)
        if isinstance(span, trace.Span):
            span.set_status(Status(StatusCode.ERROR, description))
        elif isinstance(span, _HttpCall):
            span.error_type = error_type
            span.span.set_status(Status(StatusCode.ERROR, description))

    @staticmethod
    def inject(headers: MutableMapping[str, str]) -> None:
        propagate.inject(headers)

    @staticmethod
    def current() -> Any:
        return trace.get_current_span()

    @staticmethod
    def trace_ids() -> dict[str, str] | None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid or not context.trace_flags.sampled:  # a span not exported is no one's to find
            return None
        return {"trace_id": trace.format_trace_id(context.trace_id), "span_id": trace.format_span_id(context.span_id)}

    @contextmanager
    def http_span(self, method: str, url: str, peer: str) -> Iterator[Any]:
        parts = urlsplit(url)
        attributes: dict[str, Any] = {
            "http.request.method": method, "server.address": parts.hostname or "", "url.full": url_without_secrets(url),
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
        started = time.perf_counter()
        with self._span(method, attributes, "client") if self._tracer is not None else _nothing() as span:
            call = _HttpCall(span, {"http.request.method": method, "opsgate.peer": peer})
            try:
                yield call
            except BaseException as exc:
                call.error_type = call.error_type or type(exc).__qualname__
                raise
            finally:
                status = call.status
                if status is not None and status >= 400 and call.error_type is None:
                    self.fail(call, str(status))
                if call.error_type is not None:
                    call.labels["error.type"] = call.error_type
                self.record(names.HTTP_CLIENT_DURATION, time.perf_counter() - started, call.labels)
                counter = names.KUBE_REQUESTS if peer == "kubernetes" else names.INFERENCE_REQUESTS
                self.add(counter, 1, {k: v for k, v in call.labels.items() if k != "opsgate.peer"})

    # ---------------------------------------------------------------- metrics

    def add(self, name: str, value: int, attributes: Mapping[str, Any] | None) -> None:
        counter = self._counters.get(name)
        if counter is not None:
            counter.add(value, attributes)

    def record(self, name: str, value: float, attributes: Mapping[str, Any] | None) -> None:
        histogram = self._histograms.get(name)
        if histogram is not None:
            histogram.record(value, attributes)

    def prometheus_text(self) -> bytes:
        if self.registry is None:
            return b""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def metrics_asgi_app(self) -> Any:
        if self.registry is None:
            return None
        from prometheus_client import make_asgi_app

        return make_asgi_app(self.registry)


@contextmanager
def _nothing() -> Iterator[trace.Span]:
    yield trace.INVALID_SPAN
