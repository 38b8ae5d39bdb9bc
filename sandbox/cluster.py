"""``SandboxCluster``: the store, the controllers and the HTTP server put together."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from . import infra
from .api import Api
from .config_kinds import CONFIG_TYPES
from .controllers import Controller, ControllerManager, builtin_controllers
from .faults import Fault, FaultTable
from .http import SandboxHTTPServer
from .infra import COMPONENT_STATUS, ENDPOINT_SLICE, ENDPOINTS, INFRA_TYPES, LEASE, NODE, SERVICE
from .kinds import BUILTIN_TYPES, NAMESPACE
from .kserve import INFERENCESERVICE, KServeController
from .logs import log
from .resources import ResourceRegistry, ResourceType
from .reviews import REVIEW_TYPES
from .store import Store
from .tls import ServerTLS, make_certificates

NAME = "opsgate-sandbox"
TOKEN = "opsgate-sandbox-token"  # the kubeconfig's bearer token
USER = "sandbox-admin"  # who the SelfSubjectReview says that token is
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class SandboxCluster:
    """An in-process Kubernetes API on real HTTP, with a Deployment controller.

    Use as a context manager or with ``start()``/``stop()``; point any client at
    ``kubeconfig()`` (or ``write_kubeconfig(path)``). ``rollout_delay`` is how long
    a pod takes to become ready, so how long a rollout takes to converge.

    ``kserve`` (on by default) adds KServe's InferenceService and a controller that
    serves ONNX models over the Open Inference Protocol (``kserve.py``); it is
    ``self.kserve``, with its test hooks. ``models_dir`` is where it resolves a
    ``storageUri`` that is a bare model name (default: the shipped models).

    ``tls`` (on by default): the API is served over HTTPS with a CA made for this
    cluster, written into ``kubeconfig()`` as ``certificate-authority-data``, so
    kubectl and client-go send the bearer token as the Python client does.
    ``tls=False`` serves plain HTTP (for tests that write their own kubeconfig).
    The model servers KServe's controller starts stay on plain HTTP, as a
    cluster-internal predictor URL would be.

    ``namespaces`` are created at start besides ``default`` and the ``kube-*`` ones
    (``opsgate sandbox --namespaces``, ``--sandbox-namespaces`` for the built-in one);
    ``namespaces`` (the property) lists those that exist now. The Node ``sandbox-node``
    and its Lease, ComponentStatuses, and (once the port is known) the ``kubernetes``
    Service with its Endpoints and EndpointSlice exist from the start too (``infra``).

    ``watch_bookmark_seconds``: how often a watch that asked for bookmarks (``allowWatchBookmarks``) gets a
    BOOKMARK event with the version it has reached (the API server's watch cache: about every minute).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, rollout_delay: float = 0.2,
                 kserve: bool = True, models_dir: Path | None = None,
                 users: Mapping[str, str] | None = None, tls: bool = True, namespaces: Sequence[str] = (),
                 watch_bookmark_seconds: float = 60.0) -> None:
        self.host = host
        self.rollout_delay = rollout_delay
        self._requested_port = port
        self.registry = ResourceRegistry()
        for rt in (*BUILTIN_TYPES, *INFRA_TYPES, *CONFIG_TYPES):
            self.registry.register(rt)
        self.store = Store(self.registry)
        self.faults = FaultTable()
        self.users = dict(users if users is not None else {TOKEN: USER})
        self.tls: ServerTLS | None = ServerTLS(make_certificates(host)) if tls else None
        for review in REVIEW_TYPES:
            self.registry.register(review)
        self.api = Api(self.registry, self.store, lambda: f"{self.host}:{self.port}", self.users)
        self.api.watch_bookmark_seconds = watch_bookmark_seconds
        self.controllers = ControllerManager(self.store, rollout_delay)
        for controller in builtin_controllers(self.api.pod_logs):
            self.controllers.add(controller)
        self.kserve: KServeController | None = None
        if kserve:
            self.registry.register(INFERENCESERVICE)
            self.kserve = KServeController(models_dir)
            self.controllers.add(self.kserve)
        for name in dict.fromkeys((*INITIAL_NAMESPACES, *namespaces)):
            self.store.create(NAMESPACE, {"metadata": {"name": name}})
        node = infra.node()
        self.store.create(NODE, node)
        self.store.update(NODE, "", str(node["metadata"]["name"]), lambda cur: {**cur, "status": node["status"]},
                          subresource="status")  # a create drops status, as for any kind with the subresource
        self.store.create(LEASE, infra.node_lease(self.store.get(NODE, "", str(node["metadata"]["name"])),
                                                  time.time()), namespace=infra.NODE_LEASE_NAMESPACE)
        self.controllers.add(infra.NodeLeaseController())
        for status in infra.component_statuses():
            self.store.create(COMPONENT_STATUS, status)
        self._server: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve in a daemon thread; a stopped cluster cannot be started again."""
        if self._server is not None:
            return self
        if self.store.closed:
            raise RuntimeError("this sandbox cluster was stopped; create a new one")
        self._server = SandboxHTTPServer((self.host, self._requested_port), self.api, self.faults,
                                         self.tls.context if self.tls is not None else None)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-http", daemon=True
        )
        self._thread.start()
        self._publish_address()
        self.controllers.start()
        return self

    def _publish_address(self) -> None:
        """The ``kubernetes`` Service, Endpoints and EndpointSlice in ``default``, once the port is known."""
        endpoints, endpoint_slice = infra.kubernetes_endpoints(self.host, self.port)
        self.store.create(SERVICE, infra.kubernetes_service(self.port), namespace="default")
        self.store.create(ENDPOINTS, endpoints, namespace="default")
        self.store.create(ENDPOINT_SLICE, endpoint_slice, namespace="default")

    @property
    def namespaces(self) -> list[str]:
        """The namespaces that exist now (the banner and ``opsgate sandbox`` say which)."""
        return [str(ns["metadata"]["name"]) for ns in self.store.list_objects(NAMESPACE, None).items]

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self.store.close()
        server.shutdown()
        server.close_connections()
        server.server_close()
        self.controllers.stop()
        if self.kserve is not None:
            self.kserve.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox cluster is not started")
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def baggage(self) -> list[str]:
        """The W3C ``baggage`` headers of the last API requests that carried one, oldest first."""
        return list(self._server.baggage) if self._server is not None else []

    @property
    def traceparents(self) -> list[tuple[str, str, str]]:
        """(method, path, traceparent) of the last API requests that carried a W3C ``traceparent``, oldest first."""
        return list(self._server.traceparents) if self._server is not None else []

    @property
    def ca_pem(self) -> bytes | None:
        """The PEM of the CA that signed the serving certificate (None without TLS)."""
        return self.tls.certs.ca_pem if self.tls is not None else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client ``SSLContext`` trusting this cluster's CA, for ``urllib`` and the like."""
        return self.tls.client_context() if self.tls is not None else None

    # --- client configuration ------------------------------------------------------------------

    def kubeconfig(self, token: str = TOKEN) -> dict[str, Any]:
        """A kubeconfig whose cluster, user and context are all named ``opsgate-sandbox``, trusting its CA.

        ``token`` is who the client is: the SelfSubjectReview answers the user ``users``
        maps it to (by default ``sandbox-admin``), or anonymous. Nothing else is checked.
        """
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": NAME, "cluster": self._cluster_entry()}],
            "users": [{"name": NAME, "user": {"token": token}}],
            "contexts": [{"name": NAME, "context": {"cluster": NAME, "user": NAME, "namespace": "default"}}],
            "current-context": NAME,
            "preferences": {},
        }

    def _cluster_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"server": self.url}
        if self.ca_pem is not None:
            entry["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        return entry

    def write_kubeconfig(self, path: Path, token: str = TOKEN) -> None:
        """Write the kubeconfig (JSON, which is YAML too) readable by its owner only."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.kubeconfig(token), fh, indent=2)
            fh.write("\n")

    # --- test hooks and extension points -------------------------------------------------------

    def inject_fault(
        self,
        method: str | None,
        path_regex: str,
        *,
        status: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
        times: int = 1,
    ) -> Fault:
        """Make the next ``times`` requests matching method and path answer ``status``, sleep ``delay``
        first, or drop the connection. ``times <= 0`` means until ``clear_faults()``."""
        return self.faults.add(Fault(method, path_regex, status=status, delay=delay, drop=drop, times=times))

    def clear_faults(self) -> None:
        self.faults.clear()

    def register_resource(self, resource: ResourceType) -> ResourceType:
        """Serve a new kind (a CRD): REST paths, discovery, tables and watch follow from the record."""
        self.registry.register(resource)
        return resource

    def add_controller(self, controller: Controller) -> Controller:
        """Run ``controller`` in the controller manager; it is offered every write of the types it watches."""
        self.controllers.add(controller)
        return controller


def run_sandbox(port: int, kubeconfig_path: Path | None, namespaces: Sequence[str] = ()) -> None:
    """Run a sandbox cluster until SIGINT/SIGTERM (``opsgate sandbox``); logs go to stderr."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with SandboxCluster(port=port, namespaces=namespaces) as cluster:
            hint = None
            if kubeconfig_path is not None:
                cluster.write_kubeconfig(kubeconfig_path)
                hint = f"export KUBECONFIG={Path(kubeconfig_path).resolve()}"
            log.info("sandbox.ready", url=cluster.url, kubeconfig=str(kubeconfig_path or ""), hint=hint,
                     namespaces=",".join(cluster.namespaces))
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
