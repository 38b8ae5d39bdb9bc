"""Kubernetes Deployment tools: rollout status and history, deploy, scale, rollback, and list rows.

The same calls for a KServe InferenceService are in :mod:`.kserve`; the server's catalog
picks one by the call's ``kind``, and :mod:`.listing` lists both kinds.

Plain synchronous functions ``tool(kube, args, ctx) -> Result``; the gate runs them
in a worker thread. Decisions (which revision, is this a no-op, what changed,
what fits on a page) are pure functions in :mod:`.structs`; this module only
reads, writes and polls through :meth:`Kube.call`. Importing it does not import
``kubernetes``.

Every write carries ``kubernetes.io/change-cause: opsgate: <principal> call <call id>``
(except ``scale``: the scale subresource has no annotations), is guarded by the
values it was computed from (``metadata.generation``, the replica count: never the
resourceVersion, which every status write changes), and when overtaken is recomputed
from a fresh read a few times with a short backoff, then reported. Results never echo env values, since
results reach the assistant and the audit log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from opsgate.policies.bounds import BoundAttrs
from opsgate.vocab.limits import MAX_REPLICAS
from opsgate.vocab.names import DNS1123_LABEL_MAX, DNS1123_LABEL_PATTERN

from .bounded import enforce_bounds, enforce_ownership, restored_deployment_attrs
from .context import CallContext
from .errors import ToolError
from .informer import DEPLOYMENTS, REPLICA_SETS, read_all, read_for_write, read_one
from .kube import Kube, KubeApiError, guarded_patch, retry_on_conflict
from .structs.changes import ManifestChange, manifest_change
from .structs.diff import FieldChange, diff_deployments, env_names
from .structs.freshness import SOURCE, Freshness, combine
from .structs.names import IMAGE_MAX, env_name_problem, image_problem, label_key_problem, label_value_problem
from .structs.objects import (
    HASH_LABEL,
    NAME_LABEL,
    age_seconds,
    change_cause,
    images_of,
    meta,
    owned_by,
    revision_of,
    selector_string,
    spec_of,
    status_of,
)
from .structs.ownership import Owner, ownership, row_owner
from .structs.patches import (
    DeploySpec,
    choose_rollback_revision,
    deploy_is_noop,
    guard,
    new_deployment,
    rollback_patch,
    update_patch,
    updated_deployment,
)
from .structs.status import rollout_progress, rollout_state
from .structs.templates import templates_equal
from .workload_types import (
    CONDITION_MESSAGE_MAX,
    DRY_RUN,
    Args,
    Condition,
    Namespace,
    ObjectName,
    ProgressCallback,
    Resources,
    Result,
    RollbackArgs,
    RollbackResult,
    ScaleArgs,
    ScaleResult,
    WorkloadRow,
    WriteResult,
    check_label,
    report_progress,
)

__all__ = [
    "DeployArgs",
    "DeployResult",
    "RevisionInfo",
    "RolloutHistoryArgs",
    "RolloutHistoryResult",
    "RolloutStatusArgs",
    "RolloutStatusResult",
    "deploy",
    "deployment_rows",
    "rollback_deployment",
    "rollout_history",
    "rollout_status",
    "scale_deployment",
]

log = logging.getLogger(__name__)


POLL_SECONDS: Final = 0.2
REVISION_WAIT_SECONDS: Final = 2.0
JSON_PATCH: Final = "application/json-patch+json"
MERGE_PATCH: Final = "application/merge-patch+json"
_LIST_CHUNK: Final = 500


# --------------------------------------------------------------------------- argument types


DeployName = Annotated[
    str,
    Field(description="Also the container name and app.kubernetes.io/name label.",
          json_schema_extra={"pattern": DNS1123_LABEL_PATTERN, "maxLength": DNS1123_LABEL_MAX}),
    AfterValidator(check_label),
]


# --------------------------------------------------------------------------- list_workloads rows


def _list_all(kube: Kube, fn: Callable[..., Any], namespace: str, what: str, ctx: CallContext,
              **kwargs: Any) -> list[dict[str, Any]]:
    """Every item of a namespaced list, fetched in chunks so a big namespace never arrives as one body."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        chunk = kube.call(fn, namespace, what=what, audit_id=ctx.call_id, limit=_LIST_CHUNK,
                          _continue=token, **kwargs)
        items.extend(i for i in chunk.get("items") or [] if isinstance(i, dict))
        token = (chunk.get("metadata") or {}).get("continue") or None
        if not token:
            return items


