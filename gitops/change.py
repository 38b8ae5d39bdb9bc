"""One change as one commit: a fresh worktree, an edit, a render and a dry run, a commit with trailers, a push.

The user's checkout is never touched: each change gets its own ``git worktree`` in a temporary folder (its
working files and index are its own), removed afterwards; a failure also deletes the branch it made, so
nothing half-written is left. The commit's trailers tie it to the audit log: ``Opsgate-Call-Id`` (the
audit record's call id), ``Opsgate-Principal``, ``Opsgate-Policy`` (the rule that allowed the call) and
``Opsgate-Object`` (kind/namespace/name, which rollback looks for).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from opsgate.tools.context import CallContext
from opsgate.tools.errors import ToolError
from opsgate.tools.kube import ClusterUnreachable

from .forge import MergeRequest, open_merge_request
from .git import Git, said
from .manifests import is_object
from .models import DIFF_MAX, GitOpsResult, GitOpsTarget
from .render import render

TRAILER_CALL: Final = "Opsgate-Call-Id"
TRAILER_PRINCIPAL: Final = "Opsgate-Principal"
TRAILER_POLICY: Final = "Opsgate-Policy"
TRAILER_OBJECT: Final = "Opsgate-Object"
TRAILER_REVERTS: Final = "Opsgate-Reverts"


@dataclass(frozen=True)
class ObjectRef:
    group: str  # "apps", "serving.kserve.io"
    kind: str
    name: str
    namespace: str

    @property
    def trailer(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    def find(self, objects: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((o for o in objects if is_object(o, self.group, self.kind, self.name, self.namespace)), None)


@dataclass
class Planned:
    """What an edit did: the commit's subject, a check of the rendered object, notes for the caller."""

    subject: str
    check: Callable[[dict[str, Any] | None], str | None]
    notes: list[str] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)


# An edit gets the worktree's folder and the object as it renders before the change (None: absent).
Edit = Callable[[Path, dict[str, Any] | None], Planned]
# A server-side dry run of the rendered object: raises ToolError when the cluster refuses it.
DryRun = Callable[[dict[str, Any]], None]


def _fail(message: str, rule: str, field_name: str | None = None) -> ToolError:
    return ToolError(message, code="gitops_error", rule=rule, field=field_name)


@dataclass(frozen=True)
class Base:
    git: Git
    branch: str  # the base branch's name (the merge request's target)
    ref: str  # what the change starts from: refs/heads/<branch>, or refs/remotes/<remote>/<branch> when pushing
    folder: str  # the manifests' folder, relative to the repository


