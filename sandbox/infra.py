"""The cluster's own objects: its Node, the ``kubernetes`` Service and its endpoints, ComponentStatuses.

Pods say ``nodeName: sandbox-node``, so that Node exists (Ready, with this
machine's CPUs and memory as capacity, and its Lease in ``kube-node-lease``
renewed every ten seconds as the kubelet does); ``kubectl cluster-info`` and clients
that find the API server through the ``kubernetes`` Service in ``default`` see
it, with Endpoints and an EndpointSlice at the sandbox's own address and port,
as the API server's endpoint reconciler writes them. Services, Endpoints and
EndpointSlices are served for any name, but nothing reconciles the ones a
client creates (no endpoints controller, no proxy): a Service gets a cluster
IP and its defaults, nothing routes to it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import platform
import time
import uuid
from typing import Any

from .controllers import Controller
from .discovery import SERVER_MAJOR, SERVER_MINOR
from .kinds import _dict, _path, _spec, _status
from .pods import NODE_IP, NODE_NAME, RUNTIME
from .resources import POD_MERGE_KEYS, Column, ResourceType
from .store import WatchEvent, now_rfc3339
from .tables import AGE_COLUMN

JSON = dict[str, Any]

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
KUBERNETES_SERVICE_IP = "10.96.0.1"
KUBELET_VERSION = f"v{SERVER_MAJOR}.{SERVER_MINOR}.0-opsgate-sandbox"


# --- defaulting --------------------------------------------------------------------------------


def cluster_ip(namespace: str, name: str) -> str:
    """A stable address in the service range (the real allocator is random; nothing routes here anyway)."""
    digest = int.from_bytes(hashlib.sha256(f"{namespace}/{name}".encode()).digest()[:4], "big")
    size = SERVICE_CIDR.num_addresses
    return str(SERVICE_CIDR.network_address + 2 + digest % (size - 3))  # .0 and .1 are taken


def default_service(obj: JSON) -> None:
    meta, spec = _dict(obj, "metadata"), _dict(obj, "spec")
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec.get("type") != "ExternalName":
        if not spec.get("clusterIP"):
            spec["clusterIP"] = cluster_ip(str(meta.get("namespace", "")), str(meta.get("name", "")))
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    _dict(obj, "status").setdefault("loadBalancer", {})


# --- printer columns ---------------------------------------------------------------------------


def _node_status(o: JSON) -> str:
    conditions = _status(o).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    status = "Ready" if ready and ready.get("status") == "True" else "NotReady" if ready else "Unknown"
    return status + (",SchedulingDisabled" if _spec(o).get("unschedulable") else "")


def _node_roles(o: JSON) -> str:
    labels = (o.get("metadata") or {}).get("labels") or {}
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix):] for k in labels if k.startswith(prefix) and k[len(prefix):])
    return ",".join(roles) or "<none>"


def _node_address(kind: str) -> Any:
    def cell(o: JSON) -> str:
        found = [a.get("address", "") for a in _status(o).get("addresses") or [] if a.get("type") == kind]
        return found[0] if found else "<none>"

    return cell


def _node_info(key: str) -> Any:
    return lambda o: (_status(o).get("nodeInfo") or {}).get(key, "<unknown>")


NODE_COLUMNS = (
    Column("Status", "string", _node_status, "The status of the node"),
    Column("Roles", "string", _node_roles, "The roles of the node"),
    AGE_COLUMN,
    Column("Version", "string", _node_info("kubeletVersion"), "Kubelet Version reported by the node."),
    Column("Internal-IP", "string", _node_address("InternalIP"), "List of addresses reachable to the node.",
           priority=1),
    Column("External-IP", "string", _node_address("ExternalIP"), "List of addresses reachable to the node.",
           priority=1),
    Column("OS-Image", "string", _node_info("osImage"), "OS Image reported by the node.", priority=1),
    Column("Kernel-Version", "string", _node_info("kernelVersion"), "Kernel Version reported by the node.",
           priority=1),
    Column("Container-Runtime", "string", _node_info("containerRuntimeVersion"),
           "Container Runtime Version reported by the node.", priority=1),
)


def _service_ports(o: JSON) -> str:
    ports = []
    for p in _spec(o).get("ports") or []:
        node_port = f":{p['nodePort']}" if p.get("nodePort") else ""
        ports.append(f"{p.get('port')}{node_port}/{p.get('protocol', 'TCP')}")
    return ",".join(ports) or "<none>"


def _external_ip(o: JSON) -> str:
    spec = _spec(o)
    if spec.get("type") == "ExternalName":
        return str(spec.get("externalName", "<none>"))
    ips = list(spec.get("externalIPs") or [])
    ips += [i.get("ip") or i.get("hostname") for i in (_status(o).get("loadBalancer") or {}).get("ingress") or []]
    if ips:
        return ",".join(str(i) for i in ips)
    return "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"


def _selector_cell(o: JSON) -> str:
    selector = _spec(o).get("selector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>"


SERVICE_COLUMNS = (
    Column("Type", "string", lambda o: _spec(o).get("type", ""), "The type of service."),
    Column("Cluster-IP", "string", lambda o: _spec(o).get("clusterIP") or "<none>", "The cluster IP of the service."),
    Column("External-IP", "string", _external_ip, "The external IPs of the service."),
    Column("Port(s)", "string", _service_ports, "The ports of the service."),
    AGE_COLUMN,
    Column("Selector", "string", _selector_cell, "The selector of the service.", priority=1),
)


def _endpoints_cell(o: JSON) -> str:
    found = []
    for subset in o.get("subsets") or []:
        for address in subset.get("addresses") or []:
            for port in subset.get("ports") or [{}]:
                found.append(f"{address.get('ip')}:{port['port']}" if port.get("port") else str(address.get("ip")))
    if not found:
        return "<none>"
    return ",".join(found[:3]) + (f" + {len(found) - 3} more..." if len(found) > 3 else "")


ENDPOINTS_COLUMNS = (Column("Endpoints", "string", _endpoints_cell, "Endpoints of the service."), AGE_COLUMN)


def _slice_ports(o: JSON) -> str:
    return ",".join(str(p.get("port")) for p in o.get("ports") or []) or "<unset>"


def _slice_endpoints(o: JSON) -> str:
    found = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    if not found:
        return "<unset>"
    return ",".join(found[:3]) + (f" + {len(found) - 3} more..." if len(found) > 3 else "")


ENDPOINT_SLICE_COLUMNS = (
    Column("AddressType", "string", lambda o: o.get("addressType", ""), "The type of addresses in the slice."),
    Column("Ports", "string", _slice_ports, "The ports of the slice."),
    Column("Endpoints", "string", _slice_endpoints, "The addresses in the slice."),
    AGE_COLUMN,
)


def _component_condition(key: str) -> Any:
    def cell(o: JSON) -> str:
        for c in o.get("conditions") or []:
            if c.get("type") == "Healthy":
                if key == "status":
                    return "Healthy" if c.get("status") == "True" else "Unhealthy"
                return str(c.get(key) or "")
        return "Unknown" if key == "status" else ""

    return cell


COMPONENT_STATUS_COLUMNS = (
    Column("Status", "string", _component_condition("status"), "Status of the component conditions"),
    Column("Message", "string", _component_condition("message"), "Message of the component conditions"),
    Column("Error", "string", _component_condition("error"), "Error of the component conditions"),
)


# --- the types -----------------------------------------------------------------------------------

NODE = ResourceType(
    group="", version="v1", plural="nodes", kind="Node", namespaced=False, short_names=("no",),
    status_subresource=True, merge_keys=POD_MERGE_KEYS, columns=NODE_COLUMNS, delete_returns_object=False,
    field_selectors={"spec.unschedulable": _path("spec", "unschedulable")},
)
SERVICE = ResourceType(
    group="", version="v1", plural="services", kind="Service", short_names=("svc",), categories=("all",),
    verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"),
    status_subresource=True, merge_keys={**POD_MERGE_KEYS, "ports": "port"}, defaulter=default_service,
    columns=SERVICE_COLUMNS,
)
ENDPOINTS = ResourceType(
    group="", version="v1", plural="endpoints", kind="Endpoints", singular="endpoints", list_kind="EndpointsList",
    short_names=("ep",), generation_paths=(), merge_keys=POD_MERGE_KEYS, columns=ENDPOINTS_COLUMNS,
)
ENDPOINT_SLICE = ResourceType(
    group="discovery.k8s.io", version="v1", plural="endpointslices", kind="EndpointSlice", generation_paths=(),
    merge_keys=POD_MERGE_KEYS, columns=ENDPOINT_SLICE_COLUMNS,
)
COMPONENT_STATUS = ResourceType(
    group="", version="v1", plural="componentstatuses", kind="ComponentStatus", namespaced=False,
    short_names=("cs",), verbs=("get", "list"), generation_paths=(), columns=COMPONENT_STATUS_COLUMNS,
)

LEASE = ResourceType(
    group="coordination.k8s.io", version="v1", plural="leases", kind="Lease", generation_paths=(),
    merge_keys=POD_MERGE_KEYS,
    columns=(Column("Holder", "string", lambda o: _spec(o).get("holderIdentity", ""), "The holder of the lease."),
             AGE_COLUMN),
)

INFRA_TYPES: tuple[ResourceType, ...] = (NODE, SERVICE, ENDPOINTS, ENDPOINT_SLICE, COMPONENT_STATUS, LEASE)
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
LEASE_RENEW_SECONDS = 10.0  # the kubelet renews at a quarter of the duration


# --- the objects ---------------------------------------------------------------------------------


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def node() -> JSON:
    """``sandbox-node``: this machine as the one node (capacity from its CPUs and memory), Ready."""
    cpus = str(os.cpu_count() or 1)
    memory = f"{_memory_bytes() // 1024}Ki"
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine() or "amd64")
    resources = {"cpu": cpus, "memory": memory, "pods": "110", "ephemeral-storage": "10Gi",
                 "hugepages-2Mi": "0"}
    conditions = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status (the opsgate sandbox's stand-in kubelet)"),
    ]
    machine = uuid.uuid5(uuid.NAMESPACE_DNS, NODE_NAME).hex
    stamp = now_rfc3339()
    return {
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": arch,
                "node-role.kubernetes.io/control-plane": "",
            },
        },
        "spec": {"podCIDR": "10.244.0.0/16", "podCIDRs": ["10.244.0.0/16"]},
        "status": {
            "capacity": resources,
            "allocatable": dict(resources),
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": stamp,
                 "lastTransitionTime": stamp} for t, s, r, m in conditions
            ],
            "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": NODE_NAME}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": machine,
                "systemUUID": str(uuid.UUID(machine)),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": platform.release(),
                "osImage": "opsgate sandbox (in memory, runs no containers)",
                "containerRuntimeVersion": f"{RUNTIME}://0.0.0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch,
            },
        },
    }


def kubernetes_service(port: int) -> JSON:
    """The ``kubernetes`` Service in ``default``, as the API server keeps it (its target: the sandbox's port)."""
    return {
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": KUBERNETES_SERVICE_IP,
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            "sessionAffinity": "None",
        },
    }