def deployment_rows(kube: Kube, namespace: str, ctx: CallContext,
                    now: datetime) -> tuple[list[WorkloadRow], Freshness]:
    """The namespace's Deployments as workload rows (list_workloads), from the watch cache when it is on."""
    rows: list[WorkloadRow] = []
    items, source = read_all(kube, DEPLOYMENTS, namespace, lambda: _list_all(
        kube, kube.apps.list_namespaced_deployment, namespace, f"list deployments in {namespace}", ctx))
    for d in items:
        status = status_of(d)
        rows.append(WorkloadRow(
            name=str(meta(d).get("name")), kind="Deployment",
            desired=int(spec_of(d).get("replicas") or 0), ready=int(status.get("readyReplicas") or 0),
            images=images_of(spec_of(d).get("template")), revision=revision_of(d) or None,
            age_seconds=age_seconds(d, now), owner=row_owner(d, "Deployment"),
        ))
    return rows, source


# --------------------------------------------------------------------------- rollout_status


class RolloutStatusArgs(Args):
    name: ObjectName
    namespace: Namespace


class RolloutStatusResult(Result):
    name: str
    namespace: str
    desired: int
    updated: int
    ready: int
    available: int
    generation: int
    observed_generation: int = Field(description="Generation the controller has seen; behind generation: "
                                     "the latest change is not yet acted on.")
    paused: bool
    revision: int | None
    conditions: list[Condition]
    done: bool = Field(description="True when the rollout has finished (kubectl's 'successfully rolled out').")
    failed: bool = Field(default=False, description="True when the rollout exceeded its progress deadline.")
    summary: str = Field(description="One line, as kubectl rollout status says it.")
    owner: Owner | None = Field(default=None, description="Who applies it from Git (Argo CD, Flux); direct writes "
                                "are refused.")
    source: Freshness | None = Field(default=None, description=SOURCE)

    def audit_summary(self) -> dict[str, Any]:
        return {"revision": self.revision, "done": self.done}


def _status_result(d: dict[str, Any], source: Freshness | None = None) -> RolloutStatusResult:
    st = status_of(d)
    state = rollout_state(d)
    conditions = [
        Condition(
            type=str(c.get("type", "")), status=str(c.get("status", "")), reason=c.get("reason"),
            message=(str(c["message"])[:CONDITION_MESSAGE_MAX] if c.get("message") else None),
        )
        for c in st.get("conditions") or [] if isinstance(c, dict)
    ]
    return RolloutStatusResult(
        name=str(meta(d).get("name")), namespace=str(meta(d).get("namespace")),
        desired=int(spec_of(d).get("replicas") or 0), updated=int(st.get("updatedReplicas") or 0),
        ready=int(st.get("readyReplicas") or 0), available=int(st.get("availableReplicas") or 0),
        generation=int(meta(d).get("generation") or 0), observed_generation=int(st.get("observedGeneration") or 0),
        paused=bool(spec_of(d).get("paused")), revision=revision_of(d) or None, conditions=conditions,
        done=state.done, failed=state.failed, summary=state.summary, owner=ownership(d), source=source,
    )


def _read(kube: Kube, name: str, namespace: str, ctx: CallContext) -> dict[str, Any]:
    result: dict[str, Any] = kube.call(kube.apps.read_namespaced_deployment, name, namespace,
                                       what=f"read deployment {namespace}/{name}", audit_id=ctx.call_id)
    return result


def _find(kube: Kube, name: str, namespace: str, ctx: CallContext) -> dict[str, Any] | None:
    try:
        return _read(kube, name, namespace, ctx)
    except KubeApiError as exc:
        if exc.status == 404:  # a missing namespace is reported by the create that follows
            return None
        raise


def rollout_status(kube: Kube, args: RolloutStatusArgs, ctx: CallContext) -> RolloutStatusResult:
    """One Deployment's rollout state, with kubectl's verdict; from the watch cache when it is on."""
    d, source = read_one(kube, DEPLOYMENTS, args.namespace, args.name,
                         lambda: _read(kube, args.name, args.namespace, ctx))
    return _status_result(d, source)


