"""Controllers: the sandbox's kube-controller-manager (and a stand-in kubelet).

A ``ControllerManager`` runs one worker thread over a delay queue. Every
committed store write is offered to each controller that watches its type;
the controller maps it to object keys to reconcile (a ReplicaSet change wakes
its owning Deployment). ``reconcile`` may return a delay to be called again,
which is how time-based convergence (pods becoming ready after
``rollout_delay``) works. New controllers (a KServe one, say) subclass
``Controller`` and are added with ``SandboxCluster.add_controller``.

Built in:

- ``DeploymentController``: one ReplicaSet per distinct template, revisions,
  rollback reuse, ``revisionHistoryLimit``, ``paused``, status and conditions
  (the decisions are in ``rollout.py``). A rolling update surges the new
  ReplicaSet to full size, then scales the old ones to zero once it is
  available; ``Recreate`` scales the old ones down first.
- ``ReplicaSetController``: creates and deletes Pods to match ``spec.replicas``
  and reports their counts in the ReplicaSet status.
- ``KubeletController``: marks a Pending Pod Running and Ready ``rollout_delay``
  seconds after it first sees it (no containers are run).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import secrets
import threading
import time
from functools import partial
from typing import Any

from . import rollout
from .errors import ApiError
from .events import EventCorrelator
from .kinds import DEPLOYMENT, EVENT, POD, REPLICASET
from .logs import log
from .pods import NODE_IP, NODE_NAME, PodLogs, container_id, image_id, image_reference
from .resources import ResourceType
from .store import Store, WatchEvent, now_rfc3339, random_suffix

JSON = dict[str, Any]
Key = tuple[str, str]



def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def controller_owner(obj: JSON, kind: str) -> str | None:
    """Name of the controlling owner of ``kind``, if any."""
    for ref in _meta(obj).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return str(ref.get("name"))
    return None


def owner_reference(owner: JSON) -> JSON:
    meta = _meta(owner)
    return {
        "apiVersion": owner.get("apiVersion", ""),
        "kind": owner.get("kind", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


class Controller:
    """Base class: which types wake the controller, how to map a change to keys, and how to reconcile one."""

    name = "controller"
    watches: tuple[ResourceType, ...] = ()

    def __init__(self) -> None:
        self.store: Store | None = None
        self.rollout_delay = 0.2
        self.events = EventCorrelator()
        self._events_lock = threading.Lock()

    def bind(self, store: Store, rollout_delay: float) -> None:
        self.store = store
        self.rollout_delay = rollout_delay

    @property
    def s(self) -> Store:
        if self.store is None:
            raise RuntimeError(f"{self.name} is not bound to a store")
        return self.store

    def keys_for(self, event: WatchEvent) -> list[Key]:
        meta = _meta(event.obj)
        return [(str(meta.get("namespace", "")), str(meta.get("name", "")))]

    def reconcile(self, namespace: str, name: str) -> float | None:
        """Bring one object toward its desired state; return seconds until the next call, or None."""
        raise NotImplementedError

    def record_event(self, involved: JSON, reason: str, message: str, event_type: str = "Normal", *,
                     component: str | None = None, field_path: str = "", host: str = "") -> None:
        """Write a core/v1 Event, as controllers do (``kubectl describe`` lists them).

        Through this controller's ``EventCorrelator``: a repeat raises the count of the Event
        written before, and many similar ones are combined, as client-go's recorder does.
        ``component`` is the source when it is not this controller (the scheduler's events are
        written by the stand-in kubelet), ``field_path`` the container (``spec.containers{web}``).
        """
        meta = _meta(involved)
        namespace = str(meta.get("namespace") or "default")
        source = component or self.name
        involved_ref: JSON = {
            "apiVersion": involved.get("apiVersion", ""),
            "kind": involved.get("kind", ""),
            "name": meta.get("name", ""),
            "namespace": namespace,
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if field_path:
            involved_ref["fieldPath"] = field_path
        event: JSON = {
            "metadata": {"name": f"{meta.get('name')}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": involved_ref,
            "reason": reason,
            "message": message,
            "type": event_type,
            "source": {"component": source, **({"host": host} if host else {})},
            "reportingComponent": source,
            "reportingInstance": host,
        }
        with self._events_lock:
            correlated = self.events.correlate(event, time.time())
            written = correlated.event
            try:
                if correlated.update:
                    try:
                        self.s.update(EVENT, namespace, str(written["metadata"]["name"]), partial(_bump, written))
                        return
                    except ApiError as exc:
                        if exc.code != 404:
                            raise
                self.s.create(EVENT, written, namespace=namespace)
            except ApiError as exc:
                self.events.forget(written)
                log.debug("sandbox.event_dropped", reason=reason, error=exc.message)


def _bump(written: JSON, cur: JSON) -> JSON:
    """What the recorder's PATCH of a repeated event changes: count, lastTimestamp, message."""
    for key in ("count", "lastTimestamp", "message"):
        cur[key] = written[key]
    return cur