def prepare(target: GitOpsTarget, namespace: str) -> Base:
    """The repository, its base branch and the namespace's folder, checked before anything is made."""
    folder = target.folder_for(namespace)
    if folder is None:
        raise _fail(f"namespace {namespace} has no GitOps folder", "not-mapped", "namespace")
    git = Git(target.repo)
    if not target.repo.is_dir() or git.run("rev-parse", "--is-inside-work-tree", check=False).stdout.strip() != "true":
        raise _fail(f"the GitOps repository {target.repo} is not a Git working tree (gitops_repo)", "not-a-repo")
    branch = target.base_branch
    if branch is None:
        head = git.run("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        if head.returncode != 0:
            raise _fail(f"the GitOps repository {target.repo} has a detached HEAD: set gitops_base_branch",
                        "no-such-branch")
        branch = head.stdout.strip()
    if not git.ok("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"):
        raise _fail(f"the GitOps base branch {branch!r} does not exist in {target.repo} (gitops_base_branch)",
                    "no-such-branch")
    if not (target.repo / folder).is_dir():
        raise _fail(f"the GitOps folder {folder!r} for namespace {namespace} does not exist in the repository",
                    "no-such-folder")
    dirty = git.out("status", "--porcelain", "--untracked-files=all", "--", folder)
    if dirty:
        first = dirty.splitlines()[0][3:]
        raise _fail(f"the working tree has uncommitted changes in {folder} ({said(first)} and maybe more): commit "
                    f"or stash them first; opsgate bases its change on branch {branch}'s last commit and would not "
                    "include them", "dirty-working-tree")
    ref = f"refs/heads/{branch}"
    if target.push:
        ref = f"refs/remotes/{target.remote}/{branch}"
        git.run("fetch", "--quiet", "--no-tags", target.remote, f"+refs/heads/{branch}:{ref}",
                what=f"git fetch {target.remote} {branch}", rule="fetch-failed")
    return Base(git=git, branch=branch, ref=ref, folder=folder)


@contextmanager
def worktree(git: Git, ref: str, branch: str | None) -> Iterator[Path]:
    """A new worktree at ``ref`` (on a new ``branch``, or detached), removed when done."""
    holder = Path(tempfile.mkdtemp(prefix="opsgate-gitops-"))
    path = holder / "tree"
    start = ["--no-track", "-b", branch] if branch is not None else ["--detach"]
    try:
        git.run("worktree", "add", "--quiet", *start, str(path), ref, what="git worktree add")
        yield path
    finally:
        git.run("worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(holder, ignore_errors=True)
        git.run("worktree", "prune", check=False)


def _validate(tree: Path, folder: str, obj: ObjectRef, check: Callable[[dict[str, Any] | None], str | None],
              dry_run_apply: DryRun | None, kubectl: str | None) -> tuple[list[str], list[str]]:
    """Render the folder, check the object is what was asked, dry-run it on the cluster: (checks, notes)."""
    rendered = render(tree / folder, kubectl)
    after = obj.find(rendered)
    problem = check(after)
    if problem is not None:
        raise _fail(f"the edited manifests in {folder} do not render the change: {problem}; nothing was committed",
                    "render-mismatch")
    checks = ["kustomize render" if (tree / folder / "kustomization.yaml").exists() else "manifests parsed",
              "rendered object matches the request"]
    notes: list[str] = []
    if dry_run_apply is not None and after is not None:
        body = {**after, "metadata": {**after.get("metadata", {}), "namespace": obj.namespace}}
        try:
            dry_run_apply(body)
            checks.append("server-side dry run")
        except ClusterUnreachable as exc:
            notes.append(f"the cluster was not reachable, so no server-side dry run was made ({exc.rule})")
        except ToolError as exc:
            if exc.code == "cluster_config":  # no cluster configured at all: nothing to dry-run against
                notes.append("no cluster is configured, so no server-side dry run was made")
                return checks, notes
            raise _fail(f"the cluster refused the rendered {obj.kind} on a server-side dry run: {exc.message}; "
                        "nothing was committed", "dry-run-refused") from None
    return checks, notes


def _author(principal: str) -> dict[str, str]:
    email = principal if "@" in principal else f"{principal}@opsgate.invalid"
    return {"GIT_AUTHOR_NAME": principal, "GIT_AUTHOR_EMAIL": email}


def branch_name(target: GitOpsTarget, tool: str, obj: ObjectRef, call_id: str) -> str:
    return f"{target.branch_prefix}{tool}-{obj.namespace}-{obj.name}-{call_id[:8]}"


_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _repo_lock(repo: Path) -> threading.Lock:
    """One change at a time per repository: concurrent calls would race on its refs and worktree list."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(repo.resolve(), threading.Lock())


def make_change(target: GitOpsTarget, tool: str, obj: ObjectRef, ctx: CallContext, *, dry_run: bool,
                edit: Edit | None = None, revert: str | None = None, dry_run_apply: DryRun | None = None,
                subject: str | None = None) -> GitOpsResult:
    """Make one change in a fresh worktree (``edit``, or ``git revert`` of a commit) and commit, push, open."""
    with _repo_lock(target.repo):
        return _make_change(target, tool, obj, ctx, dry_run=dry_run, edit=edit, revert=revert,
                            dry_run_apply=dry_run_apply, subject=subject)


def _make_change(target: GitOpsTarget, tool: str, obj: ObjectRef, ctx: CallContext, *, dry_run: bool,
                 edit: Edit | None, revert: str | None, dry_run_apply: DryRun | None,
                 subject: str | None) -> GitOpsResult:
    base = prepare(target, obj.namespace)
    git = base.git
    branch = None if dry_run else branch_name(target, tool, obj, ctx.call_id)
    if branch is not None and git.ok("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"):
        raise _fail(f"branch {branch} exists already", "branch-exists")
    keep = False
    try:
        with worktree(git, base.ref, branch) as tree:
            wt = Git(tree)
            if not (tree / base.folder).resolve().is_relative_to(tree.resolve()):  # a committed link out of the tree
                raise _fail(f"the GitOps folder {base.folder!r} leads outside the repository", "symlink")
            before = obj.find(render(tree / base.folder, target.kubectl))
            if revert is not None:
                proc = wt.run("revert", "--no-commit", revert, check=False)
                if proc.returncode != 0:
                    wt.run("revert", "--abort", check=False)
                    raise _fail(f"reverting commit {revert[:12]} conflicts with later changes to {base.folder}: "
                                f"{said(proc.stderr or proc.stdout)}; nothing was committed", "revert-conflict")
                planned = Planned(subject=subject or f"revert {revert[:12]}", check=lambda o: None,
                                  trailers={TRAILER_REVERTS: revert})
            else:
                assert edit is not None
                planned = edit(tree / base.folder, before)
            checks, notes = _validate(tree, base.folder, obj, planned.check, dry_run_apply, target.kubectl)
            wt.run("add", "--all", "--", base.folder)
            files = [f for f in wt.out("diff", "--cached", "--name-only").splitlines() if f]
            diff = wt.run("diff", "--cached", "--no-color", "--no-ext-diff").stdout
            result = GitOpsResult(
                name=obj.name, namespace=obj.namespace, kind=obj.kind, action="dry-run" if dry_run else "committed",
                branch=branch, base=base.branch, commit=None, pushed=False, files=files,
                diff=diff if len(diff) <= DIFF_MAX else diff[:DIFF_MAX] + "\n… (diff cut; the commit has all of it)",
                validated=checks, notes=[*planned.notes, *notes], dry_run=dry_run,
            )
            if dry_run:
                return result
            if not files:
                return result.model_copy(update={"action": "unchanged", "branch": None,
                                                 "notes": [*result.notes, "the manifests already say this"]})
            trailers = {TRAILER_CALL: ctx.call_id, TRAILER_PRINCIPAL: ctx.principal,
                        TRAILER_POLICY: ctx.policy_rule or "-", TRAILER_OBJECT: obj.trailer, **planned.trailers}
            committer = {"GIT_COMMITTER_NAME": target.committer[0], "GIT_COMMITTER_EMAIL": target.committer[1]}
            body = f"By {ctx.principal} through opsgate ({tool}); audit call id {ctx.call_id}."
            wt.run("commit", "--quiet", "--no-verify", "-m", f"opsgate: {planned.subject}", "-m", body,
                   *[arg for key, value in trailers.items() for arg in ("--trailer", f"{key}: {value}")],
                   env={**_author(ctx.principal), **committer}, what="git commit")
            pushed, link = False, None
            if target.push:
                _catch_up(wt, target, base, tree, obj, planned, dry_run_apply)
                wt.run("push", "--porcelain", target.remote, f"refs/heads/{branch}:refs/heads/{branch}",
                       what=f"git push {target.remote} {branch}", rule="push-rejected")
                pushed = True
            commit = wt.out("rev-parse", "HEAD")
            keep = True  # committed (and pushed, when pushing): a forge's failure from here on leaves it
            if pushed and target.forge is not None:
                link = open_merge_request(target.forge, MergeRequest(
                    title=f"opsgate: {planned.subject}", branch=str(branch), base=base.branch,
                    body=f"{body}\n\nPolicy rule: `{ctx.policy_rule or '-'}`\n\n```diff\n{result.diff}\n```"))
            return result.model_copy(update={"commit": commit, "pushed": pushed, "link": link})
    except ToolError as exc:
        if keep and branch is not None:  # pushed: the branch stays, and the error (so the audit outcome) says so
            raise ToolError(f"{exc.message}; commit {commit[:12]} was pushed to {target.remote} on branch {branch}: "
                            f"open its merge request into {base.branch} by hand", code=exc.code, rule=exc.rule,
                            status=exc.status) from None
        raise
    finally:
        if not keep and branch is not None:
            git.run("branch", "-D", branch, check=False)


def _catch_up(wt: Git, target: GitOpsTarget, base: Base, tree: Path, obj: ObjectRef, planned: Planned,
              dry_run_apply: DryRun | None) -> None:
    """If the remote's base moved since the change started, rebase the one commit onto it (and check it
    again); a conflict aborts the rebase and refuses the change. Never a force push."""
    remote_ref = f"refs/remotes/{target.remote}/{base.branch}"
    started = wt.out("rev-parse", remote_ref)
    wt.run("fetch", "--quiet", "--no-tags", target.remote, f"+refs/heads/{base.branch}:{remote_ref}",
           what=f"git fetch {target.remote} {base.branch}", rule="fetch-failed")
    if wt.out("rev-parse", remote_ref) == started:
        return
    proc = wt.run("rebase", "--quiet", remote_ref, check=False,
                  env={"GIT_COMMITTER_NAME": target.committer[0], "GIT_COMMITTER_EMAIL": target.committer[1]})
    if proc.returncode != 0:
        wt.run("rebase", "--abort", check=False)
        raise _fail(f"{target.remote}/{base.branch} moved while this change was made, and the change conflicts with "
                    f"what was pushed there ({said(proc.stdout + proc.stderr)}); nothing was pushed: read the "
                    "new state and call again", "remote-moved-conflict")
    _validate(tree, base.folder, obj, planned.check, dry_run_apply, target.kubectl)


def find_change(target: GitOpsTarget, obj: ObjectRef) -> tuple[Base, str, str]:
    """The last opsgate commit on the base branch that changed the object: (base, sha, its subject)."""
    base = prepare(target, obj.namespace)
    grep = f"{TRAILER_OBJECT}: {obj.trailer}"
    found = base.git.out("log", "-n", "1", "--format=%H%x00%s", "--fixed-strings", f"--grep={grep}", base.ref)
    if found:
        sha, _, subject = found.partition("\0")
        return base, sha, subject
    elsewhere = base.git.out("log", "-n", "1", "--format=%H%x00%D", "--fixed-strings", f"--grep={grep}",
                             f"--branches={target.branch_prefix}*", f"--remotes=*/{target.branch_prefix}*")
    if elsewhere:
        sha, _, refs = elsewhere.partition("\0")
        raise _fail(f"the last opsgate change to {obj.kind.lower()} {obj.namespace}/{obj.name} (commit {sha[:12]}, "
                    f"{said(refs)}) is not merged into {base.branch}: close its merge request instead of rolling back",
                    "not-merged")
    raise _fail(f"no opsgate commit on {base.branch} changed {obj.kind.lower()} {obj.namespace}/{obj.name}, so there "
                "is nothing to revert in GitOps mode", "no-gitops-change")

