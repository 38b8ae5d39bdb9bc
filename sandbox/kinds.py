"""The built-in kinds: Namespaces, Deployments, ReplicaSets, Pods, Events.

Defaulting follows the real API server's (``pkg/apis/apps/v1/defaults.go``,
``pkg/apis/core/v1/defaults.go``) for the fields clients look at, so a
dry-run answer and a read-back show the same filled-in object a real cluster
would (replicas 1, RollingUpdate 25%/25%, revisionHistoryLimit 10,
imagePullPolicy from the tag...).
"""

from __future__ import annotations

from typing import Any

from . import validation
from .resources import POD_MERGE_KEYS, Column, ResourceType, ScaleSubresource
from .selectors import selector_string
from .tables import AGE_COLUMN, since

JSON = dict[str, Any]


def _dict(parent: JSON, key: str) -> JSON:
    """``parent[key]`` as a dict, created when missing; a non-dict is left alone (validation reports it)."""
    value = parent.get(key)
    if value is None:
        value = {}
        parent[key] = value
    return value if isinstance(value, dict) else {}


def image_pull_policy(image: str) -> str:
    """Always for ``:latest`` or no tag, else IfNotPresent (as the core/v1 defaulter)."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "Always"
    return "Always" if last.rsplit(":", 1)[1] == "latest" else "IfNotPresent"


def default_pod_spec(spec: JSON) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for field in ("containers", "initContainers"):
        containers = spec.get(field)
        if not isinstance(containers, list):
            continue
        for c in containers:
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            if isinstance(c.get("image"), str):
                c.setdefault("imagePullPolicy", image_pull_policy(c["image"]))
            for port in c.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def default_template(spec: JSON) -> None:
    template = spec.get("template")
    if not isinstance(template, dict):
        return
    meta = _dict(template, "metadata")
    meta.setdefault("creationTimestamp", None)
    pod_spec = template.get("spec")
    if isinstance(pod_spec, dict):
        default_pod_spec(pod_spec)


def default_deployment(obj: JSON) -> None:
    spec = _dict(obj, "spec")
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = _dict(spec, "strategy")
    strategy.setdefault("type", "RollingUpdate")
    if strategy.get("type") == "RollingUpdate":
        rolling = _dict(strategy, "rollingUpdate")
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    default_template(spec)


def default_replicaset(obj: JSON) -> None:
    spec = _dict(obj, "spec")
    spec.setdefault("replicas", 1)
    default_template(spec)


def default_namespace(obj: JSON) -> None:
    meta = _dict(obj, "metadata")
    name = meta.get("name")
    if isinstance(name, str):
        _dict(meta, "labels").setdefault("kubernetes.io/metadata.name", name)
    _dict(obj, "spec").setdefault("finalizers", ["kubernetes"])
    _dict(obj, "status").setdefault("phase", "Active")


def default_pod(obj: JSON) -> None:
    spec = _dict(obj, "spec")
    default_pod_spec(spec)
    status = _dict(obj, "status")
    status.setdefault("phase", "Pending")


# --- printer columns ---------------------------------------------------------------------------


def _spec(o: JSON) -> JSON:
    return o.get("spec") or {}


def _status(o: JSON) -> JSON:
    return o.get("status") or {}


def _containers(o: JSON) -> list[JSON]:
    return list(((_spec(o).get("template") or {}).get("spec") or {}).get("containers") or [])


def _names(o: JSON) -> str:
    return ",".join(str(c.get("name", "")) for c in _containers(o))


def _images(o: JSON) -> str:
    return ",".join(str(c.get("image", "")) for c in _containers(o))


def _selector(o: JSON) -> str:
    return selector_string(_spec(o).get("selector"))


WIDE_WORKLOAD = (
    Column("Containers", "string", _names, "Names of each container in the template.", priority=1),
    Column("Images", "string", _images, "Images referenced by each container in the template.", priority=1),
    Column("Selector", "string", _selector, "Label selector for pods.", priority=1),
)

DEPLOYMENT_COLUMNS = (
    Column(
        "Ready",
        "string",
        lambda o: f"{_status(o).get('readyReplicas', 0)}/{_spec(o).get('replicas', 0)}",
        "Number of the pod with ready state",
    ),
    Column("Up-to-date", "integer", lambda o: _status(o).get("updatedReplicas", 0), "Total number of updated pods."),
    Column("Available", "integer", lambda o: _status(o).get("availableReplicas", 0), "Total number of available pods."),
    AGE_COLUMN,
    *WIDE_WORKLOAD,
)

REPLICASET_COLUMNS = (
    Column("Desired", "integer", lambda o: _spec(o).get("replicas", 0), "Number of desired pods."),
    Column("Current", "integer", lambda o: _status(o).get("replicas", 0), "Number of actual replicas."),
    Column("Ready", "integer", lambda o: _status(o).get("readyReplicas", 0), "The number of ready replicas."),
    AGE_COLUMN,
    *WIDE_WORKLOAD,
)

NAMESPACE_COLUMNS = (
    Column("Status", "string", lambda o: _status(o).get("phase", ""), "The status of the namespace"),
    AGE_COLUMN,
)


def _pod_ready(o: JSON) -> str:
    statuses = _status(o).get("containerStatuses") or []
    total = len(_spec(o).get("containers") or [])
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _pod_phase_reason(o: JSON) -> str:
    """As kubectl's printer: a waiting container's reason (ContainerCreating...) before the phase."""
    for status in _status(o).get("containerStatuses") or []:
        reason = ((status.get("state") or {}).get("waiting") or {}).get("reason")
        if reason:
            return str(reason)
    return str(_status(o).get("reason") or _status(o).get("phase", ""))


POD_COLUMNS = (
    Column("Ready", "string", _pod_ready, "The aggregate readiness state of this pod for accepting traffic."),
    Column("Status", "string", _pod_phase_reason, "The aggregate status of the pod."),
    Column(
        "Restarts",
        "string",
        lambda o: str(sum(int(s.get("restartCount", 0)) for s in _status(o).get("containerStatuses") or [])),
        "The number of times the containers in this pod have been restarted.",
    ),
    AGE_COLUMN,
    Column("IP", "string", lambda o: _status(o).get("podIP", "<none>"), "The IP address of the pod.", priority=1),
    Column("Node", "string", lambda o: _spec(o).get("nodeName", "<none>"), "The node the pod runs on.", priority=1),
)

def _event_first_seen(o: JSON) -> str:
    return since(o.get("firstTimestamp") or o.get("eventTime"))


def _event_object(o: JSON) -> str:
    ref = o.get("involvedObject") or {}
    kind = str(ref.get("kind", "")).lower()
    return f"{kind}/{ref['name']}" if ref.get("name") else kind


def _event_source(o: JSON) -> str:
    """``formatEventSource``: the source's component and host, else the reporting controller and instance."""
    src = o.get("source") or {}
    component = src.get("component") or o.get("reportingComponent") or ""
    host = src.get("host") or o.get("reportingInstance") or ""
    return f"{component}, {host}" if host else str(component)


