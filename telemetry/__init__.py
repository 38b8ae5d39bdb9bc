"""OpenTelemetry traces and metrics for opsgate, off unless the ``OTEL_*`` environment or ``--metrics-address``
asks for them.

Off, nothing here imports ``opentelemetry`` and every hook is one test of the module flag :data:`ON`
(callers write ``if telemetry.ON:`` around whatever they would compute for a span), or a shared no-op
context manager. On, :func:`setup` builds the SDK (``telemetry/sdk.py``, the optional extra
``opsgate[otel]``) from the standard variables, which the SDK's own classes read.

A leaf beside ``vocab``: the gate, the tools and the audit writer import it; it imports nothing of ours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol

from .names import (
    AUDIT_APPEND_DURATION,
    AUDIT_FSYNC_DURATION,
    CALL_DURATION,
    CALLS,
    CONFIRMATIONS,
    HTTP_CLIENT_DURATION,
    INFERENCE_REQUEST_SIZE,
    INFERENCE_REQUESTS,
    INFERENCE_RESPONSE_SIZE,
    KUBE_REQUESTS,
    POLICY_DECISIONS,
    POLICY_LINT_FAILURES,
    POLICY_RELOADS,
    RATE_LIMIT_REFUSALS,
)

if TYPE_CHECKING:
    from .sdk import Telemetry

__all__ = [
    "AUDIT_APPEND_DURATION", "AUDIT_FSYNC_DURATION", "CALLS", "CALL_DURATION", "CONFIRMATIONS",
    "HTTP_CLIENT_DURATION", "INFERENCE_REQUESTS", "INFERENCE_REQUEST_SIZE", "INFERENCE_RESPONSE_SIZE",
    "KUBE_REQUESTS", "NOOP", "ON", "POLICY_DECISIONS", "POLICY_LINT_FAILURES", "POLICY_RELOADS",
    "RATE_LIMIT_REFUSALS", "Span", "TelemetryUnavailable", "add", "audit_fsync", "current", "fail", "http_span",
    "inject", "install", "metrics_address", "metrics_asgi_app", "prometheus_text", "record", "setup", "shutdown",
    "span", "split_address", "trace_ids", "wanted",
]

#: Whether telemetry is on. Read as ``telemetry.ON`` (never ``from ... import ON``): :func:`setup` sets it.
ON: bool = False
_impl: Telemetry | None = None

EXTRA_HINT: Final = 'pip install "opsgate[otel]"'


class TelemetryUnavailable(Exception):
    """Export was asked for (``OTEL_*_EXPORTER``, ``--metrics-address``) and cannot be done: the server stops."""


class Span(Protocol):
    """What the hooks do with a span: the SDK's span, or :data:`NOOP` when telemetry is off."""

    def set_attribute(self, key: str, value: Any) -> None: ...

    def set_attributes(self, attributes: Mapping[str, Any]) -> None: ...


class _NoopSpan:
    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NOOP: Final = _NoopSpan()


def split_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as a host and a port; ValueError naming what is wrong. Pure."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9464)")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def exporter_names(env: Mapping[str, str], variable: str) -> list[str]:
    """The exporters an ``OTEL_*_EXPORTER`` variable names, ``none`` and blanks left out. Pure."""
    names = [part.strip().lower() for part in (env.get(variable) or "").split(",")]
    return [name for name in names if name and name != "none"]


def wanted(env: Mapping[str, str], metrics_address: str | None) -> tuple[list[str], list[str]]:
    """The trace and metric exporters asked for. Unset means off (the SDK's own default, ``otlp``, would
    make every server send to localhost:4318 unasked); ``OTEL_SDK_DISABLED=true`` turns both off, and
    then a ``--metrics-address`` is a contradiction the caller is told about. Pure."""
    traces = exporter_names(env, "OTEL_TRACES_EXPORTER")
    metrics = exporter_names(env, "OTEL_METRICS_EXPORTER")
    if _is_true(env.get("OTEL_SDK_DISABLED")):
        if metrics_address is not None:
            raise TelemetryUnavailable("--metrics-address asks for metrics, and OTEL_SDK_DISABLED=true turns "
                                       "OpenTelemetry off: drop one of them")
        return [], []
    return traces, metrics


