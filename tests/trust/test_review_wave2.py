"""The adversarial review of the second wave (H11): each test an attack on the new code, failing before its fix.

Real parts only: ``opsgate serve --http`` with a test OIDC issuer, the real ``kubectl kustomize``, the sandbox
API server over HTTP+TLS, real git.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.harness import shipped_policy
from tests.http.oidc import Issuer
from tests.http.served import INITIALIZE, MCP_HEADERS, http_server


def test_garbage_tokens_cannot_flood_the_audit_log_yet_every_refusal_is_counted(tmp_path: Path) -> None:
    """Review item 1 (refused-token audit flooding): anyone who reaches the port could make the server fsync one
    audit line per garbage token, forever. Past a burst the refusals are counted, and the next record carries
    the count: records plus counts equal the refusals sent, and every one was still a 401."""
    sent = 150
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
