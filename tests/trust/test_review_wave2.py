"""The adversarial review of the second wave (H11): each test an attack on the new code, failing before its fix.

Real parts only: ``opsgate serve --http`` with a test OIDC issuer, the real ``kubectl kustomize``, the sandbox
API server over HTTP+TLS, real git.
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
from typing import Any, cast

import httpx
import pytest
from mcp_types import RequestParamsMeta

from opsgate.gitops.git import Git
from opsgate.gitops.render import render
from opsgate.sandbox import SandboxCluster
from opsgate.sandbox.kinds import DEPLOYMENT
from opsgate.tools.errors import ToolError
from opsgate.tools.kube import Kube
from opsgate.tools.workloads import DeployArgs, deploy
from tests.harness import ok, serve, server_env, shipped_policy
from tests.http.oidc import Issuer, raw
from tests.http.served import INITIALIZE, MCP_HEADERS, http_server, mcp_session
from tests.tools.test_informer import Requests, cluster, ctx, kube, live, ns, requests, status, until

__all__ = ["cluster", "kube", "ns", "requests"]  # the watch cache's fixtures, used by name


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
            for n in range(20):  # counted only, until the server stops: its last count is recorded then
                refuse(sent + 1 + n)
    refused = [r for r in server.records() if r["stage"] == "token_refused"]
    one_by_one = [r for r in refused if r["rule"] != "unrecorded"]  # the stop's count, unless the last was recorded
    assert len(one_by_one) + sum(r.get("unrecorded_before", 0) for r in refused) == sent + 21


class _Counting(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.paths.append(self.path)
                body = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fetched}\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.mark.parametrize("entry", [
    "resources: [http://127.0.0.1:{port}/x.yaml]",
    "patches: [{{path: 'http://127.0.0.1:{port}/p.yaml'}}]",
    "resources: [../../../outside]",
])
def test_a_committed_kustomization_cannot_make_the_server_fetch_or_read_outside_the_repository(
        tmp_path: Path, entry: str) -> None:
    """Review item 3 (kustomize remote bases): a kustomization in Git is outside text, and ``kubectl kustomize``
    fetches any URL (or git remote) it names as a resource or patch, and reads kustomizations outside the
    repository: a commit to the GitOps repository made the server request an address of the committer's
    choosing. Now the render refuses, naming the entry, and nothing is requested."""
    listener = _Counting()
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    try:
        (tmp_path / "outside").mkdir()
        (tmp_path / "outside" / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
        (tmp_path / "outside" / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: out}\n")
        repo = tmp_path / "repo"
        folder = repo / "apps" / "web"
        folder.mkdir(parents=True)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        (folder / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: local}\n")
        text = entry.format(port=listener.server_address[1])
        (folder / "kustomization.yaml").write_text(f"resources: [cm.yaml]\n{text}\n"
                                                   if not text.startswith("resources") else text + "\n")
        with pytest.raises(ToolError) as refused:
            render(folder)
        assert refused.value.rule == "remote-base", refused.value.message
        assert listener.paths == [], "kustomize fetched what the repository named"
        (folder / "kustomization.yaml").write_text("resources: [cm.yaml, ../base]\n")  # a local base still renders
        (repo / "apps" / "base").mkdir()
        (repo / "apps" / "base" / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
        (repo / "apps" / "base" / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: base}\n")
        assert sorted(d["metadata"]["name"] for d in render(folder)) == ["base", "local"]
    finally:
        listener.shutdown()
        listener.server_close()


def test_a_yaml_alias_bomb_in_a_committed_manifest_is_refused_not_expanded(tmp_path: Path) -> None:
    """Review item 3 (YAML bombs): ruamel loads aliases of aliases as a few shared nodes, and the copy every
    render and edit makes expanded them: nine levels of ten aliases is 10^9 nodes from a 1 KB file (this test
    ran out of its 20 s before the fix). Now the copy stops at its node budget with a clear refusal."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 10):
        levels.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]")
    body = "\n".join(f"  {line}" for line in levels)
    (tmp_path / "bomb.yaml").write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb}}\ndata:\n{body}\n")
    started = time.monotonic()
    with pytest.raises(ToolError) as refused:
        render(tmp_path)
    assert refused.value.rule == "bad-manifest" and "aliases" in refused.value.message
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_a_callers_baggage_never_reaches_the_cluster(tmp_path: Path) -> None:
    """Review item 4 (``_meta`` baggage): the SDK takes the caller's ``_meta`` through OpenTelemetry's global
    propagators, W3C baggage included, and each cluster request injected them all again: the caller's text
    (8 KB of it, a pasted secret perhaps) went to the API server in a ``baggage`` header of every request. Only
    the trace context (traceparent, tracestate) is passed on now; the trace still joins."""
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
           "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    with SandboxCluster(rollout_delay=0.01, namespaces=("team-a",)) as cluster:
        kubeconfig = tmp_path / "kubeconfig"
        cluster.write_kubeconfig(kubeconfig)
        policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, team-*")
        async with serve(tmp_path, "--principal", "alice", "--kubeconfig", str(kubeconfig), "--policy", str(policy),
                         env=env) as served:
            meta = cast(RequestParamsMeta, {"traceparent": f"00-{trace_id}-{span_id}-01",
                                            "baggage": f"pasted=hunter2-{'x' * 100}"})
            ok(await served.session.call_tool("list_workloads", {"namespace": "team-a"}, meta=meta))
        assert any(tp.split("-")[1] == trace_id for _, _, tp in cluster.traceparents), "the trace did not join"
        assert cluster.baggage == [], cluster.baggage


def test_a_repositorys_fsmonitor_command_is_not_run(tmp_path: Path) -> None:
    """Review item 3 (repository config executing code): ``core.fsmonitor`` in a checkout's config is a command
    git runs on ``status``/``diff``/``add``; ``core.hooksPath=/dev/null`` does not stop it. The GitOps door runs
    git with it off (git 2.39 here ran the script before the fix)."""
    repo, ran = tmp_path / "repo", tmp_path / "ran"
    script = tmp_path / "fsmonitor.sh"
    script.write_text(f"#!/bin/sh\ntouch {ran}\n")
    script.chmod(0o755)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "core.fsmonitor", str(script)], check=True)
    (repo / "a.yaml").write_text("a: 1\n")
    git = Git(repo)
    git.run("add", "--all")
    git.out("status", "--porcelain")
    git.run("diff", "--cached", "--name-only")
    assert not ran.exists(), "git ran the repository's fsmonitor command"


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


def test_a_watch_event_past_the_cap_drops_the_watch_and_reads_go_to_the_api(
        cluster: SandboxCluster, kube: Kube, requests: Requests, ns: str) -> None:
    """Review item 6 (a huge watch event): the watch cache joined the stream's bytes until a newline came, with
    no bound and a copy of the whole pending line per 64 KB read, so one endless line (or a 20 MB object in a
    stand-in that does not refuse it, as here) was held and applied. The API server refuses objects of ~3 MiB,
    so a line past 16 MiB drops the watch: reads go to the API server, and the cache never holds it."""
    deploy(kube, DeployArgs(name="web", namespace=ns, image="nginx:1", replicas=1), ctx())
    live(kube, requests, ns)
    huge = "x" * (20 << 20)
    cluster.store.update(DEPLOYMENT, ns, "web",
                         lambda cur: {**cur, "metadata": {**cur["metadata"], "annotations": {"huge": huge}}})
    until(lambda: status(kube, ns).source.via == "api", "reads going to the API after the huge event", timeout=20)
    assert status(kube, ns).source.via == "api"


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