def kubernetes_endpoints(host: str, port: int) -> tuple[JSON, JSON]:
    """Endpoints and EndpointSlice ``kubernetes``: the sandbox's own address (the service port maps to it)."""
    labels = {"endpointslice.kubernetes.io/skip-mirror": "true"}
    endpoints = {
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
        "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    }
    endpoint_slice = {
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }
    return endpoints, endpoint_slice


def component_statuses() -> list[JSON]:
    """The (deprecated) ComponentStatus list: the sandbox's stand-ins, all in this process."""
    parts = {
        "scheduler": "ok",
        "controller-manager": "ok",
        "etcd-0": "ok (the sandbox keeps objects in memory; there is no etcd)",
    }
    return [
        {"metadata": {"name": name}, "conditions": [{"type": "Healthy", "status": "True", "message": message}]}
        for name, message in parts.items()
    ]


def _micro_time(stamp: float) -> str:
    whole = int(stamp)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((stamp - whole) * 1e6):06d}Z"


def node_lease(node_obj: JSON, now: float) -> JSON:
    """The node's heartbeat Lease in ``kube-node-lease``, owned by the Node, as the kubelet keeps it."""
    meta = node_obj.get("metadata") or {}
    return {
        "metadata": {
            "name": meta.get("name", NODE_NAME),
            "namespace": NODE_LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": meta.get("name", NODE_NAME),
                                 "uid": meta.get("uid", "")}],
        },
        "spec": {"holderIdentity": meta.get("name", NODE_NAME), "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                 "renewTime": _micro_time(now)},
    }


class NodeLeaseController(Controller):
    """The kubelet's heartbeat: renews the node's Lease every ten seconds while the sandbox runs."""

    name = "kubelet-lease"
    watches = (LEASE,)

    def keys_for(self, event: WatchEvent) -> list[tuple[str, str]]:
        meta = event.obj.get("metadata") or {}
        if event.type != "ADDED" or meta.get("namespace") != NODE_LEASE_NAMESPACE:
            return []
        return [(NODE_LEASE_NAMESPACE, str(meta.get("name", "")))]

    def reconcile(self, namespace: str, name: str) -> float | None:
        if self.s.find(LEASE, namespace, name) is None:
            return None
        stamp = _micro_time(time.time())

        def renew(cur: JSON) -> JSON:
            cur.setdefault("spec", {})["renewTime"] = stamp
            return cur

        self.s.update(LEASE, namespace, name, renew)
        return LEASE_RENEW_SECONDS
