"""rollback for an InferenceService: canary traffic back to 0, or the previous spec opsgate recorded."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any, Literal

from ..bounded import enforce_bounds, enforce_ownership, restored_service_attrs
from ..context import CallContext
from ..errors import ToolError
from ..kube import Kube, guarded_patch, retry_on_conflict
from ..structs.objects import change_cause, meta
from ..workload_types import (
    RollbackArgs,
    RollbackResult,
)
from .api import custom_api, read_service
from .services import (
    GROUP,
    JSON,
    KIND,
    PLURAL,
    PREVIOUS_SPEC_ANNOTATION,
    RAW,
    VERSION,
    as_json,
    component_of,
    diff_services,
    mode_of,
    predictor_of,
    revision_number,
    service_change,
    spec_patch,
    template_of,
)

RollbackStrategy = Literal["canary-traffic-to-0", "restored-previous-spec"]


def rollback_plan(obj: Mapping[str, Any]) -> tuple[RollbackStrategy, JSON | None, str]:
    """Which rollback applies, the predictor to write (None: nothing to do) and the sentence saying so. Pure.

    Serverless with a canary taking traffic: canaryTrafficPercent 0, so all traffic goes back to the
    last rolled-out revision (KServe's rollback). Otherwise (RawDeployment, which has no canary, or
    nothing in flight): the predictor spec opsgate recorded before its last template change.
    """
    predictor = predictor_of(obj)
    comp = component_of(obj)
    mode = mode_of(obj)
    canary = predictor.get("canaryTrafficPercent")
    rolled = comp.get("latestRolledoutRevision")
    latest = comp.get("latestReadyRevision") or comp.get("latestCreatedRevision")
    if mode != RAW and isinstance(canary, int) and rolled and latest and latest != rolled:
        if canary == 0:
            return ("canary-traffic-to-0", None,
                    f"canaryTrafficPercent is already 0: all traffic is on {rolled}; nothing changed")
        restored = copy.deepcopy(predictor)
        restored["canaryTrafficPercent"] = 0
        return ("canary-traffic-to-0", restored,
                f"set canaryTrafficPercent to 0 (was {canary}): all traffic goes back to {rolled}, the last "
                f"rolled-out revision; {latest} stays deployed with 0% (deploy_model to replace it)")
    raw = as_json(meta(obj).get("annotations")).get(PREVIOUS_SPEC_ANNOTATION)
    why = ("RawDeployment mode has no canary" if mode == RAW else "no canary is taking traffic")
    try:
        recorded = as_json(as_json(json.loads(raw)).get("predictor")) if isinstance(raw, str) else {}
    except ValueError:
        recorded = {}
    if not recorded:
        raise ToolError(
            f"nothing to roll back to: {why}, and opsgate has recorded no previous spec on this InferenceService "
            f"(annotation {PREVIOUS_SPEC_ANNOTATION}, written when deploy_model or scale changes the model)",
            code="failed_precondition", rule="no-previous-spec")
    restored = template_of(recorded)
    if template_of(predictor) == restored:
        return "restored-previous-spec", None, "already at the previous spec opsgate recorded; nothing changed"
    uri_before, uri_after = as_json(predictor.get("model")).get("storageUri"), as_json(restored.get("model")).get(
        "storageUri")
    change = f" (storageUri {uri_before} -> {uri_after})" if uri_before != uri_after else ""
    return ("restored-previous-spec", restored,
            f"{why}: restored the previous spec that opsgate recorded{change}; it rolls out as a new revision")


def rollback_inference_service(kube: Kube, args: RollbackArgs, ctx: CallContext) -> RollbackResult:
    """Roll an InferenceService back: canary traffic to 0, or the recorded previous spec; says which."""
    ns, name = args.namespace, args.name
    if args.to_revision is not None:
        raise ToolError("to_revision applies to Deployments; an InferenceService goes back to its last rolled-out "
                        "revision (Serverless canary) or the spec opsgate recorded", code="invalid_arguments",
                        field="to_revision", rule="not-for-inferenceservice")
    what = f"rollback inferenceservice {ns}/{name}"
    dry = "All" if args.dry_run else None
    cause = change_cause(ctx.principal, ctx.call_id)

    def attempt() -> RollbackResult:
        current = read_service(kube, name, ns, ctx)
        override = enforce_ownership(ctx, current, f"inferenceservice {ns}/{name}")
        strategy, predictor, message = rollback_plan(current)
        comp = component_of(current)
        from_revision = revision_number(comp.get("latestReadyRevision") or comp.get("latestCreatedRevision"))
        to_revision = (revision_number(comp.get("latestRolledoutRevision")) if strategy == "canary-traffic-to-0"
                       else None)
        base = RollbackResult(name=name, namespace=ns, kind=KIND, action="unchanged", from_revision=from_revision,
                              to_revision=to_revision, new_revision=None, changes=[], dry_run=args.dry_run,
                              message=message, strategy=strategy, gitops_override=override)
        if predictor is None:
            return base
        enforce_bounds(ctx, restored_service_attrs(predictor_of(current), predictor),
                       f"the spec a rollback of inferenceservice {ns}/{name} restores")
        after = guarded_patch(kube, custom_api(kube).patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name,
                              ops=spec_patch(current, predictor, cause),
                              reread=lambda: read_service(kube, name, ns, ctx),
                              what=what, audit_id=ctx.call_id, dry_run=dry)
        changes = diff_services(current, after)
        change = service_change(current, after, name, ns)
        if args.dry_run:
            return base.model_copy(update={"action": "dry-run", "changes": changes, "change": change,
                                           "message": f"would have: {message} (dry-run, nothing changed)"})
        return base.model_copy(update={"action": "rolled-back", "changes": changes, "change": change})

    return retry_on_conflict(attempt, what=what, kind="InferenceService")
