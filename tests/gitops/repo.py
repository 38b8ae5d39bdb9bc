"""A real GitOps repository for the tests: a bare remote, and a working clone holding a kustomize base and
overlay (images and replicas entries) and a folder of plain manifests."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from ruamel.yaml import YAML

from opsgate.gitops import find_kubectl
from opsgate.sandbox import SandboxCluster
from tests.harness import Served, serve, shipped_policy

KUBECTL = find_kubectl()
IDENTITY = {"GIT_AUTHOR_NAME": "Test Person", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "Test Person", "GIT_COMMITTER_EMAIL": "test@example.com"}

BASE_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app.kubernetes.io/name: web
spec:
  replicas: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: web
  template:
    metadata:
      labels:
        app.kubernetes.io/name: web
    spec:
      containers:
        - name: web
          image: registry.example.com/web:1.0  # pinned by the platform team
"""

OVERLAY = """\
# the overlay for {namespace}
namespace: {namespace}
resources:
  - ../base
images:
  - name: registry.example.com/web
    newTag: "1.1"  # security fix
"""

PLAIN = """\
# the API, kept by hand
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: {namespace}
spec:
  replicas: 2 # two for HA
  selector:
    matchLabels: {{app.kubernetes.io/name: api}}
  template:
    metadata:
      labels: {{app.kubernetes.io/name: api}}
    spec:
      containers:
      - name: api
        image: "registry.example.com/api:1.0"
"""


def git(folder: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **IDENTITY, "GIT_TERMINAL_PROMPT": "0"}, timeout=60)
    assert not check or proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


@dataclass
class Repo:
    root: Path
    remote: Path  # the bare repository
    work: Path  # the user's clone
    overlay_ns: str
    plain_ns: str

    def commit_all(self, message: str, folder: Path | None = None) -> str:
        where = folder or self.work
        git(where, "add", "--all")
        git(where, "commit", "-q", "-m", message)
        return git(where, "rev-parse", "HEAD")

    def remote_branches(self) -> list[str]:
        return [line for line in git(self.remote, "for-each-ref", "--format=%(refname:short)", "refs/heads").split()]

    def trailers(self, ref: str, where: Path | None = None) -> dict[str, str]:
        text = git(where or self.remote, "log", "-1", "--format=%(trailers:only,unfold)", ref)
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)

    def render(self, ref: str, folder: str) -> list[dict[str, Any]]:
        """kubectl kustomize of ``folder`` at ``ref`` of the remote (a throwaway worktree of a clone)."""
        clone = self.root / f"render-{ref.replace('/', '-')}"
        if not clone.exists():
            subprocess.run(["git", "clone", "-q", "--branch", ref, str(self.remote), str(clone)], check=True,
                           capture_output=True)
        if not (clone / folder / "kustomization.yaml").exists():  # plain manifests: each file's documents
            texts = [path.read_text() for path in sorted((clone / folder).glob("*.yaml"))]
        else:
            assert KUBECTL is not None
            texts = [subprocess.run([KUBECTL, "kustomize", str(clone / folder)], capture_output=True, text=True,
                                    check=True).stdout]
        return [d for text in texts for d in YAML(typ="safe").load_all(text) if isinstance(d, dict)]

    def clean(self) -> bool:
        """The user's checkout untouched: no changed or new files, one worktree, no opsgate branch left."""
        return (git(self.work, "status", "--porcelain") == ""
                and len(git(self.work, "worktree", "list").splitlines()) == 1)

    def local_opsgate_branches(self) -> list[str]:
        return git(self.work, "for-each-ref", "--format=%(refname:short)", "refs/heads/opsgate").split()


def make_repo(root: Path, overlay_ns: str, plain_ns: str) -> Repo:
    remote, work = root / "remote.git", root / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    subprocess.run(["git", "clone", "-q", str(remote), str(work)], check=True, capture_output=True)
    git(work, "checkout", "-q", "-b", "main")
    (work / "apps" / "base").mkdir(parents=True)
    (work / "apps" / "overlay").mkdir()
    (work / "plain").mkdir()
    (work / "apps" / "base" / "deployment.yaml").write_text(BASE_DEPLOYMENT)
    (work / "apps" / "base" / "kustomization.yaml").write_text("resources:\n  - deployment.yaml\n")
    (work / "apps" / "overlay" / "kustomization.yaml").write_text(OVERLAY.format(namespace=overlay_ns))
    (work / "plain" / "api.yaml").write_text(PLAIN.format(namespace=plain_ns))
    repo = Repo(root, remote, work, overlay_ns, plain_ns)
    repo.commit_all("manifests")
    git(work, "push", "-q", "-u", "origin", "main")
    return repo


def config_file(path: Path, repo: Repo, **extra: Any) -> Path:
    """A TOML settings file for GitOps mode over ``repo`` (the overlay and plain folders mapped)."""
    lines = [f'gitops_repo = "{repo.work}"', "gitops_push = true",
             f'gitops_paths = {{ "{repo.overlay_ns}" = "apps/overlay", "{repo.plain_ns}" = "plain" }}']
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]  # JSON scalars are TOML's
    path.write_text("\n".join(lines) + "\n")
    return path


def namespace(api: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core: Any = client.CoreV1Api(api)  # the client's methods are typed for its models; tests pass dicts
    core.create_namespace({"metadata": {"name": name}})
    return name


@asynccontextmanager
async def opsgate(tmp_path: Path, cluster: SandboxCluster, settings: Path,
                  env: dict[str, str] | None = None) -> AsyncIterator[Served]:
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, *")
    (tmp_path / "server").mkdir(exist_ok=True)
    async with serve(tmp_path / "server", "--principal", "alice", "--kubeconfig", str(kubeconfig), "--policy",
                     str(policy), "--config", str(settings), env=env) as served:
        yield served


def outcome(served: Served, call_id: str) -> dict[str, Any]:
    record = next(r for r in served.records() if r.get("call_id") == call_id and r["stage"] == "outcome")
    return record["outcome"]  # type: ignore[no-any-return]


def call_ids(served: Served, tool: str) -> list[str]:
    return [r["call_id"] for r in served.records() if r.get("tool") == tool and r["stage"] == "outcome"]
