"""Kubernetes Deployment tools: list, rollout status and history, deploy, scale, rollback.

``list_workloads``, ``scale`` and ``rollback`` also take KServe InferenceServices
(``kind``); those calls are handed to :mod:`.kserve`, imported when first needed.

Plain synchronous functions ``tool(kube, args, ctx) -> Result``; the gate runs them
in a worker thread. Decisions (which revision, is this a no-op, what changed,
what fits on a page) are pure functions in :mod:`.rollout`; this module only
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
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from opsgate.vocab.limits import MAX_REPLICAS, replica_range_ok
from opsgate.vocab.names import DNS1123_LABEL_MAX, DNS1123_LABEL_PATTERN, DNS1123_SUBDOMAIN_MAX, dns1123_problem

from .bounded import enforce_bounds, restored_deployment_attrs
from .context import CallContext
from .errors import ToolError
from .kube import Kube, KubeApiError, guarded_patch, retry_on_conflict
from .structs.diff import FieldChange, diff_deployments, env_names
from .structs.names import IMAGE_MAX, env_name_problem, image_problem, label_key_problem, label_value_problem
from .structs.objects import (
    HASH_LABEL,
    NAME_LABEL,
    change_cause,
    images_of,
    meta,
    owned_by,
    revision_of,
    selector_string,
    spec_of,
    status_of,
)
from .structs.pages import CURSOR_MAX, PAGE_BUDGET_BYTES, decode_cursor, encode_cursor, fit_page, json_size
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
from .structs.quantities import parse_quantity
from .structs.status import rollout_progress, rollout_state
from .structs.templates import templates_equal

__all__ = [
    "Condition",
    "DeployArgs",
    "DeployResult",
    "FieldChange",
    "ListWorkloadsArgs",
    "ListWorkloadsResult",
    "ProgressCallback",
    "ResourceAmounts",
    "Resources",
    "RevisionInfo",
    "RollbackArgs",
    "RollbackResult",
    "RolloutHistoryArgs",
    "RolloutHistoryResult",
    "RolloutStatusArgs",
    "RolloutStatusResult",
    "ScaleArgs",
    "ScaleResult",
    "WorkloadRow",
    "deploy",
    "list_workloads",
    "rollback",
    "rollout_history",
    "rollout_status",
    "scale",
]

log = logging.getLogger(__name__)

#: A sync progress reporter (progress, total, message); the server bridges it to MCP progress.
ProgressCallback = Callable[[float, float | None, str | None], None]

POLL_SECONDS: Final = 0.2
REVISION_WAIT_SECONDS: Final = 2.0
CONDITION_MESSAGE_MAX: Final = 256
JSON_PATCH: Final = "application/json-patch+json"
MERGE_PATCH: Final = "application/merge-patch+json"
_LIST_CHUNK: Final = 500


# --------------------------------------------------------------------------- argument types


def _check_label(value: str) -> str:
    why = dns1123_problem(value, "label")
    if why is not None:
        raise PydanticCustomError("dns1123_label", why)
    return value


def _check_subdomain(value: str) -> str:
    why = dns1123_problem(value, "subdomain")
    if why is not None:
        raise PydanticCustomError("dns1123_subdomain", why)
    return value


# Names of things that exist carry no pattern or length in the schema (every tools/list pays for them):
# an agent passes names it has read, and a typo gets the validator's own sentence. New names (DeployName) do.
Namespace = Annotated[str, AfterValidator(_check_label)]
ObjectName = Annotated[str, AfterValidator(_check_subdomain)]
DeployName = Annotated[
    str,
    Field(description="Also the container name and app.kubernetes.io/name label.",
          json_schema_extra={"pattern": DNS1123_LABEL_PATTERN, "maxLength": DNS1123_LABEL_MAX}),
    AfterValidator(_check_label),
]


# Field descriptions are sent on every tools/list: a few words, for what the name does not say.
DRY_RUN: Final = "Show the server's diff; change nothing."
SERVICE_ONLY: Final = "InferenceService only."


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- list_workloads


WorkloadKind = Literal["Deployment", "InferenceService"]


class ListWorkloadsArgs(_Args):
    namespace: Namespace
    kind: WorkloadKind | None = Field(
        default=None, description="Omit for both kinds."
    )
    cursor: str | None = Field(
        default=None, max_length=CURSOR_MAX,
        description="next_cursor of the previous page.",
    )


class WorkloadRow(_Result):
    name: str
    kind: str
    desired: int = Field(description="Replicas asked for (spec.replicas; an InferenceService: minReplicas).")
    ready: int = Field(description="Replicas ready now (an InferenceService: desired when Ready, else 0).")
    images: list[str] = Field(description="Container images (an InferenceService: its storageUri).")
    revision: int | None = Field(description="Current rollout revision (an InferenceService: its latest ready "
                                 "revision's number); null before the first rollout.")
    age_seconds: int | None


class ListWorkloadsResult(_Result):
    namespace: str
    workloads: list[WorkloadRow]
    total: int = Field(description="Workloads in the namespace matching kind, over all pages.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page.")

    def audit_summary(self) -> dict[str, Any]:
        return {"count": len(self.workloads), "total": self.total}


def _age_seconds(obj: dict[str, Any], now: datetime) -> int | None:
    stamp = meta(obj).get("creationTimestamp")
    if not isinstance(stamp, str):
        return None
    try:
        created = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return max(0, int((now - created).total_seconds()))


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


def list_workloads(kube: Kube, args: ListWorkloadsArgs, ctx: CallContext) -> ListWorkloadsResult:
    """Deployments and InferenceServices in a namespace as compact rows, paginated under a ~4 KB JSON budget."""
    after = decode_cursor(args.cursor, args.namespace, args.kind) if args.cursor else None
    now = datetime.now(UTC)
    rows: list[WorkloadRow] = []
    if args.kind in (None, "Deployment"):
        items = _list_all(kube, kube.apps.list_namespaced_deployment, args.namespace,
                          f"list deployments in {args.namespace}", ctx)
        for d in items:
            status = status_of(d)
            rows.append(WorkloadRow(
                name=str(meta(d).get("name")), kind="Deployment",
                desired=int(spec_of(d).get("replicas") or 0), ready=int(status.get("readyReplicas") or 0),
                images=images_of(spec_of(d).get("template")), revision=revision_of(d) or None,
                age_seconds=_age_seconds(d, now),
            ))
    if args.kind in (None, "InferenceService"):
        from .kserve import inference_service_rows

        rows.extend(inference_service_rows(kube, args.namespace, ctx, now, required=args.kind is not None))
    rows.sort(key=lambda r: (r.name, r.kind))
    # The cursor names the last row as "name/kind": a Deployment and an InferenceService may share a name.
    resume = tuple(after.split("/", 1)) if after is not None else None
    remaining = [r for r in rows if resume is None or (r.name, r.kind) > resume]
    # The page's own fields, with the longest cursor a name can make, come out of the budget first.
    longest_cursor = encode_cursor(args.namespace, args.kind, "x" * DNS1123_SUBDOMAIN_MAX + "/InferenceService")
    envelope = json_size(ListWorkloadsResult(namespace=args.namespace, workloads=[], total=len(rows),
                                             next_cursor=longest_cursor).model_dump(mode="json"))
    count = fit_page([json_size(r.model_dump(mode="json")) for r in remaining], PAGE_BUDGET_BYTES - envelope)
    page = remaining[:count]
    more = count < len(remaining)
    return ListWorkloadsResult(
        namespace=args.namespace, workloads=page, total=len(rows),
        next_cursor=encode_cursor(args.namespace, args.kind, f"{page[-1].name}/{page[-1].kind}") if more and page
        else None,
    )


# --------------------------------------------------------------------------- rollout_status


class RolloutStatusArgs(_Args):
    name: ObjectName
    namespace: Namespace


class Condition(_Result):
    type: str
    status: str
    reason: str | None = None
    message: str | None = Field(default=None, description=f"At most {CONDITION_MESSAGE_MAX} characters.")


class RolloutStatusResult(_Result):
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

    def audit_summary(self) -> dict[str, Any]:
        return {"revision": self.revision, "done": self.done}


def _status_result(d: dict[str, Any]) -> RolloutStatusResult:
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
        done=state.done, failed=state.failed, summary=state.summary,
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
    """One Deployment's rollout state, with kubectl's verdict."""
    return _status_result(_read(kube, args.name, args.namespace, ctx))


# --------------------------------------------------------------------------- rollout_history


class RolloutHistoryArgs(_Args):
    name: ObjectName
    namespace: Namespace


class RevisionInfo(_Result):
    revision: int
    change_cause: str | None = Field(description="kubernetes.io/change-cause; opsgate writes "
                                     "'opsgate: <principal> call <audit call id>'.")
    images: list[str]
    created: str | None = Field(description="When this revision's ReplicaSet was created (RFC 3339).")
    replicas: int = Field(description="Replicas this revision's ReplicaSet runs now.")
    current: bool


class RolloutHistoryResult(_Result):
    name: str
    namespace: str
    current_revision: int | None
    revisions: list[RevisionInfo] = Field(description="Oldest first.")

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
    """Revisions with change-cause and images, read from the ReplicaSets the Deployment owns."""
    d = _read(kube, args.name, args.namespace, ctx)
    current = revision_of(d)
    entries = []
    for rs in _owned_replicasets(kube, d, ctx):
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
                                revisions=entries)


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


def _report(progress: ProgressCallback | None, value: float, total: float | None, message: str) -> bool:
    """Send one progress report; a failing reporter (client gone) is dropped, never fails the call."""
    if progress is None:
        return False
    try:
        progress(value, total, message)
    except Exception:
        log.warning("progress callback failed; no more progress for this call", exc_info=True)
        return False
    return True


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
            if not _report(progress, value, total, status.summary):
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


def _check_quantity(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_quantity(value)
    except ValueError as exc:
        raise PydanticCustomError("quantity", str(exc)) from None
    return value


Quantity = Annotated[str | None, AfterValidator(_check_quantity)]


class ResourceAmounts(_Args):
    cpu: Quantity = None
    memory: Quantity = None


class Resources(_Args):
    requests: ResourceAmounts | None = None
    limits: ResourceAmounts | None = None

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        if self.requests is None or self.limits is None:
            return self
        for key in ("cpu", "memory"):
            req, lim = getattr(self.requests, key), getattr(self.limits, key)
            if req is not None and lim is not None and parse_quantity(req) > parse_quantity(lim):
                raise PydanticCustomError(
                    "requests_exceed_limits", "requests.{key} ({req}) must not exceed limits.{key} ({lim})",
                    {"key": key, "req": req, "lim": lim},
                )
        return self

    def as_dict(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for section in ("requests", "limits"):
            amounts: ResourceAmounts | None = getattr(self, section)
            if amounts is not None:
                values = {k: v for k, v in amounts.model_dump().items() if v is not None}
                if values:
                    out[section] = values
        return out


class DeployArgs(_Args):
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


class DeployResult(_Result):
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
            "changes": [c.model_dump(mode="json") for c in self.changes],
        }


def deploy(kube: Kube, args: DeployArgs, ctx: CallContext, progress: ProgressCallback | None = None) -> DeployResult:
    """Create or update a Deployment; optional server-side dry-run; optional wait with progress."""
    spec = args.spec()
    cause = change_cause(ctx.principal, ctx.call_id)
    dry = "All" if args.dry_run else None
    ns, name = args.namespace, args.name
    what = f"deploy {ns}/{name}"

    def attempt() -> tuple[dict[str, Any] | None, dict[str, Any]] | DeployResult:
        current = _find(kube, name, ns, ctx)
        if args.replicas is not None:  # the bound on this read, which the write is guarded by (item 11)
            enforce_bounds(ctx, {"replicas": args.replicas, "current_replicas": _replicas(current) or 0},
                           f"deployment {ns}/{name} as read just before the write")
        if current is None:
            after = kube.call(kube.apps.create_namespaced_deployment, ns, new_deployment(spec, ns, cause),
                              dry_run=dry, what=f"create deployment {ns}/{name}", audit_id=ctx.call_id)
            return current, after
        desired = updated_deployment(current, spec)
        if deploy_is_noop(current, desired):
            status = None
            if args.wait and not args.dry_run:
                status = _wait_rollout(kube, name, ns, ctx, float(args.timeout_seconds), progress,
                                       f"deployment {ns}/{name} was unchanged")
            return _deploy_result(args, "unchanged", current, current, current, rollout=status)
        after = guarded_patch(kube, kube.apps.patch_namespaced_deployment, name, ns,
                              ops=update_patch(current, desired, cause), reread=lambda: _read(kube, name, ns, ctx),
                              what=f"update deployment {ns}/{name}", audit_id=ctx.call_id, dry_run=dry)
        return current, after

    # A 409: a stale read, or created meanwhile: decide again.
    outcome = retry_on_conflict(attempt, what=what, kind="Deployment")
    if isinstance(outcome, DeployResult):
        return outcome
    current, after = outcome
    if args.dry_run:
        return _deploy_result(args, "dry-run", current, after, after)
    action: Literal["created", "updated"] = "created" if current is None else "updated"
    generation = int(meta(after).get("generation") or 0)
    if args.wait:
        done_what = f"deployment {ns}/{name} was {action}"
        status = _wait_rollout(kube, name, ns, ctx, float(args.timeout_seconds), progress, done_what)
        return _deploy_result(args, action, current, after, None, rollout=status)
    latest = _await_revision(kube, name, ns, ctx, generation)
    return _deploy_result(args, action, current, after, latest)


def _deploy_result(args: DeployArgs, action: Literal["created", "updated", "unchanged", "dry-run"],
                   before: dict[str, Any] | None, after: dict[str, Any], latest: dict[str, Any] | None,
                   rollout: RolloutStatusResult | None = None) -> DeployResult:
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
        rollout=rollout,
    )


# --------------------------------------------------------------------------- scale


class ScaleArgs(_Args):
    name: ObjectName
    namespace: Namespace
    kind: WorkloadKind = "Deployment"
    replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS, description="Deployment only; 0 stops it.")
    min_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS, description=SERVICE_ONLY)
    max_replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS, description=SERVICE_ONLY)
    scale_target: int | None = Field(default=None, ge=1, le=100_000,
                                     description="InferenceService: autoscaling target per replica.")
    scale_metric: Literal["cpu", "memory", "concurrency", "rps"] | None = Field(
        default=None, description=SERVICE_ONLY)
    dry_run: bool = Field(default=False, description="Validate on the server; change nothing.")

    @model_validator(mode="after")
    def _fits_kind(self) -> ScaleArgs:
        service_only = (self.min_replicas, self.max_replicas, self.scale_target, self.scale_metric)
        if self.kind == "Deployment":
            if self.replicas is None:
                raise PydanticCustomError("replicas_required", "a Deployment is scaled with replicas")
            if any(v is not None for v in service_only):
                raise PydanticCustomError("not_for_deployment", "min_replicas/max_replicas/scale_target/scale_metric "
                                          "are for an InferenceService; a Deployment takes replicas")
            return self
        if self.replicas is not None:
            raise PydanticCustomError("not_for_inferenceservice", "an InferenceService is scaled with "
                                      "min_replicas/max_replicas, not replicas")
        if all(v is None for v in service_only):
            raise PydanticCustomError("range_required", "give min_replicas, max_replicas, scale_target or "
                                      "scale_metric")
        low, high = self.min_replicas, self.max_replicas
        if not replica_range_ok(low, high):
            raise PydanticCustomError("replica_range", "min_replicas ({low}) must not exceed max_replicas ({high})",
                                      {"low": low, "high": high})
        return self

    def bound_replicas(self) -> int | None:
        """The replica count policy bounds check: replicas, or the most an InferenceService may run."""
        if self.kind == "Deployment":
            return self.replicas
        asked = [v for v in (self.min_replicas, self.max_replicas) if v is not None]
        return max(asked) if asked else None

    def policy_attrs(self) -> dict[str, Any]:
        """What policy bounds look at: the most replicas asked for, and an InferenceService's fewest.

        Both ends of a range are bounded: ``min_replicas=0, max_replicas=3`` scales to zero.
        """
        return {"replicas": self.bound_replicas(), "min_replicas": self.min_replicas}


class ScaleResult(_Result):
    name: str
    namespace: str
    kind: str = "Deployment"
    action: Literal["scaled", "unchanged", "dry-run"]
    replicas_before: int | None = Field(description="A Deployment's replicas (null for an InferenceService).")
    replicas_after: int | None
    min_replicas_before: int | None = None
    min_replicas_after: int | None = None
    max_replicas_before: int | None = None
    max_replicas_after: int | None = None
    scale_target_after: int | None = None
    scale_metric_after: str | None = None
    dry_run: bool
    message: str | None = None

    def audit_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"action": self.action, "dry_run": self.dry_run}
        if self.kind == "Deployment":
            summary["replicas"] = {"before": self.replicas_before, "after": self.replicas_after}
        else:
            summary.update(kind=self.kind,
                           min_replicas={"before": self.min_replicas_before, "after": self.min_replicas_after},
                           max_replicas={"before": self.max_replicas_before, "after": self.max_replicas_after},
                           scale_target=self.scale_target_after, scale_metric=self.scale_metric_after)
        return summary


def scale(kube: Kube, args: ScaleArgs, ctx: CallContext) -> ScaleResult:
    """Set replicas through the scale subresource, guarded by (and bounded on) the replica count read just before.

    The scale subresource carries no annotations, so no change-cause is written: the audit log
    holds the call, and the current revision's change-cause keeps naming the call that made it.
    """
    if args.kind == "InferenceService":
        from .kserve import scale_inference_service

        return scale_inference_service(kube, args, ctx)
    ns, name = args.namespace, args.name
    what = f"scale deployment {ns}/{name}"
    dry = "All" if args.dry_run else None

    def attempt() -> ScaleResult:
        current = kube.call(kube.apps.read_namespaced_deployment_scale, name, ns,
                            what=f"read scale of deployment {ns}/{name}", audit_id=ctx.call_id)
        before = int(spec_of(current).get("replicas") or 0)
        # The bound on the count this write is guarded by: a change since the gate read it is re-checked.
        enforce_bounds(ctx, {"replicas": args.replicas, "current_replicas": before},
                       f"deployment {ns}/{name} as read just before the write")
        if before == args.replicas:
            return ScaleResult(name=name, namespace=ns, action="unchanged", replicas_before=before,
                               replicas_after=before, dry_run=args.dry_run)
        # Guarded on the replica count read (and bounded), not on the resourceVersion the controller's
        # status writes keep changing.
        # "add", not "replace": a real Scale omits spec.replicas when it is 0 (omitempty), and replace needs it.
        ops = [*guard(current, "/spec/replicas"), {"op": "add", "path": "/spec/replicas", "value": args.replicas}]
        after = guarded_patch(kube, kube.apps.patch_namespaced_deployment_scale, name, ns, ops=ops,
                              reread=lambda: kube.call(kube.apps.read_namespaced_deployment_scale, name, ns,
                                                       what=f"read scale of deployment {ns}/{name}",
                                                       audit_id=ctx.call_id),
                              what=what, audit_id=ctx.call_id, dry_run=dry)
        return ScaleResult(name=name, namespace=ns, action="dry-run" if args.dry_run else "scaled",
                           replicas_before=before, replicas_after=int(spec_of(after).get("replicas") or 0),
                           dry_run=args.dry_run)

    return retry_on_conflict(attempt, what=what, kind="Deployment")


# --------------------------------------------------------------------------- rollback


class RollbackArgs(_Args):
    name: ObjectName
    namespace: Namespace
    kind: WorkloadKind = "Deployment"
    to_revision: int | None = Field(default=None, ge=1, description="From rollout_history; omit for the previous.")
    dry_run: bool = Field(default=False, description=DRY_RUN)


class RollbackResult(_Result):
    name: str
    namespace: str
    action: Literal["rolled-back", "unchanged", "dry-run"]
    kind: str = "Deployment"
    from_revision: int | None
    to_revision: int | None = Field(description="The revision restored (its pod template, or for an "
                                    "InferenceService the one taking all traffic again).")
    new_revision: int | None = Field(description="Revision number after the rollback: the controller renumbers "
                                     "the restored template to the next revision (null for dry-run/unchanged).")
    changes: list[FieldChange]
    dry_run: bool
    message: str
    strategy: str | None = Field(default=None, description="InferenceService: canary-traffic-to-0 or "
                                 "restored-previous-spec.")

    def audit_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "action": self.action, "dry_run": self.dry_run, "from_revision": self.from_revision,
            "to_revision": self.to_revision, "revision": self.new_revision,
            "changes": [c.model_dump(mode="json") for c in self.changes],
        }
        if self.strategy is not None:
            summary.update(kind=self.kind, strategy=self.strategy)
        return summary


def rollback(kube: Kube, args: RollbackArgs, ctx: CallContext) -> RollbackResult:
    """``kubectl rollout undo``, natively: owned ReplicaSets, target revision, one guarded JSON Patch."""
    if args.kind == "InferenceService":
        from .kserve import rollback_inference_service

        return rollback_inference_service(kube, args, ctx)
    ns, name = args.namespace, args.name
    what = f"rollback deployment {ns}/{name}"
    dry = "All" if args.dry_run else None
    cause = change_cause(ctx.principal, ctx.call_id)

    def attempt() -> RollbackResult:
        d = _read(kube, name, ns, ctx)
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
                message=f"already at revision {target}'s template; nothing changed",
            )
        enforce_bounds(ctx, restored_deployment_attrs(spec_of(d).get("template"), spec_of(rs).get("template")),
                       f"revision {target} of deployment {ns}/{name}")
        after = guarded_patch(kube, kube.apps.patch_namespaced_deployment, name, ns,
                              ops=rollback_patch(d, rs, cause), reread=lambda: _read(kube, name, ns, ctx),
                              what=what, audit_id=ctx.call_id, dry_run=dry)
        changes = diff_deployments(d, after)
        if args.dry_run:
            return RollbackResult(
                name=name, namespace=ns, action="dry-run", from_revision=current, to_revision=target,
                new_revision=None, changes=changes, dry_run=True,
                message=f"would restore revision {target}'s template (dry-run, nothing changed)",
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
        )

    return retry_on_conflict(attempt, what=what, kind="Deployment")
