"""Which cluster the Kubernetes tools talk to, chosen once at start.

Order: ``--kubeconfig`` (or ``OPSGATE_KUBECONFIG``), then ``$KUBECONFIG``, then
``~/.kube/config``, then in-cluster config when running in a pod; with none of
these, the built-in sandbox cluster, started in this process and announced on
stderr and in ``whoami`` so nobody mistakes it for a real cluster.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from opsgate.tools.inline import no_wait
from opsgate.tools.kube import Kube, KubeTarget

from .config import Settings

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from opsgate.sandbox import SandboxCluster

log = structlog.get_logger("opsgate.cluster")


class SandboxKube(Kube):
    """The built-in sandbox, started on first use: a session that never touches a cluster never pays for one."""

    def __init__(self, models_dir: Path | None, request_timeout: tuple[float, float],
                 namespaces: tuple[str, ...] = ()) -> None:
        super().__init__(KubeTarget(), sandbox=True, request_timeout=request_timeout)
        self._models_dir = models_dir
        self._namespaces = namespaces
        self._start_lock = threading.Lock()
        self.sandbox: SandboxCluster | None = None

    def ensure_started(self) -> SandboxCluster:
        with self._start_lock:
            if self.sandbox is None:
                from opsgate.sandbox import SandboxCluster

                # serves our models folder; creates the namespaces asked for (--sandbox-namespaces)
                self.sandbox = SandboxCluster(models_dir=self._models_dir, namespaces=self._namespaces).start()
                # its kubeconfig: HTTPS trusting the sandbox's CA, with the token kubectl and client-go send too
                self._config_dict = self.sandbox.kubeconfig()
                log.info("sandbox_started", server=self.sandbox.url)
            return self.sandbox

    def _build(self) -> ApiClient:
        self.ensure_started()
        return super()._build()

    def stop(self) -> None:
        self.close()
        with self._start_lock:
            if self.sandbox is not None:
                self.sandbox.stop()


@dataclass
class Cluster:
    kube: Kube
    source: str  # "kubeconfig", "in-cluster" or "sandbox"

    @property
    def is_sandbox(self) -> bool:
        return isinstance(self.kube, SandboxKube)

    def describe(self) -> dict[str, Any]:
        """What we were told, for whoami and the banner (the sandbox starts if it has not yet)."""
        info: dict[str, Any] = {"source": self.source, "sandbox": self.is_sandbox}
        if isinstance(self.kube, SandboxKube):
            if self.kube.sandbox is None:
                no_wait()  # starting it binds a port and builds a CA: not on the event loop (whoami)
            sandbox = self.kube.ensure_started()
            info["server"] = sandbox.url
            info["namespaces"] = sandbox.namespaces
        else:
            info["kubeconfig"] = str(self.kube.target.kubeconfig) if self.kube.target.kubeconfig else None
            info["context"] = self.kube.target.context
        return info

    def close(self) -> None:
        if isinstance(self.kube, SandboxKube):
            self.kube.stop()
        else:
            self.kube.close()


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
    timeout = (min(3.0, settings.kube_timeout_seconds), settings.kube_timeout_seconds)  # (connect, read)
    if path is not None:
        return Cluster(Kube(KubeTarget(kubeconfig=path, context=settings.context), request_timeout=timeout),
                       "kubeconfig")
    if env.get("KUBERNETES_SERVICE_HOST"):
        return Cluster(Kube(KubeTarget(in_cluster=True), request_timeout=timeout), "in-cluster")
    return Cluster(SandboxKube(settings.models, timeout, settings.sandbox_namespaces), "sandbox")


def describe_cluster(cluster: Cluster) -> str:
    """One line for people: the banner and logs."""
    return cluster_text(cluster.describe())


def cluster_text(info: Mapping[str, Any]) -> str:
    """One line for people from ``Cluster.describe()``'s facts (the banner, whoami's text)."""
    if info.get("sandbox"):
        namespaces = ", ".join(info.get("namespaces") or [])
        return f"SANDBOX (built in, in memory) at {info.get('server')}" + (
            f"; namespaces {namespaces}" if namespaces else "")
    if info.get("source") == "in-cluster":
        return "in-cluster service account"
    return f"kubeconfig {info.get('kubeconfig')}" + (f" context {info['context']}" if info.get("context") else "")