class ControllerManager:
    """One worker thread draining a delay queue of (controller, key) reconciles."""

    def __init__(self, store: Store, rollout_delay: float) -> None:
        self.store = store
        self.rollout_delay = rollout_delay
        self._controllers: list[Controller] = []
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, int, Key]] = []
        self._due: dict[tuple[int, Key], float] = {}
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False
        store.add_listener(self._on_event)

    def add(self, controller: Controller) -> None:
        controller.bind(self.store, self.rollout_delay)
        with self._lock:
            self._controllers.append(controller)
        # Catch up with objects that exist already.
        for rt in controller.watches:
            for obj in self.store.list_objects(rt, None).items:
                self._offer(controller, WatchEvent(0, "ADDED", rt, obj, None))

    def _on_event(self, event: WatchEvent) -> None:
        with self._lock:
            controllers = list(self._controllers)
        for controller in controllers:
            self._offer(controller, event)

    def _offer(self, controller: Controller, event: WatchEvent) -> None:
        if not any(rt.key == event.rt.key for rt in controller.watches):
            return
        for key in controller.keys_for(event):
            self.enqueue(controller, key, 0.0)

    def enqueue(self, controller: Controller, key: Key, delay: float) -> None:
        with self._lock:
            index = self._controllers.index(controller)
            due = time.monotonic() + delay
            current = self._due.get((index, key))
            if current is not None and current <= due:
                return
            self._due[(index, key)] = due
            heapq.heappush(self._heap, (due, next(self._seq), index, key))
            self._lock.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sandbox-controllers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def idle(self) -> bool:
        """No reconcile running and none due now (later timers may be pending)."""
        with self._lock:
            return not self._busy and not any(due <= time.monotonic() for due in self._due.values())

    def _next(self) -> tuple[Controller, Key] | None:
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                while self._heap and self._due.get((self._heap[0][2], self._heap[0][3])) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier entry
                if self._heap and self._heap[0][0] <= now:
                    _, _, index, key = heapq.heappop(self._heap)
                    del self._due[(index, key)]
                    self._busy = True
                    return self._controllers[index], key
                timeout = self._heap[0][0] - now if self._heap else None
                self._lock.wait(timeout)
            return None

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            controller, key = item
            delay: float | None
            try:
                delay = controller.reconcile(*key)
            except ApiError as exc:
                log.debug("sandbox.reconcile_retry", controller=controller.name, key=key, error=exc.message)
                delay = 0.05
            except Exception:
                log.exception("sandbox.reconcile_failed", controller=controller.name, key=key)
                delay = 1.0
            finally:
                with self._lock:
                    self._busy = False
            if delay is not None and not self.store.closed:
                self.enqueue(controller, key, delay)


