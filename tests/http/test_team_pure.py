"""The team server's pure parts: token groups as policy subjects (checked against Casbin itself), the claims
a principal comes from, the challenge and metadata a client reads, the HTTP settings that are refused, and
the event store that resumes a dropped stream."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import casbin
import pytest
from casbin.util import key_match_func

from opsgate.policies import SHIPPED_DIR, load_policy
from opsgate.server.config import Settings
from opsgate.server.http import BoundedEventStore, HttpSetupError, check_http_settings, is_loopback
from opsgate.server.oauth import (
    OAuthConfig,
    TokenRefused,
    groups_of,
    identity_of,
    metadata_url,
    protected_resource_metadata,
    www_authenticate,
)

POLICY = """\
p, role:viewer, *, *, read, allow
g, role:operator, role:viewer, *
p, role:operator, *, *, write, allow
p, group:auditors, *, audit_log, read, allow
p, group:frozen, team-b, *, write, deny
p, group:ops, prod, scale, write, allow
g, group:platform, role:operator, team-*
g, group:sre, role:operator, prod
g, carol, role:operator, team-c
p, dave, team-a, deploy, write, deny
"""
SUBJECTS = ["alice", "carol", "dave"]
GROUPS = ["group:platform", "group:sre", "group:frozen", "group:ops", "group:auditors", "group:none"]
NAMESPACES = ["team-a", "team-b", "team-c", "prod", "kube-system", "-"]
TOOLS = ["deploy", "scale", "list_workloads", "audit_log", "whoami"]


def test_groups_decide_exactly_as_casbin_with_the_principal_linked_to_them(tmp_path: Path) -> None:
    """A token's groups are as if ``g, principal, group, *`` were in the policy: PyCasbin, given those very
    lines, must answer every request the same (allow or deny, and the deciding rule)."""
    (tmp_path / "model.conf").write_text((SHIPPED_DIR / "model.conf").read_text())
    (tmp_path / "policy.csv").write_text(POLICY)
    ours = load_policy(tmp_path)
    rng = random.Random(21)
    by_group = denied_by_group = 0
    for _ in range(400):
        principal = rng.choice(SUBJECTS)
        groups = tuple(rng.sample(GROUPS, rng.randint(0, 3)))
        linked = tmp_path / "linked.csv"
        linked.write_text(POLICY + "".join(f"g, {principal}, {group}, *\n" for group in groups))
        theirs = casbin.Enforcer(str(tmp_path / "model.conf"), str(linked))
        theirs.add_named_domain_matching_func("g", key_match_func)
        namespace, tool = rng.choice(NAMESPACES), rng.choice(TOOLS)
        action = "write" if tool in ("deploy", "scale") else "read"
        decision = ours.decide(principal, namespace, tool, action, groups)
        allowed, explain = theirs.enforce_ex(principal, namespace, tool, action)
        if decision.protected is not None:  # opsgate's step after Casbin (kube-system): never looser
            assert allowed and not decision.allowed
            continue
        assert decision.allowed == allowed, (principal, groups, namespace, tool, decision)
        assert (list(decision.rule.fields) if decision.rule else []) == explain, (principal, groups, decision)
        own = (principal, "role:viewer", "role:operator" if principal == "carol" else "")
        if decision.rule is not None and decision.rule.fields[0] not in own:
            by_group += decision.allowed
            denied_by_group += not decision.allowed
        listed = ours.may_call_somewhere(principal, tool, action, groups=groups)
        assert listed or not decision.allowed, (principal, groups, tool)  # a tool that can be called is listed
    assert by_group > 20 and denied_by_group > 5, (by_group, denied_by_group)  # the groups did decide


def test_groups_are_policy_subjects_and_unsafe_ones_are_dropped() -> None:
    assert groups_of(["platform", "sre", "platform"], "group:") == (("group:platform", "group:sre"), 0)
    assert groups_of("platform", "group:") == (("group:platform",), 0)
    # With no prefix a group named like a role would inherit it (g(x, x)); spaces, commas, '*' are refused.
    assert groups_of(["role:admin", "a b", "x,y", "*", 7, ""], "") == ((), 6)
    assert groups_of(None, "group:") == ((), 0)
    many = [f"g{i}" for i in range(100)]
    kept, dropped = groups_of(many, "group:")
    assert len(kept) == 64 and dropped == 36


def test_the_principal_comes_from_the_configured_claim() -> None:
    config = OAuthConfig(issuer="https://idp", resource="https://ops/mcp", principal_claim="email")
    verified = identity_of({"iss": "https://idp", "sub": "123", "email": "alice@example.com", "exp": 9,
                            "groups": ["ops"], "scope": "mcp read"}, config)
    assert (verified.principal, verified.groups, verified.scopes) == ("alice@example.com", ("group:ops",),
                                                                      ("mcp", "read"))
    with pytest.raises(TokenRefused) as missing:
        identity_of({"sub": "123"}, config)
    assert missing.value.rule == "missing-claim"
    with pytest.raises(TokenRefused) as unsafe:
        identity_of({"email": "role:admin"}, config)
    assert unsafe.value.rule == "principal-claim"


def test_challenge_and_metadata() -> None:
    config = OAuthConfig(issuer="https://idp.example", resource="https://ops.example/mcp", scopes=("mcp",))
    assert metadata_url("https://ops.example/mcp") == "https://ops.example/.well-known/oauth-protected-resource/mcp"
    assert metadata_url("https://ops.example/") == "https://ops.example/.well-known/oauth-protected-resource"
    assert www_authenticate(config, None) == (
        'Bearer resource_metadata="https://ops.example/.well-known/oauth-protected-resource/mcp", scope="mcp"')
    refused = www_authenticate(config, TokenRefused("expired", 'the token has "expired"'))
    assert refused.startswith('Bearer error="invalid_token", error_description="the token has \'expired\'"')
    odd = www_authenticate(config, TokenRefused("malformed", 'tokens signed with \'\u00e9\r\nX: "y"\\\' fail'))
    assert odd.isascii() and "\r" not in odd and "\n" not in odd and odd.count('"') == 8, odd
    doc = protected_resource_metadata(config)
    assert doc["resource"] == "https://ops.example/mcp" and doc["authorization_servers"] == ["https://idp.example"]
    assert doc["scopes_supported"] == ["mcp"] and doc["bearer_methods_supported"] == ["header"]
    with pytest.raises(ValueError, match="HS256"):
        OAuthConfig(issuer="x", resource="y", algorithms=("HS256",))


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (Settings(http="0.0.0.0:8080"), "without authentication"),
        (Settings(http="8080", principal="alice"), "--principal cannot be used"),
        (Settings(oauth_issuer="https://idp"), "apply to --http only"),
        (Settings(http="10.0.0.1:8080", oauth_issuer="https://idp"), "needs --oauth-resource"),
        (Settings(http="8080", oauth_resource="https://ops/mcp"), "needs --oauth-issuer"),
    ],
)
def test_http_settings_that_drop_a_protection_are_refused(settings: Settings, words: str) -> None:
    with pytest.raises(HttpSetupError, match=words):
        check_http_settings(settings)


def test_http_settings_that_are_safe() -> None:
    assert check_http_settings(Settings(http="8080")) == ("127.0.0.1", 8080, None)
    host, port, oauth = check_http_settings(Settings(http="0.0.0.0:443", oauth_issuer="https://idp",
                                                     oauth_resource="https://ops.example/mcp"))
    assert (host, port) == ("0.0.0.0", 443) and oauth is not None and oauth.resource == "https://ops.example/mcp"
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.1.2.3")


def test_the_event_store_replays_one_stream_after_an_event_and_forgets_the_oldest() -> None:
    import mcp_types as types

    async def run() -> None:
        store = BoundedEventStore(limit=5)
        message = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/progress")
        a1 = await store.store_event("a", message)
        await store.store_event("b", message)
        a2 = await store.store_event("a", message)
        got: list[str | None] = []

        async def send(event: object) -> None:
            got.append(getattr(event, "event_id", None))

        assert await store.replay_events_after(a1, send) == "a" and got == [a2]
        assert len({a1, a2}) == 2 and len(a1) == 32  # random ids: another session cannot guess them
        for _ in range(5):
            await store.store_event("c", message)
        assert await store.replay_events_after(a1, send) is None  # forgotten

    anyio.run(run)
