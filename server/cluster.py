"""Which cluster the Kubernetes tools talk to, chosen once at start.

Order: ``--kubeconfig`` (or ``OPSGATE_KUBECONFIG``), then ``$KUBECONFIG``, then
``~/.kube/config``, then in-cluster config when running in a pod; with none of
these, the built-in sandbox cluster, started in this process and announced on
stderr and in ``whoami`` so nobody mistakes it for a real cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsgate.tools.kube import Kube, KubeTarget

from .config import Settings

if TYPE_CHECKING:
    from .sandbox import SandboxCluster


@dataclass
class Cluster:
    kube: Kube
    source: str  # "kubeconfig", "in-cluster" or "sandbox"
    sandbox: SandboxCluster | None = None

    def describe(self) -> dict[str, Any]:
        """No network call: what we were told, for whoami and the banner."""
        info: dict[str, Any] = {"source": self.source, "sandbox": self.sandbox is not None}
        if self.sandbox is not None:
            info["server"] = self.sandbox.url
        else:
            info["kubeconfig"] = str(self.kube.target.kubeconfig) if self.kube.target.kubeconfig else None
            info["context"] = self.kube.target.context
        return info

    def close(self) -> None:
        self.kube.close()
        if self.sandbox is not None:
            self.sandbox.stop()


def find_kubeconfig(settings: Settings, environ: Mapping[str, str], home: Path) -> Path | None:
    """Pure: the kubeconfig a kubectl user would expect, or None."""
    if settings.kubeconfig is not None:
        return settings.kubeconfig
    for entry in environ.get("KUBECONFIG", "").split(os.pathsep):
        if entry and Path(entry).is_file():
            return Path(entry)
    default = home / ".kube" / "config"
    return default if default.is_file() else None


def open_cluster(settings: Settings, environ: Mapping[str, str] | None = None) -> Cluster:
    env = os.environ if environ is None else environ
    path = find_kubeconfig(settings, env, Path.home())
    if path is not None:
        return Cluster(Kube(KubeTarget(kubeconfig=path, context=settings.context)), "kubeconfig")
    if env.get("KUBERNETES_SERVICE_HOST"):
        return Cluster(Kube(KubeTarget(in_cluster=True)), "in-cluster")
    from .sandbox import SandboxCluster

    sandbox = SandboxCluster(models_dir=settings.models).start()  # its InferenceServices serve our models
    return Cluster(Kube(KubeTarget(sandbox_url=sandbox.url), sandbox=True), "sandbox", sandbox)


def describe_cluster(cluster: Cluster) -> str:
    """One line for people: the banner and logs."""
    info = cluster.describe()
    if cluster.sandbox is not None:
        return f"SANDBOX (built in, in memory) at {info['server']}"
    if cluster.source == "in-cluster":
        return "in-cluster service account"
    return f"kubeconfig {info['kubeconfig']}" + (f" context {info['context']}" if info.get("context") else "")