# --------------------------------------------------------------------------- rollout_history


class RolloutHistoryArgs(Args):
    name: ObjectName
    namespace: Namespace


class RevisionInfo(Result):
    revision: int
    change_cause: str | None = Field(description="kubernetes.io/change-cause; opsgate writes "
                                     "'opsgate: <principal> call <audit call id>'.")
    images: list[str]
    created: str | None = Field(description="When this revision's ReplicaSet was created (RFC 3339).")
    replicas: int = Field(description="Replicas this revision's ReplicaSet runs now.")
    current: bool


class RolloutHistoryResult(Result):
    name: str
    namespace: str
    current_revision: int | None
    revisions: list[RevisionInfo] = Field(description="Oldest first.")
    source: Freshness | None = Field(default=None, description=SOURCE)

    def audit_summary(self) -> dict[str, Any]:
        return {"revisions": [r.revision for r in self.revisions]}


def _owned_replicasets(kube: Kube, d: dict[str, Any], ctx: CallContext) -> list[dict[str, Any]]:
    """The ReplicaSets this Deployment owns (by ownerReferences uid); the selector only narrows the list."""
    ns, name = meta(d).get("namespace", ""), meta(d).get("name", "")
    selector = selector_string(spec_of(d).get("selector"))
    extra: dict[str, Any] = {"label_selector": selector} if selector else {}
    items = _list_all(kube, kube.apps.list_namespaced_replica_set, ns,
                      f"list replicasets of deployment {ns}/{name}", ctx, **extra)
    return owned_by(items, str(meta(d).get("uid")))


def rollout_history(kube: Kube, args: RolloutHistoryArgs, ctx: CallContext) -> RolloutHistoryResult:
    """Revisions with change-cause and images, read from the ReplicaSets the Deployment owns (cached when on)."""
    d, d_source = read_one(kube, DEPLOYMENTS, args.namespace, args.name,
                           lambda: _read(kube, args.name, args.namespace, ctx))
    current = revision_of(d)
    items, rs_source = read_all(kube, REPLICA_SETS, args.namespace, lambda: _owned_replicasets(kube, d, ctx))
    owned = owned_by(items, str(meta(d).get("uid")))
    if rs_source.via == "cache" and current and not any(revision_of(rs) == current for rs in owned):
        # Two watches, two streams: the Deployment's may be ahead of its ReplicaSets'. Ask the API.
        owned = _owned_replicasets(kube, d, ctx)
        rs_source = Freshness(via="api", note="the current revision's ReplicaSet was not in the cache yet")
    entries = []
    for rs in owned:
        rev = revision_of(rs)
        if rev <= 0:
            continue
        entries.append(RevisionInfo(
            revision=rev,
            change_cause=(meta(rs).get("annotations") or {}).get("kubernetes.io/change-cause"),
            images=images_of(spec_of(rs).get("template")),
            created=meta(rs).get("creationTimestamp"),
            replicas=int(status_of(rs).get("replicas") or 0),
            current=rev == current,
        ))
    entries.sort(key=lambda e: e.revision)
    return RolloutHistoryResult(name=args.name, namespace=args.namespace, current_revision=current or None,
                                revisions=entries, source=combine([d_source, rs_source]))


# --------------------------------------------------------------------------- shared write helpers


