"""The HTTP server's life: it stops on SIGTERM within a second or two with its stop record and a chain that
verifies, and it is not ready (nor lets a token through) while the issuer's keys cannot be had."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from opsgate.audit import verify_log
from tests.http.oidc import Issuer
from tests.http.served import INITIALIZE, MCP_HEADERS, http_server, mcp_session

pytestmark = pytest.mark.anyio


async def test_sigterm_stops_it_promptly_with_a_stop_record_and_a_sound_chain(tmp_path: Path) -> None:
    with http_server(tmp_path) as server:
        async with mcp_session(server.url) as session:
            assert not (await session.call_tool("whoami", {})).is_error
        with httpx.Client(timeout=10) as client:  # a session left open, as a client that just goes away
            assert client.post(server.url, json=INITIALIZE, headers=MCP_HEADERS).status_code == 200
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
        took = time.monotonic() - started
        stages = [r["stage"] for r in server.records()]
    assert took < 3.0, took
    assert stages[0] == "start" and stages[-1] == "stop", stages
    assert "decision" in stages and "outcome" in stages
    assert verify_log(server.audit_log).ok


def _dead_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_without_the_issuers_keys_it_is_not_ready_and_refuses_tokens(tmp_path: Path) -> None:
    with Issuer() as issuer, http_server(tmp_path, "--oauth-issuer", _dead_url()) as server:
        ready = httpx.get(server.base + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["oauth"] == "issuer keys not loaded"
        token = issuer.mint(server.url, iss=server.url)  # any token: its issuer's keys are not to be had
        answer = httpx.post(server.url, json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"},
                            timeout=10)
        assert answer.status_code == 401
        records = server.records()
    assert [r["rule"] for r in records if r["stage"] == "token_refused"] == ["issuer-unavailable"]


async def test_metrics_are_served_beside_mcp_when_prometheus_is_asked_for(tmp_path: Path) -> None:
    with http_server(tmp_path, env={"OTEL_METRICS_EXPORTER": "prometheus"}) as server:
        async with mcp_session(server.url) as session:
            assert not (await session.call_tool("whoami", {})).is_error
        metrics = httpx.get(server.base + "/metrics", timeout=10)
    assert metrics.status_code == 200, metrics.text[:500]
    assert "# TYPE" in metrics.text and "whoami" in metrics.text, metrics.text[:2000]


def _events(text: str) -> list[tuple[str, str]]:
    """(id, data) of each SSE event in a body."""
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "id" in fields:
            found.append((fields["id"], fields.get("data", "")))
    return found


def _session(client: httpx.Client, url: str) -> dict[str, str]:
    opened = client.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "MCP-Protocol-Version": "2025-11-25"})
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**MCP_HEADERS, **session})
    return session


def _whoami(client: httpx.Client, url: str, session: dict[str, str]) -> list[tuple[str, str]]:
    call = client.post(url, json={"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                  "params": {"name": "whoami", "arguments": {}}}, headers={**MCP_HEADERS, **session})
    events = _events(call.text)
    assert len(events) >= 2 and '"id":7' in events[-1][1], events  # a priming event, then the result
    return events


def test_a_dropped_stream_resumes_from_its_last_event_and_only_in_its_own_session(tmp_path: Path) -> None:
    """What a client does when a POST's SSE stream drops after its first event: GET with Last-Event-ID, and the
    rest of that stream (here the tool's result) is sent again from the event store. Every session's client
    numbers its requests alike: another session's stream 7 is never replayed into this one, and an event id of
    another session replays nothing."""
    with http_server(tmp_path) as server, httpx.Client(timeout=10) as client:
        first, second = _session(client, server.url), _session(client, server.url)
        events = _whoami(client, server.url, first)
        others = _whoami(client, server.url, second)  # the same request id, stored after first's priming event
        with client.stream("GET", server.url, headers={"Accept": "text/event-stream", "Last-Event-ID": events[0][0],
                                                       **first}) as resumed:
            assert resumed.status_code == 200
            seen = ""
            for chunk in resumed.iter_text():
                seen += chunk
                if '"id":7' in seen:
                    break
        replayed = [event for event in _events(seen) if event[1]]
        assert replayed == [events[-1]], (replayed, events, others)
        with client.stream("GET", server.url, headers={"Accept": "text/event-stream", "Last-Event-ID": others[0][0],
                                                       **first}) as stolen:
            got = ""
            for chunk in stolen.iter_text():  # a leak would come at once (the stream then stays open)
                got += chunk
                if '"id":7' in got:
                    break
        assert '"id":7' not in got, got
