"""The built-in cluster: a Kubernetes API server and a KServe controller, in process, over HTTPS on 127.0.0.1.

Used when no kubeconfig is configured (``opsgate serve`` starts it on first
use; ``opsgate sandbox`` runs it alone) and by the tests and benchmarks;
nothing else imports it (the import-linter contracts in pyproject.toml). The real
``kubernetes`` Python client, kubectl and client-go based tools talk to it:
full discovery, typed lists, Table output for ``kubectl get``, the three
patch formats, ``scale``/``status`` subresources, ``dryRun=All``, 409/422/404
Status bodies, streamed watches, and a Deployment controller that makes
ReplicaSets with revisions exactly as kube-controller-manager numbers them.

    with SandboxCluster(rollout_delay=0.05) as cluster:
        api = kubernetes.config.new_client_from_config_dict(cluster.kubeconfig())

Modules: ``resources`` (the table of served kinds; ``register_resource`` adds
a CRD), ``kinds`` (built-in kinds: defaults, columns), ``store`` (objects,
resourceVersion, uid, generation, conflicts, watch log), ``patch`` and
``validation`` and ``selectors`` and ``rollout`` (pure), ``apply``
(server-side apply and ``managedFields``, pure), ``reviews`` (access
reviews), ``impersonation`` (who may impersonate, and the RBAC for impersonated users), ``tls`` (the CA
made at start), ``api`` (REST semantics),
``http`` (the socket edge; why the standard library and not kmock is said
there), ``protobuf`` (kubectl's protobuf request bodies),
``controllers`` (with ``events``: client-go's event aggregation), ``pods``
(the stand-in kubelet's logs and ids), ``infra`` (the Node, the ``kubernetes``
Service and its endpoints, ComponentStatuses), ``faults``, ``discovery``,
``openapi`` (v2 and v3 from the kubernetes client's models and ``crd``'s
shipped CRD schemas), ``structural`` (a CRD schema's pruning, defaults and
validation, pure), ``tables``, ``cluster`` (``SandboxCluster``,
``run_sandbox``), ``logs``
(structlog, never stdout), ``kserve`` (KServe's InferenceService, its
controller and the Open Inference Protocol model servers; its own docstring
lists how it differs from KServe).

Differences from a real API server (on purpose, or not yet done):

- No authorization, and authentication only by name: any token, or none, is
  accepted; a ``SelfSubjectReview`` (``kubectl auth whoami``) answers the user
  a known token is mapped to (the kubeconfig's token: ``sandbox-admin``), else
  ``system:anonymous``. Access reviews (``SelfSubjectAccessReview``,
  ``SubjectAccessReview``, ``LocalSubjectAccessReview``,
  ``SelfSubjectRulesReview``; ``reviews``) answer ``allowed: true`` with a
  reason saying so, for any user, as the ``AlwaysAllow`` authorizer would.
  Impersonation (``Impersonate-User``/``-Group``; ``impersonation``) is
  honoured for the named users only, and an optional RBAC (``api.impersonation.rbac``,
  set by tests) authorizes impersonated requests, with the API server's 403 wording.
- TLS (``tls``) with a CA made at start, in the kubeconfig as
  ``certificate-authority-data`` (no client certificates, no rotation); model
  servers stay on plain HTTP. Answers are always JSON whatever ``Accept`` says (no protobuf or
  CBOR out); protobuf request bodies (kubectl's ``create namespace``/``create
  deployment``) are read for the common fields of the built-in kinds only,
  anything else is 415. No aggregated discovery (clients fall back to the
  per-group lists).
- OpenAPI: v3 per group version and v2 with the built-in kinds' schemas from
  the ``kubernetes`` client's models and KServe's own CRD schema (``kubectl
  explain`` works; ``openapi``'s docstring says how they differ from a real
  server's); v2 is JSON only (a protobuf-only ``Accept`` gets 406).
  ``fieldValidation=Strict`` is accepted but unknown fields are kept, not
  rejected (InferenceServices: pruned, as custom resources are).
- InferenceServices are pruned, defaulted and validated against KServe's own
  CRD schema before the webhook's checks (``structural``: types, required,
  enums, patterns, lengths, bounds; no CEL rules, formats or list-type
  uniqueness).
- Server-side apply and ``managedFields`` (``apply``): apply creates, merges,
  owns, removes what a manager stops applying, answers 409 with the real
  conflict message unless ``force``; creates, PUTs, patches and ``scale``
  record Update managers (``fieldManager``, else the User-Agent's first
  word). Built-in kinds' lists merge by a table of list keys by field name,
  not each kind's OpenAPI (custom resources: their CRD schema); no version conversion, no
  ``ancient-changes`` cap, no apply to ``/scale`` (415); objects the
  controllers write (ReplicaSets, Pods, status) carry no managers of theirs.
  Only the kinds registered are served (no ConfigMaps, Secrets, RBAC...).
- Strategic merge patch finds merge keys by field name (containers, env and
  volumes by ``name``, container ports by ``containerPort``, conditions by
  ``type``...), not by the full OpenAPI schema; custom resources get 415 for it,
  as on a real server.
- Deletion is immediate: no graceful termination, no finalizers, no
  ``deletionTimestamp``; dependents (by ``ownerReferences``) are deleted at once
  (background cascade) unless ``propagationPolicy=Orphan``; deleting a
  namespace deletes its contents at once.
- ``continue`` tokens resume after the last key but are not consistent
  snapshots; the watch log keeps the last 10,000 events (older -> 410 Expired).
- Events are written by the controllers through client-go's correlation
  (repeats counted, similar ones combined after ten) and capped at the newest
  1,000 (a real server expires them after an hour).
- Pods are records: created by the ReplicaSet controller, Pending
  (``ContainerCreating``), then Running/Ready after ``rollout_delay``, with
  ``Scheduled``/``Pulled``/``Created``/``Started`` events; no containers run,
  so ``pods/log`` has only the stand-in kubelet's own lines (``follow`` ends
  at once), ``imageID`` digests are the sha256 of the image reference, and
  ``exec``/``attach``/``portforward`` answer 400 saying so. One Node,
  ``sandbox-node`` (this machine's CPUs and memory; its Lease renewed every
  10 s). Services get a cluster IP but nothing fills their Endpoints or routes
  to them; only the ``kubernetes`` Service has Endpoints and an EndpointSlice
  (the sandbox's address).
- Rolling updates surge the new ReplicaSet to full size and drain the old
  ones when it is available (``maxSurge``/``maxUnavailable`` are only used for
  the ``Available`` condition and annotations); no ``ProgressDeadlineExceeded``,
  no ``minReadySeconds`` wait, no adoption of orphaned ReplicaSets by selector.
- Generation: every kind gets ``metadata.generation`` (real Namespaces and
  Pods do not bump it the same way); status writes take ``status`` and
  annotations from the request, everything else from the stored object.
"""

from __future__ import annotations

from .cluster import SandboxCluster, run_sandbox
from .controllers import Controller, ControllerManager
from .errors import ApiError, Cause
from .faults import Fault
from .kinds import DEPLOYMENT, EVENT, NAMESPACE, POD, REPLICASET
from .kserve import INFERENCESERVICE, KServeController, ModelRequest
from .resources import POD_MERGE_KEYS, Column, ResourceType, ScaleSubresource
from .rollout import template_hash
from .store import Store, WatchEvent
from .tables import AGE_COLUMN

__all__ = [
    "AGE_COLUMN",
    "DEPLOYMENT",
    "EVENT",
    "INFERENCESERVICE",
    "NAMESPACE",
    "POD",
    "POD_MERGE_KEYS",
    "REPLICASET",
    "ApiError",
    "Cause",
    "Column",
    "Controller",
    "ControllerManager",
    "Fault",
    "KServeController",
    "ModelRequest",
    "ResourceType",
    "SandboxCluster",
    "ScaleSubresource",
    "Store",
    "WatchEvent",
    "run_sandbox",
    "template_hash",
]