def _await_revision(kube: Kube, name: str, namespace: str, ctx: CallContext, generation: int) -> dict[str, Any]:
    """The Deployment once the controller has seen ``generation`` (so its revision is renumbered), ≤2 s."""
    deadline = time.monotonic() + REVISION_WAIT_SECONDS
    pause = 0.005  # a controller usually answers within milliseconds: start short, back off to 0.1 s
    while True:
        d = _read(kube, name, namespace, ctx)
        if int(status_of(d).get("observedGeneration") or 0) >= generation or time.monotonic() >= deadline:
            return d
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _wait_rollout(kube: Kube, name: str, namespace: str, ctx: CallContext, timeout: float,
                  progress: ProgressCallback | None, done_what: str) -> RolloutStatusResult:
    """Poll every ~0.2 s until the rollout is done; ToolError ``timeout``/``rollout_failed`` otherwise."""
    deadline = time.monotonic() + timeout
    last: str | None = None
    while True:
        d = _read(kube, name, namespace, ctx)
        status = _status_result(d)
        if status.summary != last:
            last = status.summary
            replicas = int(status_of(d).get("replicas") or 0)
            value, total = rollout_progress(status.desired, replicas, status.updated, status.available)
            if status.done:
                value = total
            elif value >= total:
                value = total - 0.5  # counts say done but kubectl does not (e.g. generation not observed)
            if not report_progress(progress, value, total, status.summary):
                progress = None
        if status.done:
            return status
        if status.failed:
            raise ToolError(f"{done_what}, but the rollout failed: {status.summary}", code="rollout_failed",
                            rule="progress-deadline-exceeded")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ToolError(
                f"{done_what}, but the rollout is still going after {timeout:g} s: {status.summary} "
                f"({status.available} of {status.desired} available, {status.updated} updated). It continues "
                "in the cluster; follow it with rollout_status.",
                code="timeout", rule="rollout-timeout",
            )
        time.sleep(min(POLL_SECONDS, remaining))


def _replicas(obj: dict[str, Any] | None) -> int | None:
    value = spec_of(obj).get("replicas")
    return int(value) if value is not None else None


# --------------------------------------------------------------------------- deploy


class DeployArgs(Args):
    name: DeployName
    namespace: Namespace
    image: str = Field(
        max_length=IMAGE_MAX,
        description='e.g. "ghcr.io/acme/web:1.4.2" or "nginx@sha256:..."',
    )
    replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS,
                                 description="Omit to keep (1 on create).")
    # SecretStr: the gate records model_dump(mode="json") in the audit log, where values show as "**********".
    env: dict[str, SecretStr] | None = Field(
        default=None, max_length=100,
        description="Env vars to add or update (others kept); values are never echoed or logged.",
    )
    ports: list[int] | None = Field(
        default=None, max_length=32,
        description="TCP ports; replaces the list.",
    )
    resources: Resources | None = Field(
        default=None, description="The amounts given are set, others kept.",
    )
    labels: dict[str, str] | None = Field(
        default=None, max_length=64,
        description="Added or updated on the Deployment and its pods.",
    )
    dry_run: bool = Field(default=False, description=DRY_RUN)
    wait: bool = Field(default=False, description="Follow the rollout, with progress.")
    timeout_seconds: int = Field(default=120, ge=1, le=600, description="For wait.")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        why = image_problem(value)
        if why is not None:
            raise PydanticCustomError("image_reference", why)
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, SecretStr] | None) -> dict[str, SecretStr] | None:
        for key, val in (value or {}).items():
            why = env_name_problem(key)
            if why is not None:
                raise PydanticCustomError("env_name", why)
            if len(val.get_secret_value()) > 32768:
                raise PydanticCustomError("env_value_too_long", "environment variable {key}: value over 32 KiB",
                                          {"key": key})
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int] | None) -> list[int] | None:
        for port in value or []:
            if not 1 <= port <= 65535:
                raise PydanticCustomError("port_range", "port {port} is not in 1-65535", {"port": port})
        if value is not None and len(set(value)) != len(value):
            raise PydanticCustomError("port_duplicate", "ports must not repeat")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, val in (value or {}).items():
            why = label_key_problem(key) or label_value_problem(val)
            if why is not None:
                raise PydanticCustomError("label", why)
            if key == HASH_LABEL:
                raise PydanticCustomError("reserved_label", "pod-template-hash is set by the Deployment controller")
        return value

    @model_validator(mode="after")
    def _name_label(self) -> DeployArgs:
        if self.labels and self.labels.get(NAME_LABEL, self.name) != self.name:
            raise PydanticCustomError(
                "reserved_label", "labels[{key}] is the Deployment's selector and must equal its name '{name}'",
                {"key": NAME_LABEL, "name": self.name},
            )
        return self

    def spec(self) -> DeploySpec:
        return DeploySpec(
            name=self.name, image=self.image, replicas=self.replicas, ports=self.ports,
            env={k: v.get_secret_value() for k, v in self.env.items()} if self.env is not None else None,
            resources=self.resources.as_dict() if self.resources else None, labels=self.labels,
        )


