"""The adversarial review of the second wave (H11), the team server's part: each test an attack on
``opsgate serve --http`` (with a test OIDC issuer on loopback), failing before its fix.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import server_env, shipped_policy
from tests.http.oidc import Issuer, raw
from tests.http.served import INITIALIZE, MCP_HEADERS, http_server, mcp_session


def test_garbage_tokens_cannot_flood_the_audit_log_yet_every_refusal_is_counted(tmp_path: Path) -> None:
    """Review item 1 (refused-token audit flooding): anyone who reaches the port could make the server fsync one
    audit line per garbage token, forever. Past a burst the refusals are counted, and the next record carries
    the count: records plus counts equal the refusals sent, and every one was still a 401."""
    sent = 100
    with Issuer() as issuer:
        policy = shipped_policy(tmp_path / "policy", "g, group:platform, role:operator, team-*")
        with http_server(tmp_path, "--oauth-issuer", issuer.url, "--policy", str(policy)) as server, \
                httpx.Client(timeout=10) as client:
            def refuse(n: int) -> None:
                answer = client.post(server.url, json=INITIALIZE,
                                     headers={**MCP_HEADERS, "Authorization": f"Bearer garbage-{n}"})
                assert answer.status_code == 401, answer.text

            started = time.monotonic()
            for n in range(sent):
                refuse(n)
            time.sleep(1.2)  # the bucket has a token again
            refuse(sent)
            allowed = 60 + int(time.monotonic() - started) + 2  # the burst, then one a second
            refused = [r for r in server.records() if r["stage"] == "token_refused"]
            assert len(refused) <= allowed, f"{len(refused)} audit records for {sent + 1} garbage tokens"
            assert refused[-1].get("unrecorded_before", 0) > 0
            assert len(refused) + sum(r.get("unrecorded_before", 0) for r in refused) == sent + 1
            for n in range(20):  # counted only, until the server stops: its last count is recorded then
                refuse(sent + 1 + n)
    refused = [r for r in server.records() if r["stage"] == "token_refused"]
    one_by_one = [r for r in refused if r["rule"] != "unrecorded"]  # the stop's count, unless the last was recorded
    assert len(one_by_one) + sum(r.get("unrecorded_before", 0) for r in refused) == sent + 21


class _OddIssuer(ThreadingHTTPServer):
    """An issuer whose discovery is right and whose key set is ``keys`` (bytes as sent)."""

    def __init__(self, keys: bytes) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": outer.url, "jwks_uri": f"{outer.url}/keys"}).encode()
                else:
                    body = keys
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the reader stopped at its cap
                    self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.mark.parametrize(("keys", "words"), [
    (b'["not", "a", "key", "set"]', "not a JSON Web Key Set"),
    (b'{"keys": [], "pad": "' + b"x" * (3 << 20) + b'"}', "answered more than"),
])
def test_an_odd_key_set_leaves_the_server_serving_not_ready_and_refusing_tokens(
        tmp_path: Path, keys: bytes, words: str) -> None:
    """Review item 1 (JWKS fetch caps): a key set that was a JSON list raised AttributeError out of the key
    fetch (the server died at start, or a request got a 500 with no audit record), and one of any size was
    read whole into memory. Now both are a failed fetch: not ready, tokens refused and audited, the reason
    logged."""
    issuer = _OddIssuer(keys)
    threading.Thread(target=issuer.serve_forever, daemon=True).start()
    try:
        with http_server(tmp_path, "--oauth-issuer", issuer.url) as server, httpx.Client(timeout=10) as client:
            assert client.get(server.base + "/readyz").status_code == 503
            answer = client.post(server.url, json=INITIALIZE,
                                 headers={**MCP_HEADERS, "Authorization": "Bearer a.b.c"})
            assert answer.status_code == 401
            token = raw({"alg": "RS256", "kid": "r1", "typ": "JWT"}, {"sub": "alice"}, b"sig")  # reaches the keys
            assert client.post(server.url, json=INITIALIZE,
                               headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}).status_code == 401
            assert words in server.stderr()
            refused = [r["rule"] for r in server.records() if r["stage"] == "token_refused"]
            assert refused == ["malformed", "issuer-unavailable"], refused
    finally:
        issuer.shutdown()
        issuer.server_close()


def test_an_http_body_past_the_line_cap_is_refused_unread_and_recorded(tmp_path: Path) -> None:
    """Review item 1 (request size caps): over stdio one line is capped (4 MiB), but the SDK's HTTP transport read
    a POST body whole into memory whatever its length. Now a body past the same cap is answered 413 and
    recorded (input_rejected, body-too-large), and the server goes on serving."""
    cap = 4 * 1024 * 1024
    big = b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "whoami", "arguments": {"x": "' \
        + b"a" * (cap + 10) + b'"}}}'
    with http_server(tmp_path) as server, httpx.Client(timeout=30) as client:
        answer = client.post(server.url, content=big, headers=MCP_HEADERS)
        assert answer.status_code == 413, answer.status_code
        assert "longer than" in answer.json()["error"]["message"]
        rejected = [r for r in server.records() if r["stage"] == "input_rejected"]
        assert [(r["rule"], r["bytes"] > cap) for r in rejected] == [("body-too-large", True)], rejected
        assert client.post(server.url, json=INITIALIZE, headers=MCP_HEADERS).status_code == 200


@pytest.mark.anyio
async def test_a_principal_named_like_a_group_gets_no_grant_of_the_group(tmp_path: Path) -> None:
    """Review item 1 (identity confusion): groups become policy subjects ``group:<name>``, and a token whose
    principal claim said ``group:platform`` (a username the user picked, with ``--oauth-principal-claim
    preferred_username``) was decided as that subject: the group's grants without being in it. Such a token is
    refused now, as is an empty group prefix (groups and principals would share names), at start."""
    with Issuer() as issuer:
        policy = shipped_policy(tmp_path / "policy", "g, group:platform, role:operator, team-*")
        flags = ("--oauth-issuer", issuer.url, "--policy", str(policy), "--oauth-principal-claim", "preferred_username")
        with http_server(tmp_path, *flags) as server, httpx.Client(timeout=10) as client:
            token = issuer.mint(server.url, preferred_username="Group:platform", groups=None)
            answer = client.post(server.url, json=INITIALIZE,
                                 headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"})
            assert answer.status_code == 401, answer.text
            assert [r["rule"] for r in server.records() if r["stage"] == "token_refused"] == ["principal-claim"]
            async with mcp_session(server.url, issuer.mint(server.url, preferred_username="alice")) as session:
                assert "deploy" in {t.name for t in (await session.list_tools()).tools}  # alice, in group platform
        empty = subprocess.run([sys.executable, "-m", "opsgate.server", "serve", "--http", "127.0.0.1:0",
                                "--oauth-issuer", issuer.url, "--oauth-group-prefix", "", "--audit-log",
                                str(tmp_path / "other.jsonl")], capture_output=True, text=True, timeout=60,
                               env=server_env({"HOME": str(tmp_path)}), stdin=subprocess.DEVNULL)
        assert empty.returncode != 0 and "group prefix must not be empty" in empty.stderr, empty.stderr[-500:]


def test_readyz_beyond_loopback_says_ready_or_not_and_nothing_of_what_it_found(tmp_path: Path) -> None:
    """Review item 1 (health endpoints leaking data): /readyz is unauthenticated, and beyond loopback it told
    anyone the cluster's version (or its error text, with the API server's address), the policy's hash, and the
    audit sink's path or database user@host. It says ready or not there now; the checks go to the log."""
    with Issuer() as issuer, http_server(tmp_path, "--oauth-issuer", issuer.url, "--oauth-resource",
                                         "https://opsgate.example/mcp", address="0.0.0.0:0") as server:
        port = server.base.rsplit(":", 1)[1]
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"ready": True}, ready.text
        logged = [json.loads(line) for line in server.stderr().splitlines() if '"readiness"' in line]
        assert logged and logged[-1]["checks"]["oauth"] == "issuer keys loaded", logged