# As the API server's printer for core/v1 Events (pkg/printers/internalversion): no NAME column first.
EVENT_COLUMNS = (
    Column("Last Seen", "string", lambda o: since(o.get("lastTimestamp")) if o.get("lastTimestamp")
           else _event_first_seen(o), "Time when this Event was last observed."),
    Column("Type", "string", lambda o: o.get("type", ""), "Type of this event (Normal, Warning)."),
    Column("Reason", "string", lambda o: o.get("reason", ""), "Why the action was taken."),
    Column("Object", "string", _event_object, "The object that this event is about."),
    Column("Subobject", "string", lambda o: (o.get("involvedObject") or {}).get("fieldPath", ""),
           "The part of the object this event is about (a container).", priority=1),
    Column("Source", "string", _event_source, "The component reporting this event.", priority=1),
    Column("Message", "string", lambda o: str(o.get("message", "")).strip(), "A human-readable description."),
    Column("First Seen", "string", _event_first_seen, "The time at which the event was first recorded.",
           priority=1),
    Column("Count", "string", lambda o: int(o.get("count") or 1), "The number of times this event has occurred.",
           priority=1),
    Column("Name", "string", lambda o: (o.get("metadata") or {}).get("name", ""), "Name of the Event.",
           priority=1, format="name"),
)