class DeployResult(WriteResult):
    name: str
    namespace: str
    action: Literal["created", "updated", "unchanged", "dry-run"]
    existed: bool = Field(description="Whether the Deployment existed before (a dry-run on a new one: false).")
    revision: int | None = Field(description="Rollout revision after the change (null for a dry-run or while "
                                 "the controller has not yet numbered it).")
    images: list[str]
    env_names: list[str] = Field(description="Names of the container's env vars; values are never returned.")
    replicas_before: int | None
    replicas_after: int | None
    changes: list[FieldChange] = Field(description="Fields changed (or that would change, for a dry-run); "
                                       "env values show as \"(hidden)\".")
    dry_run: bool
    rollout: RolloutStatusResult | None = Field(default=None, description="Final rollout status when wait was set.")

    def audit_summary(self) -> dict[str, Any]:
        return {
            "action": self.action, "revision": self.revision, "dry_run": self.dry_run,
            "replicas": {"before": self.replicas_before, "after": self.replicas_after},
            "changes": [c.model_dump(mode="json") for c in self.changes], **self.override_summary(),
        }


def _change(before: dict[str, Any] | None, after: dict[str, Any], name: str, namespace: str) -> ManifestChange | None:
    """A Deployment write's change as a strategic merge patch (a create: the object sent)."""
    return manifest_change(before, after, api_version="apps/v1", kind="Deployment", name=name, namespace=namespace,
                           strategic=True)


def deploy(kube: Kube, args: DeployArgs, ctx: CallContext, progress: ProgressCallback | None = None) -> DeployResult:
    """Create or update a Deployment; optional server-side dry-run; optional wait with progress."""
    spec = args.spec()
    cause = change_cause(ctx.principal, ctx.call_id)
    dry = "All" if args.dry_run else None
    ns, name = args.namespace, args.name
    what = f"deploy {ns}/{name}"
    seen: dict[str, Any] = {}  # from the attempt that wrote: the Git owner a bound let it override, the object sent

    def attempt() -> tuple[dict[str, Any] | None, dict[str, Any]] | DeployResult:
        current = _find(kube, name, ns, ctx)
        seen["override"] = enforce_ownership(ctx, current, f"deployment {ns}/{name}")
        if args.replicas is not None:  # the bound on this read, which the write is guarded by (item 11)
            enforce_bounds(ctx, BoundAttrs(replicas=args.replicas, current_replicas=_replicas(current) or 0),
                           f"deployment {ns}/{name} as read just before the write")
        if current is None:
            seen["sent"] = new_deployment(spec, ns, cause)
            after = kube.call(kube.apps.create_namespaced_deployment, ns, seen["sent"],
                              dry_run=dry, what=f"create deployment {ns}/{name}", audit_id=ctx.call_id)
            return current, after
        desired = updated_deployment(current, spec)
        if deploy_is_noop(current, desired):
            status = None
            if args.wait and not args.dry_run:
                status = _wait_rollout(kube, name, ns, ctx, float(args.timeout_seconds), progress,
                                       f"deployment {ns}/{name} was unchanged")
            return _deploy_result(args, "unchanged", current, current, current, rollout=status,
                                  override=seen["override"])
        after = guarded_patch(kube, kube.apps.patch_namespaced_deployment, name, ns,
                              ops=update_patch(current, desired, cause), reread=lambda: _read(kube, name, ns, ctx),
                              what=f"update deployment {ns}/{name}", audit_id=ctx.call_id, dry_run=dry)
        return current, after

    # A 409: a stale read, or created meanwhile: decide again.
    outcome = retry_on_conflict(attempt, what=what, kind="Deployment")
    if isinstance(outcome, DeployResult):
        return outcome
    current, after = outcome
    written: dict[str, Any] = {"override": seen["override"],
                               "change": _change(current, seen.get("sent") or after, name, ns)}
    if args.dry_run:
        return _deploy_result(args, "dry-run", current, after, after, **written)
    action: Literal["created", "updated"] = "created" if current is None else "updated"
    generation = int(meta(after).get("generation") or 0)
    if args.wait:
        done_what = f"deployment {ns}/{name} was {action}"
        status = _wait_rollout(kube, name, ns, ctx, float(args.timeout_seconds), progress, done_what)
        return _deploy_result(args, action, current, after, None, rollout=status, **written)
    latest = _await_revision(kube, name, ns, ctx, generation)
    return _deploy_result(args, action, current, after, latest, **written)


