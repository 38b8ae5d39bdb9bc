"""The team server as an OAuth 2.1 resource server: real ``opsgate serve --http``, a test OIDC issuer on
loopback (keys made here), and the Python SDK's streamable HTTP client or raw HTTP for what a client sends.

A valid token works and its principal and groups reach the gate and the audit log; every bad token is a
401 naming the metadata, audited (rule, kid, iss; never the token), with nothing run.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import shipped_policy
from tests.http.oidc import Issuer, raw
from tests.http.served import INITIALIZE, MCP_HEADERS, HttpServer, http_server, mcp_session

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with Issuer() as running:
        yield running


@pytest.fixture(scope="module")
def server(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    tmp = tmp_path_factory.mktemp("oauth")
    policy = shipped_policy(tmp / "policy", "g, group:platform, role:operator, team-*")
    with http_server(tmp, "--oauth-issuer", issuer.url, "--policy", str(policy)) as running:
        yield running


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(issuer: Issuer, audience: str) -> str:
    """The classic confusion attack: HMAC over the token with the issuer's public key as the shared secret."""
    head = _b64(json.dumps({"alg": "HS256", "kid": "r1", "typ": "JWT"}).encode())
    body = _b64(json.dumps(issuer.claims(audience)).encode())
    mac = hmac.new(issuer.public_pem(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


async def test_a_valid_token_works_and_its_principal_and_groups_are_audited(issuer: Issuer,
                                                                          server: HttpServer) -> None:
    token = issuer.mint(server.url)
    async with mcp_session(server.url, token) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert {"whoami", "list_workloads", "scale", "deploy"} <= tools  # operator through group:platform
        whoami = await session.call_tool("whoami", {})
        assert not whoami.is_error, whoami.content
        assert whoami.structured_content["principal"] == "alice"
        assert whoami.structured_content["principal_source"] == "oauth"
        listed = await session.call_tool("list_workloads", {"namespace": "team-a"})
        assert not listed.is_error, listed.content
        # A write only the group's role allows: decided for alice through group:platform (nothing to scale).
        await session.call_tool("scale", {"namespace": "team-a", "name": "absent", "replicas": 2, "dry_run": True})
    records = server.records()
    read = [r for r in records if r.get("stage") == "decision" and r["tool"] == "list_workloads"][-1]
    assert read["principal"] == "alice" and read["principal_source"] == "oauth"
    assert read["groups"] == ["group:platform"] and read["decision"]["effect"] == "allow"
    write = [r for r in records if r.get("stage") == "decision" and r["tool"] == "scale"][-1]
    assert write["decision"]["effect"] == "allow", write["decision"]
    assert "g, group:platform, role:operator, team-*" in " ".join(write["decision"]["via"]), write["decision"]
    assert token not in server.audit_log.read_text()


async def test_another_principal_gets_only_what_the_policy_gives_it(issuer: Issuer, server: HttpServer) -> None:
    """bob has no groups: role:everyone's viewer, so no write tools are listed and a scale is denied."""
    async with mcp_session(server.url, issuer.mint(server.url, sub="bob", groups=[])) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert "list_workloads" in tools and "scale" not in tools
        denied = await session.call_tool("scale", {"namespace": "team-a", "name": "web", "replicas": 2})
        error = json.loads(denied.content[0].text)["error"]  # type: ignore[union-attr]
        assert error["code"] == "denied" and error["errors"][0]["rule"] == "policy", error
    assert any(r.get("principal") == "bob" and r.get("tool") == "scale" for r in server.records())


def _bad_tokens(issuer: Issuer, url: str) -> dict[str, tuple[str, str]]:
    """name -> (token, the rule its refusal must name)."""
    now = int(time.time())
    claims = issuer.claims(url)
    return {
        "expired": (issuer.mint(url, iat=now - 7200, nbf=now - 7200, exp=now - 3600), "expired"),
        "wrong-audience": (issuer.mint(url, aud="some-other-client"), "wrong-audience"),
        "another-resource": (issuer.mint(url, aud=url.removesuffix("/mcp") + "/other-mcp"), "wrong-audience"),
        "wrong-issuer": (issuer.mint(url, iss="http://issuer.invalid"), "wrong-issuer"),
        "unknown-key": (issuer.mint(url, kid="not-published", key=issuer.stranger), "unknown-key"),
        "forged-with-a-published-kid": (issuer.mint(url, kid="r1", key=issuer.stranger), "bad-signature"),
        "alg-none": (raw({"alg": "none", "kid": "r1", "typ": "JWT"}, claims), "alg-not-allowed"),
        "hs256-with-the-public-key": (hs256_with_public_key(issuer, url), "alg-not-allowed"),
        "not-yet-valid": (issuer.mint(url, nbf=now + 3600), "not-yet-valid"),
        "malformed": ("not-a-jwt", "malformed"),
    }


def test_each_bad_token_is_a_401_naming_the_metadata_audited_with_nothing_run(issuer: Issuer,
                                                                              server: HttpServer) -> None:
    before = len(server.records())
    bad = _bad_tokens(issuer, server.url)
    tools_call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                  "params": {"name": "whoami", "arguments": {}}}
    metadata = f'resource_metadata="{server.base}/.well-known/oauth-protected-resource/mcp"'
    with httpx.Client(timeout=10) as client:
        for name, (token, _rule) in bad.items():
            for body in (INITIALIZE, tools_call):
                answer = client.post(server.url, json=body, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"})
                assert answer.status_code == 401, (name, answer.status_code, answer.text)
                challenge = answer.headers["www-authenticate"]
                assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, (name, challenge)
                assert metadata in challenge, (name, challenge)
    records = server.records()[before:]
    refused = [r for r in records if r["stage"] == "token_refused"]
    assert [r["rule"] for r in refused] == [rule for _, rule in bad.values() for _ in range(2)], refused
    assert not [r for r in records if r["stage"] in ("decision", "outcome")], "a refused token reached the gate"
    text = server.audit_log.read_text()
    for token, _ in bad.values():
        assert all(part not in text for part in token.split(".") if len(part) > 8), "token content in the audit log"
    assert refused[0]["principal"] == "-" and "kid" in refused[0] and "iss" in refused[0]


def test_no_token_is_a_401_pointing_at_the_metadata_without_an_error_code(server: HttpServer) -> None:
    answer = httpx.post(server.url, json=INITIALIZE, headers=MCP_HEADERS, timeout=10)
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge == f'Bearer resource_metadata="{server.base}/.well-known/oauth-protected-resource/mcp"'


def test_protected_resource_metadata(issuer: Issuer, server: HttpServer) -> None:
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        doc: dict[str, Any] = httpx.get(server.base + path, timeout=10).json()
        assert doc["resource"] == server.url
        assert doc["authorization_servers"] == [issuer.url]
        assert doc["bearer_methods_supported"] == ["header"]
        assert set(doc["resource_signing_alg_values_supported"]) == {"RS256", "ES256", "EdDSA"}


async def test_every_allowed_algorithm_verifies(issuer: Issuer, server: HttpServer) -> None:
    for kid in ("r1", "e1", "d1"):
        async with mcp_session(server.url, issuer.mint(server.url, kid=kid)) as session:
            assert not (await session.call_tool("whoami", {})).is_error


async def test_a_session_cannot_be_used_with_another_principals_token(issuer: Issuer, server: HttpServer) -> None:
    alice = issuer.mint(server.url)
    with httpx.Client(timeout=10) as client:
        opened = client.post(server.url, json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {alice}"})
        session = opened.headers["mcp-session-id"]
        bob = issuer.mint(server.url, sub="bob")
        answer = client.post(server.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                             headers={**MCP_HEADERS, "Authorization": f"Bearer {bob}", "Mcp-Session-Id": session})
        assert answer.status_code == 404, answer.text


def test_bad_requests_get_clear_http_errors(issuer: Issuer, server: HttpServer) -> None:
    token = issuer.mint(server.url)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=10) as client:
        unknown = client.post(server.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                              headers={**MCP_HEADERS, **auth, "Mcp-Session-Id": "no-such-session"})
        assert unknown.status_code == 404
        no_sse = client.post(server.url, json=INITIALIZE,
                             headers={"Content-Type": "application/json", "Accept": "application/json", **auth})
        assert no_sse.status_code == 406, no_sse.text
        long_token = client.post(server.url, json=INITIALIZE,
                                 headers={**MCP_HEADERS, "Authorization": "Bearer " + "x" * 20_000})
        assert long_token.status_code == 401 and "longer than" in long_token.json()["error_description"]
        try:  # past 64 KiB of headers the HTTP layer stops reading: a 400, or the connection closed mid-send
            huge = client.post(server.url, json=INITIALIZE,
                               headers={**MCP_HEADERS, "Authorization": "Bearer " + "x" * 200_000})
            assert huge.status_code == 400, huge.status_code
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            pass
        assert client.get(server.base + "/healthz").text == "ok"  # still serving


def test_health_and_readiness(server: HttpServer) -> None:
    assert httpx.get(server.base + "/healthz", timeout=10).status_code == 200
    ready = httpx.get(server.base + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["oauth"] == "issuer keys loaded" and checks["audit"] == "writable"
    assert checks["policy"].startswith("loaded")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--http", "0.0.0.0:0"), "without authentication"),
        (("--http", "127.0.0.1:0", "--principal", "alice"), "--principal cannot be used with --http"),
        (("--oauth-issuer", "http://127.0.0.1:9"), "apply to --http only"),
        (("--http", "0.0.0.0:0", "--oauth-issuer", "http://127.0.0.1:9"), "needs --oauth-resource"),
        (("--http", "127.0.0.1:0", "--oauth-issuer", "http://127.0.0.1:9", "--oauth-algorithms", "HS256"),
         "oauth_algorithms"),
    ],
)
def test_unsafe_http_settings_stop_the_server(tmp_path: Path, flags: tuple[str, ...], words: str) -> None:
    import subprocess
    import sys

    from tests.harness import server_env

    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run([sys.executable, "-m", "opsgate.server", "serve", "--audit-log", str(tmp_path / "a.jsonl"),
                           *flags], stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                          env=server_env({"HOME": str(home)}))
    assert done.returncode != 0
    assert words in done.stderr.decode(), done.stderr.decode()[-2000:]