class KubeletController(Controller):
    """Pods go Pending -> Running/Ready ``rollout_delay`` seconds after they are first seen.

    It writes what the scheduler and kubelet would: a ``Scheduled`` event when it first sees
    a pod, ``Pulled``/``Created``/``Started`` per container when it marks it running, a
    status with ``podIPs``, ``containerID`` and ``imageID``, and a few log lines of its own
    per container (``kubectl logs`` reads them; no process runs, so there is no other output).
    """

    name = "kubelet"
    watches = (POD,)

    def __init__(self, pod_logs: PodLogs | None = None) -> None:
        super().__init__()
        self._first_seen: dict[str, float] = {}
        self._ips = itertools.count(2)
        self.pod_logs = pod_logs if pod_logs is not None else PodLogs()

    def keys_for(self, event: WatchEvent) -> list[Key]:
        if event.type == "DELETED":
            self._first_seen.pop(str(_meta(event.obj).get("uid")), None)
            self.pod_logs.drop(str(_meta(event.obj).get("namespace")), str(_meta(event.obj).get("name")))
            return []
        if (event.obj.get("status") or {}).get("phase") != "Pending":
            return []
        return super().keys_for(event)

    def _creating(self, namespace: str, name: str) -> None:
        """Scheduled, containers being created: the Pending status a kubelet writes before they start."""
        stamp = now_rfc3339()

        def pending(cur: JSON) -> JSON:
            containers = [c for c in (cur.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]
            names = " ".join(str(c.get("name")) for c in containers)
            not_ready = {"status": "False", "reason": "ContainersNotReady",
                         "message": f"containers with unready status: [{names}]"}
            cur["status"] = {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodReadyToStartContainers", "status": "False"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", **not_ready},
                    {"type": "ContainersReady", **not_ready},
                    {"type": "PodScheduled", "status": "True"},
                ],
                "hostIP": NODE_IP,
                "hostIPs": [{"ip": NODE_IP}],
                "startTime": stamp,
                "qosClass": "BestEffort",
                "containerStatuses": [
                    {"name": c.get("name", ""), "image": image_reference(str(c.get("image", "")))[0], "imageID": "",
                     "ready": False, "started": False, "restartCount": 0,
                     "state": {"waiting": {"reason": "ContainerCreating"}}}
                    for c in containers
                ],
            }
            for condition in cur["status"]["conditions"]:
                condition.update(lastProbeTime=None, lastTransitionTime=stamp)
            return cur

        self.s.update(POD, namespace, name, pending, subresource="status")

    def reconcile(self, namespace: str, name: str) -> float | None:
        pod = self.s.find(POD, namespace, name)
        if pod is None or (pod.get("status") or {}).get("phase") != "Pending":
            return None
        uid = str(_meta(pod).get("uid"))
        if uid not in self._first_seen:
            self._first_seen[uid] = time.monotonic()
            node = (pod.get("spec") or {}).get("nodeName") or NODE_NAME
            self.record_event(pod, "Scheduled", f"Successfully assigned {namespace}/{name} to {node}",
                              component="default-scheduler")
            self._creating(namespace, name)
        first = self._first_seen[uid]
        wait = first + self.rollout_delay - time.monotonic()
        if wait > 0:
            return wait
        stamp = now_rfc3339()
        ip = next(self._ips)
        pod_ip = f"10.244.{ip // 250 % 250}.{ip % 250 + 1}"
        containers = [c for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]

        def run(cur: JSON) -> JSON:
            cur["status"] = {
                "phase": "Running",
                "conditions": [
                    {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp}
                    for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
                ],
                "hostIP": NODE_IP,
                "hostIPs": [{"ip": NODE_IP}],
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "startTime": stamp,
                "qosClass": "BestEffort",
                "containerStatuses": [
                    {
                        "name": c.get("name", ""),
                        "image": image_reference(str(c.get("image", "")))[0],
                        "imageID": image_id(str(c.get("image", ""))),
                        "containerID": container_id(uid, str(c.get("name", ""))),
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": stamp}},
                    }
                    for c in containers
                ],
            }
            return cur

        running = self.s.update(POD, namespace, name, run, subresource="status")
        self._first_seen.pop(uid, None)
        for c in containers:
            cname, image = str(c.get("name", "")), str(c.get("image", ""))
            where = {"component": "kubelet", "field_path": f"spec.containers{{{cname}}}", "host": NODE_NAME}
            self.record_event(running, "Pulled", f'Container image "{image}" already present on machine', **where)
            self.record_event(running, "Created", f"Created container: {cname}", **where)
            self.record_event(running, "Started", f"Started container {cname}", **where)
            self.pod_logs.write(namespace, name, cname,
                                f"opsgate sandbox kubelet: container {cname} marked running (image {image})")
            self.pod_logs.write(namespace, name, cname,
                                "opsgate sandbox kubelet: no process runs in the sandbox; these lines are all "
                                "the log there is")
        return None