def _deploy_result(args: DeployArgs, action: Literal["created", "updated", "unchanged", "dry-run"],
                   before: dict[str, Any] | None, after: dict[str, Any], latest: dict[str, Any] | None,
                   rollout: RolloutStatusResult | None = None, change: ManifestChange | None = None,
                   override: Owner | None = None) -> DeployResult:
    revision = None
    if rollout is not None:
        revision = rollout.revision
    elif latest is not None and action != "dry-run":
        revision = revision_of(latest) or None
    return DeployResult(
        name=args.name, namespace=args.namespace, action=action, existed=before is not None, revision=revision,
        images=images_of(spec_of(after).get("template")), env_names=env_names(after, args.name),
        replicas_before=_replicas(before), replicas_after=_replicas(after),
        changes=[] if action == "unchanged" else diff_deployments(before, after), dry_run=args.dry_run,
        rollout=rollout, change=change, gitops_override=override,
    )


# --------------------------------------------------------------------------- scale


def current_replicas(kube: Kube, namespace: str, name: str) -> BoundAttrs:
    """For the ``max_replicas_change`` bound, read before the call is decided: the Deployment's replicas now,
    0 when it does not exist yet (a create); nothing (unknown, so the bound refuses) when it cannot be read.

    The tool checks the bound again on the read that guards its write (issue 15 item 11)."""
    what = f"read scale of deployment {namespace}/{name}"
    try:
        scale = kube.call(kube.apps.read_namespaced_deployment_scale, name, namespace, what=what)
    except ToolError as exc:
        return BoundAttrs(current_replicas=0) if exc.status == 404 else BoundAttrs()
    return BoundAttrs(current_replicas=int(spec_of(scale).get("replicas") or 0))


def scale_deployment(kube: Kube, args: ScaleArgs, ctx: CallContext) -> ScaleResult:
    """Set replicas through the scale subresource, guarded by (and bounded on) the replica count read just before.

    The scale subresource carries no annotations, so no change-cause is written: the audit log
    holds the call, and the current revision's change-cause keeps naming the call that made it.
    """
    ns, name = args.namespace, args.name
    what = f"scale deployment {ns}/{name}"
    dry = "All" if args.dry_run else None

    first = iter((True,))  # the first read may be the watch cache's copy; every later one is the API server's

    def attempt() -> ScaleResult:
        # The Deployment itself, not its scale subresource: the same replicas (and resourceVersion), and the
        # labels, annotations and field managers that say whether Git owns it. From the watch cache when its
        # copy is current: one request instead of two.
        cached = next(first, False)
        if cached:
            current, cached = read_for_write(kube, DEPLOYMENTS, ns, name, lambda: _read(kube, name, ns, ctx))
        else:
            current = _read(kube, name, ns, ctx)
        before = int(spec_of(current).get("replicas") or 0)
        try:
            override = enforce_ownership(ctx, current, f"deployment {ns}/{name}")
            # The bound on the count this write is guarded by: a change since the gate read it is re-checked.
            enforce_bounds(ctx, BoundAttrs(replicas=args.replicas, current_replicas=before),
                           f"deployment {ns}/{name} as read just before the write")
        except ToolError:
            if cached:  # a refusal is never made on a cached copy: the API server's decides
                return attempt()
            raise
        if before == args.replicas:
            if cached:  # nor a no-op
                return attempt()
            return ScaleResult(name=name, namespace=ns, action="unchanged", replicas_before=before,
                               replicas_after=before, dry_run=args.dry_run, gitops_override=override)
        # Guarded on the replica count read (and bounded), not on the resourceVersion the controller's
        # status writes keep changing.
        # "add", not "replace": a real Scale omits spec.replicas when it is 0 (omitempty), and replace needs it.
        # The Scale omits a replica count of 0, where a test of it cannot apply: then the resourceVersion guards.
        # A cached copy may be behind by the watch's latency (ownership included): its resourceVersion guards.
        guarded = current if before and not cached else {"metadata": meta(current)}
        ops = [*guard(guarded, "/spec/replicas"), {"op": "add", "path": "/spec/replicas", "value": args.replicas}]
        try:
            after = guarded_patch(kube, kube.apps.patch_namespaced_deployment_scale, name, ns, ops=ops,
                                  reread=lambda: _read(kube, name, ns, ctx),
                                  what=what, audit_id=ctx.call_id, dry_run=dry)
        except KubeApiError as exc:
            if cached and (exc.status == 409 or exc.rule == "conflict"):
                return attempt()  # the cached copy was behind: again at once from the API server (not a retry)
            raise
        replicas = int(spec_of(after).get("replicas") or 0)
        return ScaleResult(name=name, namespace=ns, action="dry-run" if args.dry_run else "scaled",
                           replicas_before=before, replicas_after=replicas, dry_run=args.dry_run,
                           change=_change({"spec": {"replicas": before}}, {"spec": {"replicas": replicas}}, name, ns),
                           gitops_override=override)

    return retry_on_conflict(attempt, what=what, kind="Deployment")


