"""The adversarial review of the second wave (H11): each test an attack on the new code, failing before its fix.

Real parts only: the real ``kubectl kustomize`` and git, ``opsgate serve`` over stdio, the sandbox API server
over HTTP+TLS. The team server's part is test_review_wave2_http.py.
"""

from __future__ import annotations

import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from mcp_types import RequestParamsMeta

from opsgate.gitops.git import Git
from opsgate.gitops.render import render
from opsgate.sandbox import SandboxCluster
from opsgate.sandbox.kinds import DEPLOYMENT
from opsgate.tools.errors import ToolError
from opsgate.tools.kube import Kube
from opsgate.tools.workloads import DeployArgs, deploy
from tests.harness import ok, serve, shipped_policy
from tests.tools.test_informer import Requests, cluster, ctx, kube, live, ns, requests, status, until

__all__ = ["cluster", "kube", "ns", "requests"]  # the watch cache's fixtures, used by name


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