def _workload_scale() -> ScaleSubresource:
    return ScaleSubresource(selector=_selector)


def _path(*parts: str) -> Any:
    def get(o: JSON) -> str:
        cur: Any = o
        for part in parts:
            cur = cur.get(part) if isinstance(cur, dict) else None
        return "" if cur is None else str(cur)

    return get


NAMESPACE = ResourceType(
    group="",
    version="v1",
    plural="namespaces",
    kind="Namespace",
    namespaced=False,
    short_names=("ns",),
    verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    status_subresource=True,
    merge_keys=POD_MERGE_KEYS,
    defaulter=default_namespace,
    validator=validation.namespace,
    columns=NAMESPACE_COLUMNS,
    field_selectors={"status.phase": _path("status", "phase")},
    delete_returns_object=True,
)

DEPLOYMENT = ResourceType(
    group="apps",
    version="v1",
    plural="deployments",
    kind="Deployment",
    short_names=("deploy",),
    categories=("all",),
    status_subresource=True,
    scale=_workload_scale(),
    # The apps strategy bumps generation on annotation changes too (they are copied to ReplicaSets).
    generation_paths=(("spec",), ("metadata", "annotations")),
    merge_keys=POD_MERGE_KEYS,
    defaulter=default_deployment,
    validator=validation.deployment,
    columns=DEPLOYMENT_COLUMNS,
)

REPLICASET = ResourceType(
    group="apps",
    version="v1",
    plural="replicasets",
    kind="ReplicaSet",
    short_names=("rs",),
    categories=("all",),
    status_subresource=True,
    scale=_workload_scale(),
    merge_keys=POD_MERGE_KEYS,
    defaulter=default_replicaset,
    validator=validation.replicaset,
    columns=REPLICASET_COLUMNS,
)

POD = ResourceType(
    group="",
    version="v1",
    plural="pods",
    kind="Pod",
    short_names=("po",),
    categories=("all",),
    status_subresource=True,
    merge_keys=POD_MERGE_KEYS,
    defaulter=default_pod,
    validator=validation.pod,
    columns=POD_COLUMNS,
    field_selectors={"spec.nodeName": _path("spec", "nodeName"), "status.phase": _path("status", "phase")},
    delete_returns_object=True,
)

EVENT = ResourceType(
    group="",
    version="v1",
    plural="events",
    kind="Event",
    short_names=("ev",),
    generation_paths=(),
    merge_keys=POD_MERGE_KEYS,
    columns=EVENT_COLUMNS,
    name_column=False,
    max_objects=1000,
    field_selectors={
        "involvedObject.kind": _path("involvedObject", "kind"),
        "involvedObject.name": _path("involvedObject", "name"),
        "involvedObject.namespace": _path("involvedObject", "namespace"),
        "involvedObject.uid": _path("involvedObject", "uid"),
        "involvedObject.apiVersion": _path("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": _path("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": _path("involvedObject", "fieldPath"),
        "reason": _path("reason"),
        "type": _path("type"),
        "source": _path("source", "component"),
    },
)

SELF_SUBJECT_REVIEW = ResourceType(
    group="authentication.k8s.io",
    version="v1",
    plural="selfsubjectreviews",
    kind="SelfSubjectReview",
    namespaced=False,
    verbs=("create",),
    generation_paths=(),
)
"""``kubectl auth whoami`` and opsgate's identity ask it who a token is; answered, never stored (``Api``)."""

BUILTIN_TYPES: tuple[ResourceType, ...] = (NAMESPACE, EVENT, POD, DEPLOYMENT, REPLICASET, SELF_SUBJECT_REVIEW)