# --------------------------------------------------------------------------- rollback


def rollback_deployment(kube: Kube, args: RollbackArgs, ctx: CallContext) -> RollbackResult:
    """``kubectl rollout undo``, natively: owned ReplicaSets, target revision, one guarded JSON Patch."""
    ns, name = args.namespace, args.name
    what = f"rollback deployment {ns}/{name}"
    dry = "All" if args.dry_run else None
    cause = change_cause(ctx.principal, ctx.call_id)

    def attempt() -> RollbackResult:
        d = _read(kube, name, ns, ctx)
        override = enforce_ownership(ctx, d, f"deployment {ns}/{name}")
        if spec_of(d).get("paused"):
            raise ToolError(f"deployment {ns}/{name} is paused; resume it before rolling back "
                            "(a paused Deployment does not roll out a restored template)",
                            code="failed_precondition", rule="paused")
        by_revision: dict[int, dict[str, Any]] = {}
        for rs in _owned_replicasets(kube, d, ctx):
            rev = revision_of(rs)
            if rev > 0:
                by_revision[rev] = rs
        target = choose_rollback_revision(by_revision, args.to_revision)
        rs = by_revision[target]
        current = revision_of(d) or None
        if templates_equal(spec_of(d).get("template"), spec_of(rs).get("template")):
            return RollbackResult(
                name=name, namespace=ns, action="unchanged", from_revision=current, to_revision=target,
                new_revision=None, changes=[], dry_run=args.dry_run,
                message=f"already at revision {target}'s template; nothing changed", gitops_override=override,
            )
        enforce_bounds(ctx, restored_deployment_attrs(spec_of(d).get("template"), spec_of(rs).get("template")),
                       f"revision {target} of deployment {ns}/{name}")
        after = guarded_patch(kube, kube.apps.patch_namespaced_deployment, name, ns,
                              ops=rollback_patch(d, rs, cause), reread=lambda: _read(kube, name, ns, ctx),
                              what=what, audit_id=ctx.call_id, dry_run=dry)
        changes = diff_deployments(d, after)
        written: dict[str, Any] = {"change": _change(d, after, name, ns), "gitops_override": override}
        if args.dry_run:
            return RollbackResult(
                name=name, namespace=ns, action="dry-run", from_revision=current, to_revision=target,
                new_revision=None, changes=changes, dry_run=True,
                message=f"would restore revision {target}'s template (dry-run, nothing changed)", **written,
            )
        latest = _await_revision(kube, name, ns, ctx, int(meta(after).get("generation") or 0))
        new_revision = revision_of(latest) or None
        if new_revision == current:
            new_revision = None  # the controller has not renumbered yet
        return RollbackResult(
            name=name, namespace=ns, action="rolled-back", from_revision=current, to_revision=target,
            new_revision=new_revision, changes=changes, dry_run=False,
            message=f"restored revision {target}'s template"
            + (f" as revision {new_revision}" if new_revision else "; the controller has not numbered it yet"),
            **written,
        )

    return retry_on_conflict(attempt, what=what, kind="Deployment")
