"""scale for an InferenceService: its replica range and autoscaling target, one guarded patch."""

from __future__ import annotations

import copy
from typing import Literal

from opsgate.policies.bounds import BoundAttrs
from opsgate.vocab.limits import replica_range_ok

from ..bounded import enforce_bounds, enforce_ownership
from ..context import CallContext
from ..errors import ToolError
from ..kube import Kube, guarded_patch, retry_on_conflict
from ..structs.objects import change_cause
from ..structs.ownership import Owner
from ..workload_types import (
    ScaleArgs,
    ScaleResult,
)
from .api import custom_api, read_service
from .services import GROUP, JSON, KIND, PLURAL, RAW, VERSION, mode_of, predictor_of, service_change, spec_patch
from .status import replica_ceiling


def scale_inference_service(kube: Kube, args: ScaleArgs, ctx: CallContext) -> ScaleResult:
    """Set ``minReplicas``/``maxReplicas`` of the predictor (one guarded JSON Patch, with change-cause)."""
    ns, name = args.namespace, args.name
    what = f"scale inferenceservice {ns}/{name}"
    dry = "All" if args.dry_run else None
    cause = change_cause(ctx.principal, ctx.call_id)

    def attempt() -> ScaleResult:
        current = read_service(kube, name, ns, ctx)
        override = enforce_ownership(ctx, current, f"inferenceservice {ns}/{name}")
        # The bound on this read, which the write is guarded by (generation): issue 15 item 11.
        enforce_bounds(ctx, args.bound_attrs().but(BoundAttrs(current_replicas=replica_ceiling(current))),
                       f"inferenceservice {ns}/{name} as read just before the write")
        predictor = copy.deepcopy(predictor_of(current))
        low, high = predictor.get("minReplicas"), predictor.get("maxReplicas")
        target, metric = predictor.get("scaleTarget"), predictor.get("scaleMetric")
        new_low = args.min_replicas if args.min_replicas is not None else low
        new_high = args.max_replicas if args.max_replicas is not None else high
        new_target = args.scale_target if args.scale_target is not None else target
        new_metric = args.scale_metric if args.scale_metric is not None else metric
        if (isinstance(new_low, int) and isinstance(new_high, int) and new_high > 0  # 0: no upper limit set
                and not replica_range_ok(new_low, new_high)):
            raise ToolError(f"min_replicas {new_low} would exceed max_replicas {new_high}", code="invalid_arguments",
                            field="min_replicas", rule="replica-range")
        if (new_low, new_high, new_target, new_metric) == (low, high, target, metric):
            return _scale_result(args, "unchanged", current, current, None, override)
        for key, value in (("minReplicas", new_low), ("maxReplicas", new_high), ("scaleTarget", new_target),
                           ("scaleMetric", new_metric)):
            if value is not None:
                predictor[key] = value
        after = guarded_patch(kube, custom_api(kube).patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name,
                              ops=spec_patch(current, predictor, cause),
                              reread=lambda: read_service(kube, name, ns, ctx),
                              what=what, audit_id=ctx.call_id, dry_run=dry)
        message = None
        canary = predictor.get("canaryTrafficPercent")
        if mode_of(current) != RAW:
            message = "in Serverless mode a replica change makes a new revision" + (
                f"; canaryTrafficPercent {canary} in the spec makes it a {canary}% canary"
                if isinstance(canary, int) else "")
        return _scale_result(args, "dry-run" if args.dry_run else "scaled", current, after, message, override)

    return retry_on_conflict(attempt, what=what, kind="InferenceService")


def _scale_result(args: ScaleArgs, action: Literal["scaled", "unchanged", "dry-run"], before: JSON, after: JSON,
                  message: str | None, override: Owner | None) -> ScaleResult:
    b, a = predictor_of(before), predictor_of(after)
    return ScaleResult(name=args.name, namespace=args.namespace, kind=KIND, action=action, replicas_before=None,
                       replicas_after=None, min_replicas_before=b.get("minReplicas"),
                       min_replicas_after=a.get("minReplicas"), max_replicas_before=b.get("maxReplicas"),
                       max_replicas_after=a.get("maxReplicas"), scale_target_after=a.get("scaleTarget"),
                       scale_metric_after=a.get("scaleMetric"), dry_run=args.dry_run, message=message,
                       change=None if action == "unchanged" else service_change(before, after, args.name,
                                                                                args.namespace),
                       gitops_override=override)
