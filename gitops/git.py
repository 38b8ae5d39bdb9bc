"""The one door to Git: the ``git`` CLI in a subprocess, argv lists, no shell, no prompts.

The CLI rather than GitPython, dulwich or pygit2: it is the implementation the user's own pushes go through,
so their credential helpers, SSH agent, ``insteadOf`` rewrites, hooks-free worktrees and ``--trailer`` behave
exactly as they do for them; GitPython shells out to it anyway, dulwich reimplements transport and
credentials, and pygit2 needs libgit2's own credential callbacks. Credentials never pass through our argv.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from opsgate.audit.redact import redact_text
from opsgate.tools.errors import ToolError
from opsgate.tools.untrusted import TEXT_MAX, quoted

GIT_TIMEOUT_SECONDS: Final = 60.0
# No prompt on a terminal nobody watches (a credential helper still answers), no pager, no user hooks on
# opsgate's commits (a hook in the repository is code; the commit is checked by rendering it instead),
# no advice lines in the errors we quote. core.fsmonitor in a repository's config is a command git runs on
# status, diff and add, hooks path or not: it is off too.
_ENV: Final = {"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "GIT_ADVICE": "0", "LC_ALL": "C"}
_NO_HOOKS: Final = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "commit.gpgSign=false",
                    "-c", "advice.detachedHead=false")


class GitFailed(ToolError):
    """A git command that exited non-zero; ``stderr`` is redacted (a URL's user:token@) but not yet quoted."""

    def __init__(self, message: str, *, rule: str, stderr: str) -> None:
        super().__init__(message, code="gitops_error", rule=rule)
        self.stderr = stderr


def said(text: str) -> str:
    """Git's (or a remote's) own words inside our sentence: secrets redacted, quoted and capped. Pure."""
    return quoted(redact_text(text.strip()), TEXT_MAX)


class Git:
    """``git -C folder ...``; ``env`` adds variables (author and committer of a commit)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def run(self, *args: str, env: Mapping[str, str] | None = None, check: bool = True,
            what: str | None = None, rule: str = "git-failed") -> subprocess.CompletedProcess[str]:
        argv: Sequence[str] = ["git", *_NO_HOOKS, "-C", str(self.folder), *args]
        environment = {**os.environ, **_ENV, **(env or {})}
        try:
            proc = subprocess.run(argv, env=environment, capture_output=True, text=True, check=False,
                                  timeout=GIT_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ToolError("GitOps mode needs the git command, and none was found on PATH", code="gitops_error",
                            rule="no-git") from None
        except subprocess.TimeoutExpired:
            raise ToolError(f"git {args[0]} did not finish within {GIT_TIMEOUT_SECONDS:g} s", code="gitops_error",
                            rule="git-timeout") from None
        if check and proc.returncode != 0:
            stderr = redact_text(proc.stderr or proc.stdout)
            raise GitFailed(f"{what or 'git ' + args[0]} failed: git said {said(stderr)}", rule=rule, stderr=stderr)
        return proc

    def out(self, *args: str, env: Mapping[str, str] | None = None, what: str | None = None,
            rule: str = "git-failed") -> str:
        return self.run(*args, env=env, what=what, rule=rule).stdout.strip()

    def ok(self, *args: str) -> bool:
        return self.run(*args, check=False).returncode == 0
