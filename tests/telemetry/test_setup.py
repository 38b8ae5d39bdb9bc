"""Telemetry is asked for by the standard ``OTEL_*`` variables and ``--metrics-address``; asked for and impossible,
the server does not start (fail closed), and says what to do."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opsgate.telemetry import TelemetryUnavailable, split_address, wanted
from opsgate.telemetry.sdk import url_without_secrets
from tests.harness import server_env

pytestmark = pytest.mark.anyio


def test_unset_means_off_and_none_is_no_exporter() -> None:
    assert wanted({}, None) == ([], [])
    assert wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": " None "}, None) == ([], [])
    assert wanted({"OTEL_TRACES_EXPORTER": "otlp,console"}, None) == (["otlp", "console"], [])
    assert wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None) == ([], [])
    with pytest.raises(TelemetryUnavailable, match="OTEL_SDK_DISABLED"):
        wanted({"OTEL_SDK_DISABLED": "TRUE"}, "127.0.0.1:9464")


def test_addresses_and_urls() -> None:
    assert split_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert split_address("[::1]:0") == ("::1", 0)
    for bad in ("9464", ":9464", "host:", "host:port", "host:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            split_address(bad)
    assert url_without_secrets("https://u:p@api.example:6443/apis/x?labelSelector=a&token=t") == (
        "https://api.example:6443/apis/x"
    )


def test_the_service_is_opsgate_unless_the_environment_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from opsgate.telemetry.sdk import service_resource

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod")
    assert service_resource().attributes["service.name"] == "opsgate"
    assert service_resource().attributes["deployment.environment.name"] == "prod"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=gate-eu")
    assert service_resource().attributes["service.name"] == "gate-eu"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gate-us")
    assert service_resource().attributes["service.name"] == "gate-us"


def _serve(
    tmp_path: Path, *flags: str, env: dict[str, str], pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    extra = {"HOME": str(tmp_path), **env}
    if pythonpath is not None:
        extra["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", "opsgate.server", "serve", "--audit-log", str(tmp_path / "audit.jsonl"),
         "--principal", "alice", *flags],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False, env=server_env(extra),
    )


def test_export_asked_without_the_extra_refuses_to_start_naming_it(tmp_path: Path) -> None:
    """A stand-in for an environment without ``opsgate[otel]``: an ``opentelemetry.sdk`` that cannot be imported,
    ahead of the installed one on the path."""
    blocker = tmp_path / "blocker" / "opentelemetry" / "sdk"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'opentelemetry.sdk'\", "
                                         "name='opentelemetry.sdk')\n")
    run = _serve(tmp_path, env={"OTEL_TRACES_EXPORTER": "otlp"}, pythonpath=tmp_path / "blocker")
    assert run.returncode != 0
    assert 'pip install "opsgate[otel]"' in run.stderr and "OTEL_TRACES_EXPORTER=otlp" in run.stderr
    assert not (tmp_path / "audit.jsonl").exists() or "start" not in (tmp_path / "audit.jsonl").read_text()


@pytest.mark.parametrize(("env", "flags", "said"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, (), "'zipkin' is not an exporter opsgate has"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, (), "http/protobuf only"),
    ({"OTEL_SDK_DISABLED": "true"}, ("--metrics-address", "127.0.0.1:0"), "drop one of them"),
    ({}, ("--metrics-address", "9464"), "HOST:PORT"),
])
def test_asked_and_impossible_refuses_to_start(tmp_path: Path, env: dict[str, str], flags: tuple[str, ...],
                                               said: str) -> None:
    run = _serve(tmp_path, *flags, env=env)
    assert run.returncode != 0
    assert said in run.stderr, run.stderr


def test_a_metrics_port_taken_refuses_to_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _serve(tmp_path, "--metrics-address", f"127.0.0.1:{port}", env={})
    assert run.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr, run.stderr


async def test_the_exposition_for_an_http_transport_text_and_asgi() -> None:
    """What an HTTP transport mounts: ``prometheus_text`` and ``metrics_asgi_app`` serve the same counters."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from opsgate import telemetry
    from opsgate.telemetry.sdk import Telemetry

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    telemetry.install(Telemetry(None, provider, registry))
    try:
        telemetry.add(telemetry.POLICY_RELOADS, 2, {"opsgate.result": "reloaded"})
        text = telemetry.prometheus_text().decode()
        app = telemetry.metrics_asgi_app()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"", "headers": []}
        await app(scope, receive, send)
    finally:
        telemetry.shutdown()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [sample] = [s for s in families["opsgate_policy_reloads"].samples if s.name.endswith("_total")]
    assert sample.labels["opsgate_result"] == "reloaded" and sample.value == 2.0
    assert sent[0]["status"] == 200
    assert b'opsgate_policy_reloads_total{' in b"".join(m.get("body", b"") for m in sent)
    assert telemetry.prometheus_text() == b"" and telemetry.metrics_asgi_app() is None  # off again
