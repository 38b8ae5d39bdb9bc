"""What GitOps mode is told (a repository, folders per namespace, push and forge) and what a change returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from .forge import Forge

DIFF_MAX: Final = 6000  # characters of the diff a result carries; the commit holds the whole of it
DEFAULT_COMMITTER: Final = ("opsgate", "opsgate@localhost")


@dataclass(frozen=True)
class GitOpsTarget:
    """GitOps mode's settings, as the server's settings give them (server/config.py ``gitops_*``)."""

    repo: Path
    paths: Mapping[str, str] = field(default_factory=dict)  # namespace -> folder inside the repository
    default_path: str | None = None  # the folder for every namespace not in ``paths``; None: those are direct
    base_branch: str | None = None  # None: the repository's current branch
    branch_prefix: str = "opsgate/"
    push: bool = False
    remote: str = "origin"
    committer: tuple[str, str] = DEFAULT_COMMITTER
    forge: Forge | None = None
    kubectl: str | None = None

    def folder_for(self, namespace: str) -> str | None:
        """The folder whose manifests hold this namespace's objects; None: the namespace is changed directly."""
        return self.paths.get(namespace, self.default_path)


class GitOpsResult(BaseModel):
    """A write made as a commit: where it is, what it changed, how it was checked."""

    model_config = ConfigDict(extra="forbid")

    name: str
    namespace: str
    kind: str
    mode: Literal["gitops"] = "gitops"
    action: Literal["committed", "unchanged", "dry-run"]
    branch: str | None = Field(description="The branch holding the commit (null: dry-run or unchanged).")
    base: str = Field(description="The branch it is based on, and the merge request's target.")
    commit: str | None
    pushed: bool
    link: str | None = Field(default=None, description="The merge request, when one was opened.")
    files: list[str] = Field(description="Files changed, relative to the repository.")
    diff: str = Field(description=f"The change as a unified diff (at most {DIFF_MAX} characters).")
    validated: list[str] = Field(description="Checks the change passed before it was committed.")
    notes: list[str] = Field(default_factory=list)
    dry_run: bool

    def audit_summary(self) -> dict[str, Any]:
        return {"mode": "gitops", "action": self.action, "commit": self.commit, "branch": self.branch,
                "base": self.base, "pushed": self.pushed, "link": self.link, "files": self.files,
                "dry_run": self.dry_run}