class ReplicaSetController(Controller):
    """Keeps ``spec.replicas`` Pods per ReplicaSet and reports their counts."""

    name = "replicaset-controller"
    watches = (REPLICASET, POD)

    def keys_for(self, event: WatchEvent) -> list[Key]:
        if event.rt.key == POD.key:
            owner = controller_owner(event.obj, "ReplicaSet")
            return [] if owner is None else [(str(_meta(event.obj).get("namespace")), owner)]
        if event.type == "DELETED":
            return []
        return super().keys_for(event)

    def reconcile(self, namespace: str, name: str) -> float | None:
        rs = self.s.find(REPLICASET, namespace, name)
        if rs is None:
            return None
        uid = str(_meta(rs).get("uid"))
        pods = self.s.owned_by(POD, namespace, uid)
        want = int((rs.get("spec") or {}).get("replicas") or 0)
        if len(pods) < want:
            for _ in range(want - len(pods)):
                pod = self._create_pod(rs)
                pods.append(pod)
                self.record_event(rs, "SuccessfulCreate", f"Created pod: {_meta(pod).get('name')}")
        elif len(pods) > want:
            # Not-ready pods go first, then the newest.
            pods.sort(key=lambda p: _meta(p).get("creationTimestamp") or "", reverse=True)
            pods.sort(key=lambda p: (p.get("status") or {}).get("phase") == "Running")
            doomed, pods = pods[: len(pods) - want], pods[len(pods) - want :]
            for pod in doomed:
                with contextlib.suppress(ApiError):
                    self.s.delete(POD, namespace, str(_meta(pod).get("name")))
                self.record_event(rs, "SuccessfulDelete", f"Deleted pod: {_meta(pod).get('name')}")
        ready = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
        template_labels = (((rs.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        labelled = sum(
            1 for p in pods if all((_meta(p).get("labels") or {}).get(k) == v for k, v in template_labels.items())
        )
        status: JSON = {"replicas": len(pods)}
        if labelled:
            status["fullyLabeledReplicas"] = labelled
        if ready:
            status["readyReplicas"] = ready
            status["availableReplicas"] = ready
        status["observedGeneration"] = int(_meta(rs).get("generation") or 0)
        if rs.get("status") != status:

            def put(cur: JSON) -> JSON:
                cur["status"] = status
                return cur

            self.s.update(REPLICASET, namespace, name, put, subresource="status")
        return None

    def _create_pod(self, rs: JSON) -> JSON:
        meta = _meta(rs)
        template = (rs.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        pod_meta: JSON = {
            "name": f"{meta.get('name')}-{random_suffix()}",
            "labels": dict(tmeta.get("labels") or {}),
            "ownerReferences": [owner_reference(rs)],
        }
        if tmeta.get("annotations"):
            pod_meta["annotations"] = dict(tmeta["annotations"])
        spec = dict(template.get("spec") or {})
        spec["nodeName"] = NODE_NAME
        return self.s.create(POD, {"metadata": pod_meta, "spec": spec}, namespace=str(meta.get("namespace")))


class DeploymentController(Controller):
    """kube-controller-manager's Deployment controller, simplified to surge-then-drain rollouts."""

    name = "deployment-controller"
    watches = (DEPLOYMENT, REPLICASET)

    def keys_for(self, event: WatchEvent) -> list[Key]:
        if event.rt.key == REPLICASET.key:
            owner = controller_owner(event.obj, "Deployment")
            return [] if owner is None else [(str(_meta(event.obj).get("namespace")), owner)]
        if event.type == "DELETED":
            return []
        return super().keys_for(event)

    def reconcile(self, namespace: str, name: str) -> float | None:
        d = self.s.find(DEPLOYMENT, namespace, name)
        if d is None:
            return None
        uid = str(_meta(d).get("uid"))
        owned = [rs for rs in self.s.owned_by(REPLICASET, namespace, uid)
                 if controller_owner(rs, "Deployment") == name]
        spec = d.get("spec") or {}
        desired = int(spec.get("replicas") or 0)
        paused = bool(spec.get("paused"))
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        new_rs = rollout.find_new_replicaset(d, owned)
        old_rss = [rs for rs in owned if new_rs is None or _meta(rs).get("uid") != _meta(new_rs).get("uid")]
        created = False

        if paused:
            active = [rs for rs in owned if int((rs.get("spec") or {}).get("replicas") or 0) > 0]
            target = new_rs if new_rs is not None else (active[0] if len(active) == 1 else None)
            if target is not None:
                self._scale(d, target, desired)
        else:
            new_revision = rollout.max_revision(old_rss) + 1
            if new_rs is None:
                old_active = any(int((rs.get("status") or {}).get("replicas") or 0) > 0 for rs in old_rss)
                new_rs = self._create_rs(d, 0 if recreate and old_active else desired, new_revision, owned)
                created = True
            else:
                new_rs = self._sync_rs_annotations(d, new_rs, new_revision)
            if recreate:
                for rs in old_rss:
                    self._scale(d, rs, 0)
                drained = all(int((rs.get("status") or {}).get("replicas") or 0) == 0 for rs in old_rss)
                if drained:
                    new_rs = self._scale(d, new_rs, desired)
            else:
                new_rs = self._scale(d, new_rs, desired)
                status = new_rs.get("status") or {}
                ready = (
                    int(status.get("availableReplicas") or 0) >= desired
                    and int(status.get("observedGeneration") or 0) >= int(_meta(new_rs).get("generation") or 0)
                )
                if ready:
                    for rs in old_rss:
                        self._scale(d, rs, 0)
        all_rs = [*old_rss, new_rs] if new_rs is not None else old_rss
        status = rollout.deployment_status(d, new_rs, all_rs, now=now_rfc3339(), created_new=created)
        if paused or rollout.deployment_complete(d, status):
            for rs in rollout.replicasets_to_prune(d, old_rss):
                with contextlib.suppress(ApiError):
                    self.s.delete(REPLICASET, namespace, str(_meta(rs).get("name")))
        revision = rollout.revision(new_rs) if new_rs is not None else 0
        self._write_status(d, status, revision)
        return None

    def _write_status(self, d: JSON, status: JSON, revision: int) -> None:
        meta = _meta(d)
        annotations = dict(meta.get("annotations") or {})
        if revision:
            annotations[rollout.REVISION] = str(revision)
        if d.get("status") == status and (meta.get("annotations") or {}) == annotations:
            return

        def put(cur: JSON) -> JSON:
            cur["status"] = status
            cur_annotations = dict(_meta(cur).get("annotations") or {})
            if revision:
                cur_annotations[rollout.REVISION] = str(revision)
            _meta(cur)["annotations"] = cur_annotations
            return cur

        self.s.update(DEPLOYMENT, str(meta.get("namespace")), str(meta.get("name")), put, subresource="status")

    def _create_rs(self, d: JSON, replicas: int, new_revision: int, owned: list[JSON]) -> JSON:
        meta = _meta(d)
        spec = d.get("spec") or {}
        template = rollout.strip_hash(spec.get("template"))
        collision = int((d.get("status") or {}).get("collisionCount") or 0)
        names = {_meta(rs).get("name") for rs in owned}
        while True:
            pod_hash = rollout.template_hash(template, collision)
            rs_name = f"{meta.get('name')}-{pod_hash}"
            if rs_name not in names and self.s.find(REPLICASET, str(meta.get("namespace")), rs_name) is None:
                break
            collision += 1
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), rollout.HASH_LABEL: pod_hash}
        selector = dict(spec.get("selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}), rollout.HASH_LABEL: pod_hash}
        shell: JSON = {"metadata": {"annotations": {}}}
        rs = {
            "apiVersion": REPLICASET.api_version,
            "kind": REPLICASET.kind,
            "metadata": {
                "name": rs_name,
                "namespace": meta.get("namespace"),
                "labels": dict(tmeta["labels"]),
                "annotations": rollout.new_replicaset_annotations(d, shell, new_revision),
                "ownerReferences": [owner_reference(d)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": int(spec.get("minReadySeconds") or 0),
                "selector": selector,
                "template": template,
            },
        }
        created = self.s.create(REPLICASET, rs, namespace=str(meta.get("namespace")))
        if replicas:
            self.record_event(d, "ScalingReplicaSet", f"Scaled up replica set {rs_name} from 0 to {replicas}")
        return created

    def _sync_rs_annotations(self, d: JSON, rs: JSON, new_revision: int) -> JSON:
        wanted = rollout.new_replicaset_annotations(d, rs, new_revision)
        if wanted == (_meta(rs).get("annotations") or {}):
            return rs

        def put(cur: JSON) -> JSON:
            _meta(cur)["annotations"] = rollout.new_replicaset_annotations(d, cur, new_revision)
            return cur

        return self.s.update(REPLICASET, str(_meta(rs).get("namespace")), str(_meta(rs).get("name")), put)

    def _scale(self, d: JSON, rs: JSON, replicas: int) -> JSON:
        current = int((rs.get("spec") or {}).get("replicas") or 0)
        if current == replicas:
            return rs
        desired = int((d.get("spec") or {}).get("replicas") or 0)
        surge, _ = rollout.surge_and_unavailable(d)

        def put(cur: JSON) -> JSON:
            cur.setdefault("spec", {})["replicas"] = replicas
            annotations = _meta(cur).setdefault("annotations", {})
            annotations[rollout.DESIRED_REPLICAS] = str(desired)
            annotations[rollout.MAX_REPLICAS] = str(desired + surge)
            return cur

        updated = self.s.update(REPLICASET, str(_meta(rs).get("namespace")), str(_meta(rs).get("name")), put)
        verb = "up" if replicas > current else "down"
        self.record_event(
            d, "ScalingReplicaSet", f"Scaled {verb} replica set {_meta(rs).get('name')} from {current} to {replicas}"
        )
        return updated


def builtin_controllers(pod_logs: PodLogs | None = None) -> list[Controller]:
    """The controller manager's and the kubelet's loops; ``pod_logs`` is where the kubelet writes."""
    return [DeploymentController(), ReplicaSetController(), KubeletController(pod_logs)]
