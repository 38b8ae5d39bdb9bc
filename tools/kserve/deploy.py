"""deploy_model: create or update an InferenceService serving a model, as a canary when asked, and wait for Ready."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from opsgate.policies.bounds import BoundAttrs
from opsgate.vocab.limits import MAX_REPLICAS, replica_range_ok
from opsgate.vocab.names import DNS1123_LABEL_MAX, DNS1123_LABEL_PATTERN

from ..bounded import enforce_bounds, enforce_ownership
from ..context import CallContext
from ..errors import ToolError
from ..kube import Kube, guarded_patch, retry_on_conflict
from ..structs.changes import ManifestChange
from ..structs.diff import FieldChange
from ..structs.objects import CHANGE_CAUSE_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, change_cause, meta
from ..structs.ownership import Owner
from ..workload_types import (
    DRY_RUN,
    Args,
    Namespace,
    ProgressCallback,
    Resources,
    WriteResult,
    report_progress,
)
from .api import custom_api, find_service, read_service
from .services import (
    GROUP,
    JSON,
    KIND,
    MODE_ANNOTATION,
    PLURAL,
    RAW,
    STORAGE_URI_MAX,
    STORAGE_URI_PATTERN,
    VERSION,
    NewServiceName,
    as_json,
    component_of,
    diff_services,
    mode_of,
    model_of,
    normalize_mode,
    predictor_of,
    service_change,
    spec_patch,
    template_of,
)
from .status import ModelStatusResult, failure_of, replica_ceiling, said, status_result

POLL_SECONDS: Final = 0.1


# --------------------------------------------------------------------------- argument types


# --------------------------------------------------------------------------- pure: reading a service


# --------------------------------------------------------------------------- model_status


# --------------------------------------------------------------------------- deploy_model


class DeployModelArgs(Args):
    name: NewServiceName
    namespace: Namespace
    storage_uri: str | None = Field(
        default=None, max_length=STORAGE_URI_MAX, pattern=STORAGE_URI_PATTERN,
        description='gs://, s3://, pvc://, https:// or file:/// URI, or a sandbox model name. Needed to create.',
    )
    model_format: Literal["onnx"] = "onnx"
    runtime: str | None = Field(default=None, max_length=DNS1123_LABEL_MAX, pattern=DNS1123_LABEL_PATTERN,
                                description="ServingRuntime; omit to let KServe choose.")
    protocol_version: Literal["v1", "v2"] | None = Field(default=None, description="v2 on create if omitted.")
    min_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    max_replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    resources: Resources | None = Field(default=None, description="The amounts given are set, others kept.")
    deployment_mode: Literal["Serverless", "RawDeployment", "Knative", "Standard"] | None = Field(
        default=None, description="Create only; omit for the cluster default.")
    canary_traffic_percent: int | None = Field(
        default=None, ge=0, le=100,
        description="Canary update: the new revision gets this percent, the last rolled-out one the rest, until "
        "promote (Serverless only).",
    )
    promote: bool = Field(default=False, description="End the canary: the latest revision takes 100%.")
    dry_run: bool = Field(default=False, description=DRY_RUN)
    wait: bool = Field(default=False, description="Wait until Ready, with progress.")
    timeout_seconds: int = Field(default=120, ge=1, le=600, description="For wait.")

    @model_validator(mode="after")
    def _consistent(self) -> DeployModelArgs:
        if self.promote and self.canary_traffic_percent is not None:
            raise PydanticCustomError("promote_and_canary", "promote removes canary_traffic_percent: give one or "
                                      "the other")
        low, high = self.min_replicas, self.max_replicas
        if not replica_range_ok(low, high):
            raise PydanticCustomError("replica_range", "min_replicas ({low}) must not exceed max_replicas ({high})",
                                      {"low": low, "high": high})
        return self

    @field_validator("storage_uri")
    @classmethod
    def _no_dot_dot(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value and ".." in value:
            raise PydanticCustomError("model_name", 'a model name must not contain ".."')
        return value

    def bound_attrs(self) -> BoundAttrs:
        """What policy bounds look at: the most and the fewest replicas asked for (both ends of the range are
        bounded: min_replicas 0 scales to zero), the model (service) name, the storage URI it loads."""
        asked = [v for v in (self.min_replicas, self.max_replicas) if v is not None]
        return BoundAttrs(replicas=max(asked) if asked else None, min_replicas=self.min_replicas, model=self.name,
                          storage_uri=self.storage_uri)


class DeployModelResult(WriteResult):
    name: str
    namespace: str
    action: Literal["created", "updated", "unchanged", "dry-run"]
    existed: bool
    mode: str | None = Field(description="Deployment mode the service runs in (null: cluster default, not known "
                             "yet).")
    storage_uri: str | None
    canary_traffic_percent: int | None = Field(description="canaryTrafficPercent in the spec after the call.")
    changes: list[FieldChange]
    notes: list[str] = Field(description="What KServe will do with this that is easy to miss.")
    dry_run: bool
    status: ModelStatusResult | None = Field(default=None, description="Final status when wait was set.")

    def audit_summary(self) -> dict[str, Any]:
        return {"action": self.action, "dry_run": self.dry_run, "mode": self.mode,
                "canary_traffic_percent": self.canary_traffic_percent,
                "changes": [c.model_dump(mode="json") for c in self.changes], **self.override_summary()}


def desired_predictor(current: Mapping[str, Any], args: DeployModelArgs, *, creating: bool) -> JSON:
    """The predictor spec after applying ``args`` to ``current``: only the fields asked for change. Pure."""
    predictor = copy.deepcopy(dict(current))
    model = predictor.setdefault("model", {})
    model["modelFormat"] = {**as_json(model.get("modelFormat")), "name": args.model_format}
    if args.storage_uri is not None:
        model["storageUri"] = args.storage_uri
    if args.runtime is not None:
        model["runtime"] = args.runtime
    if args.protocol_version is not None or creating:
        model["protocolVersion"] = args.protocol_version or "v2"
    if args.resources is not None:
        resources = as_json(model.get("resources"))
        for section, amounts in args.resources.as_dict().items():
            resources[section] = {**as_json(resources.get(section)), **amounts}
        model["resources"] = resources
    if args.min_replicas is not None:
        predictor["minReplicas"] = args.min_replicas
    if args.max_replicas is not None:
        predictor["maxReplicas"] = args.max_replicas
    if args.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = args.canary_traffic_percent
    if args.promote:
        predictor.pop("canaryTrafficPercent", None)
    return predictor


def new_inference_service(args: DeployModelArgs, cause: str) -> JSON:
    annotations = {CHANGE_CAUSE_ANNOTATION: cause}
    if args.deployment_mode is not None:
        annotations[MODE_ANNOTATION] = args.deployment_mode
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": args.name, "namespace": args.namespace, "annotations": annotations,
                     "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "spec": {"predictor": desired_predictor({}, args, creating=True)},
    }


def deploy_notes(current: Mapping[str, Any] | None, args: DeployModelArgs, predictor: Mapping[str, Any],
                 mode: str | None) -> list[str]:
    """Refuse what KServe would silently ignore; note what is easy to miss. Pure."""
    notes: list[str] = []
    if current is None:
        if args.canary_traffic_percent is not None:
            raise ToolError("canary_traffic_percent: a new InferenceService's first revision always takes 100% of "
                            "traffic; deploy it first, then update it with canary_traffic_percent",
                            code="invalid_arguments", field="canary_traffic_percent", rule="canary-needs-a-rollout")
        if args.storage_uri is None:
            raise ToolError("storage_uri is required to create an InferenceService", code="invalid_arguments",
                            field="storage_uri", rule="required")
        if args.promote:
            notes.append("promote has no effect on a new InferenceService: its first revision takes 100%")
        return notes
    legacy = [k for k, v in predictor_of(current).items() if k != "model" and isinstance(v, dict) and "storageUri" in v]
    if legacy and "model" not in predictor_of(current):
        raise ToolError(f"{args.namespace}/{args.name} uses the old predictor schema (spec.predictor.{legacy[0]}); "
                        "deploy_model manages spec.predictor.model: migrate it, or change it with kubectl",
                        code="failed_precondition", rule="old-predictor-schema")
    had = mode_of(current)
    asked = normalize_mode(args.deployment_mode)
    if asked is not None and had is not None and asked != had:
        raise ToolError(f"deployment_mode: {args.namespace}/{args.name} runs in {had} mode, and KServe refuses to "
                        f"change the mode of an existing InferenceService; delete and recreate it to use {asked}",
                        code="invalid_arguments", field="deployment_mode", rule="immutable-deployment-mode")
    effective = asked or had
    canary = predictor.get("canaryTrafficPercent")
    if effective == RAW:
        if args.canary_traffic_percent is not None:
            raise ToolError("canary_traffic_percent: this InferenceService runs in RawDeployment mode, where KServe "
                            "has no canary and ignores canaryTrafficPercent (the new spec would take 100%); deploy "
                            "without it, and roll back with rollback (it restores the previous spec)",
                            code="invalid_arguments", field="canary_traffic_percent", rule="canary-unsupported")
        if isinstance(canary, int):
            notes.append(f"canaryTrafficPercent {canary} is in the spec but RawDeployment mode ignores it: "
                         "the new spec takes 100% once ready")
        return notes
    template_changes = template_of(predictor_of(current)) != template_of(predictor)
    if effective is None and isinstance(canary, int):
        notes.append("the deployment mode is not known (no annotation, none reported): if the cluster defaults to "
                     "RawDeployment/Standard, KServe ignores canaryTrafficPercent")
    rolled = component_of(current).get("latestRolledoutRevision")
    if isinstance(canary, int) and template_changes:
        notes.append(f"canary: the new revision gets {canary}% once ready, the rest stays on "
                     f"{rolled or 'the last rolled-out revision'}; call again with \"promote\": true to roll it out, "
                     "rollback to send all traffic back")
    if isinstance(canary, int) and args.canary_traffic_percent is None and template_changes:
        notes.append(f"canaryTrafficPercent {canary} stays in the spec from an earlier call, so this update is "
                     f"a {canary}% canary too")
    if args.promote and not isinstance(as_json(predictor_of(current)).get("canaryTrafficPercent"), int):
        notes.append("promote: there was no canaryTrafficPercent; nothing to promote")
    return notes


def deploy_model(kube: Kube, args: DeployModelArgs, ctx: CallContext,
                 progress: ProgressCallback | None = None) -> DeployModelResult:
    """Create or update an ONNX InferenceService; canary/promote; server-side dry-run; optional wait."""
    ns, name = args.namespace, args.name
    cause = change_cause(ctx.principal, ctx.call_id)
    dry = "All" if args.dry_run else None
    custom = custom_api(kube)
    seen: dict[str, Any] = {}  # from the attempt that wrote: the Git owner a bound let it override, the object sent

    def attempt() -> tuple[JSON | None, JSON, list[str]] | DeployModelResult:
        current = find_service(kube, name, ns, ctx)
        seen["override"] = enforce_ownership(ctx, current, f"inferenceservice {ns}/{name}")
        # The bound on this read, which the write is guarded by (generation): issue 15 item 11.
        now = BoundAttrs(current_replicas=replica_ceiling(current) if current else 0)
        enforce_bounds(ctx, args.bound_attrs().but(now), f"inferenceservice {ns}/{name} as read just before the write")
        predictor = (desired_predictor(predictor_of(current), args, creating=False) if current is not None
                     else desired_predictor({}, args, creating=True))
        notes = deploy_notes(current, args, predictor, mode_of(current) if current is not None else None)
        if current is None:
            seen["sent"] = new_inference_service(args, cause)
            after = kube.call(custom.create_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                              seen["sent"], dry_run=dry,
                              what=f"create inferenceservice {ns}/{name}", audit_id=ctx.call_id)
            return current, after, notes
        extra = {}
        if args.deployment_mode is not None:
            extra[MODE_ANNOTATION] = args.deployment_mode
        annotated = as_json(meta(current).get("annotations")).get(MODE_ANNOTATION)
        if predictor == predictor_of(current) and (not extra or annotated == args.deployment_mode):
            status = None
            if args.wait and not args.dry_run:
                status = _wait_ready(kube, name, ns, ctx, float(args.timeout_seconds), progress,
                                     f"inferenceservice {ns}/{name} was unchanged", 0)
            return _deploy_result(args, "unchanged", current, current, notes, status, override=seen["override"])
        after = guarded_patch(kube, custom.patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name,
                              ops=spec_patch(current, predictor, cause, extra),
                              reread=lambda: read_service(kube, name, ns, ctx),
                              what=f"update inferenceservice {ns}/{name}", audit_id=ctx.call_id, dry_run=dry)
        return current, after, notes

    outcome = retry_on_conflict(attempt, what=f"deploy_model {ns}/{name}", kind="InferenceService")
    if isinstance(outcome, DeployModelResult):
        return outcome
    current, after, notes = outcome
    written: dict[str, Any] = {"override": seen["override"],
                               "change": service_change(current, seen.get("sent") or after, name, ns)}
    if args.dry_run:
        return _deploy_result(args, "dry-run", current, after, notes, **written)
    action: Literal["created", "updated"] = "created" if current is None else "updated"
    status = None
    if args.wait:
        status = _wait_ready(kube, name, ns, ctx, float(args.timeout_seconds), progress,
                             f"inferenceservice {ns}/{name} was {action}", int(meta(after).get("generation") or 0))
    return _deploy_result(args, action, current, after, notes, status, **written)


def _deploy_result(args: DeployModelArgs, action: Literal["created", "updated", "unchanged", "dry-run"],
                   before: JSON | None, after: JSON, notes: list[str],
                   status: ModelStatusResult | None = None, change: ManifestChange | None = None,
                   override: Owner | None = None) -> DeployModelResult:
    canary = predictor_of(after).get("canaryTrafficPercent")
    return DeployModelResult(
        name=args.name, namespace=args.namespace, action=action, existed=before is not None,
        mode=(status.mode if status is not None else None) or mode_of(after) or mode_of(before),
        storage_uri=model_of(after).get("storageUri"),
        canary_traffic_percent=canary if isinstance(canary, int) else None,
        changes=[] if action == "unchanged" else diff_services(before, after), notes=notes, dry_run=args.dry_run,
        status=status, change=change, gitops_override=override,
    )


def wait_step(s: ModelStatusResult, generation: int) -> tuple[float, str | None]:
    """(progress out of 3, failure or None) of a service converging on ``generation``. Pure.

    1: the controller saw the spec; 2: the newest revision is ready; 3: Ready. A model that cannot
    load, or a spec KServe cannot serve, is a failure now rather than a timeout later.
    """
    if s.observed_generation < generation:
        return 0.0, None
    model = s.model
    if model is not None and model.transition_status in ("BlockedByFailedLoad", "InvalidSpec"):
        return 1.0, f"model {model.transition_status}" + failure_of(model)
    failed = next((c for c in s.conditions if c.status == "False" and c.type != "Ready"), None)
    if failed is not None and not s.ready:
        return 1.0, (f"{failed.type} False" + (f" ({said(failed.reason)})" if failed.reason else "")
                     + (f": {said(failed.message)}" if failed.message else ""))
    if s.done:
        return 3.0, None
    newest_ready = s.mode == RAW or s.latest_created_revision == s.latest_ready_revision
    return (2.0 if newest_ready else 1.0), None


def _wait_ready(kube: Kube, name: str, namespace: str, ctx: CallContext, timeout: float,
                progress: ProgressCallback | None, done_what: str, generation: int) -> ModelStatusResult:
    """Poll until the service serves ``generation``; ToolError ``rollout_failed``/``timeout`` otherwise."""
    deadline = time.monotonic() + timeout
    last: str | None = None
    while True:
        s = status_result(read_service(kube, name, namespace, ctx))
        value, failure = wait_step(s, generation)
        if failure is not None:
            raise ToolError(f"{done_what}, but it cannot become Ready: {failure}", code="rollout_failed",
                            rule="model-not-ready")
        if s.summary != last:
            last = s.summary
            if not report_progress(progress, value, 3.0, s.summary):
                progress = None
        if value >= 3.0:
            return s
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ToolError(f"{done_what}, but it is not Ready after {timeout:g} s: {s.summary}. It continues in "
                            "the cluster; follow it with model_status.", code="timeout", rule="ready-timeout")
        time.sleep(min(POLL_SECONDS, remaining))


# --------------------------------------------------------------------------- scale and rollback (kind=InferenceService)


# --------------------------------------------------------------------------- list_workloads rows


# --------------------------------------------------------------------------- kserve_infer