def setup(metrics_address: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Turn telemetry on when the environment or ``metrics_address`` asks for it; return whether it is on.

    Raises :class:`TelemetryUnavailable` when export was asked for and the extra is not installed, an
    exporter is unknown, or the metrics address cannot be bound: a server asked to export does not start
    without it.
    """
    global ON, _impl
    environment = os.environ if env is None else env
    traces, metrics = wanted(environment, metrics_address)
    if not traces and not metrics and metrics_address is None:
        return False
    try:
        from . import sdk
    except ImportError as exc:
        asked = ", ".join(filter(None, [
            f"OTEL_TRACES_EXPORTER={','.join(traces)}" if traces else "",
            f"OTEL_METRICS_EXPORTER={','.join(metrics)}" if metrics else "",
            f"--metrics-address {metrics_address}" if metrics_address else "",
        ]))
        raise TelemetryUnavailable(f"{asked} asks for OpenTelemetry export, and its packages are not installed "
                                   f"({exc.name or exc}): {EXTRA_HINT}") from None
    _impl = sdk.Telemetry.from_env(traces, metrics, metrics_address, environment)
    ON = True
    return True


def install(impl: Telemetry) -> None:
    """Turn telemetry on with a ready :class:`~opsgate.telemetry.sdk.Telemetry` (tests: in-memory exporters)."""
    global ON, _impl
    _impl = impl
    ON = True


def shutdown() -> None:
    """Flush and stop the exporters and the metrics endpoint; telemetry is off afterwards."""
    global ON, _impl
    impl, _impl, ON = _impl, None, False
    if impl is not None:
        impl.shutdown()


def span(
    name: str, attributes: Mapping[str, Any] | None = None, kind: str = "internal"
) -> AbstractContextManager[Span]:
    """A child of the current span (the MCP request's, the call's); :data:`NOOP` when off."""
    if _impl is None:
        return NOOP
    return _impl.span(name, attributes, kind)


def fail(target: Span, error_type: str, description: str | None = None) -> None:
    """Mark ``target`` failed, as the conventions say: ``error.type`` and an error status."""
    if _impl is not None:
        _impl.fail(target, error_type, description)


def inject(headers: MutableMapping[str, str]) -> None:
    """W3C ``traceparent`` (and ``tracestate``) of the current span into outgoing request headers."""
    if _impl is not None:
        _impl.inject(headers)


def trace_ids() -> dict[str, str] | None:
    """``{trace_id, span_id}`` of the current span (hex), for an audit record; None when off or not sampled."""
    return _impl.trace_ids() if _impl is not None else None


def current() -> Span:
    """The current span (the MCP SDK's request span inside a handler), or :data:`NOOP`."""
    return _impl.current() if _impl is not None else NOOP


def add(name: str, value: int = 1, attributes: Mapping[str, Any] | None = None) -> None:
    """Add to the counter ``name`` (telemetry/names.py)."""
    if _impl is not None:
        _impl.add(name, value, attributes)


def record(name: str, value: float, attributes: Mapping[str, Any] | None = None) -> None:
    """Record ``value`` in the histogram ``name`` (telemetry/names.py)."""
    if _impl is not None:
        _impl.record(name, value, attributes)


def http_span(method: str, url: str, peer: str) -> AbstractContextManager[Span]:
    """A CLIENT span for one HTTP request (HTTP client conventions), its duration recorded as
    ``http.client.request.duration``; ``peer`` says whom (``kubernetes``, ``model-server``)."""
    if _impl is None:
        return NOOP
    return _impl.http_span(method, url, peer)


def audit_fsync(seconds: float) -> None:
    """One fsync of the audit log: its histogram, and an attribute of the append span it served."""
    if _impl is not None:
        _impl.record(AUDIT_FSYNC_DURATION, seconds, None)
        _impl.current().set_attribute("opsgate.audit.fsync_ms", round(seconds * 1000, 3))


def prometheus_text() -> bytes:
    """The metrics in the Prometheus text format (what the scrape endpoint serves); empty when off."""
    return _impl.prometheus_text() if _impl is not None else b""


def metrics_address() -> str | None:
    """``HOST:PORT`` the scrape endpoint listens on (the port the OS chose for port 0), or None."""
    address = _impl.metrics_address if _impl is not None else None
    return f"{address[0]}:{address[1]}" if address is not None else None


def metrics_asgi_app() -> Any:
    """An ASGI app serving :func:`prometheus_text` (for an HTTP transport to mount); None when no Prometheus
    reader is set up."""
    return _impl.metrics_asgi_app() if _impl is not None else None
