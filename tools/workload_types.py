"""The argument and result models both workload kinds share: names, scale, rollback, list rows, resources, progress.

Deployment tools (:mod:`.workloads`) and InferenceService tools (:mod:`.kserve`) both build on
these, so neither imports the other; which kind a scale or rollback call is for is decided once,
in the server's catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from opsgate.policies.bounds import BoundAttrs
from opsgate.vocab.kinds import WorkloadKind
from opsgate.vocab.limits import MAX_REPLICAS, replica_range_ok
from opsgate.vocab.names import dns1123_problem

from .structs.changes import ManifestChange
from .structs.diff import FieldChange
from .structs.ownership import Owner
from .structs.quantities import parse_quantity

log = logging.getLogger(__name__)


#: A sync progress reporter (progress, total, message); the server bridges it to MCP progress.
ProgressCallback = Callable[[float, float | None, str | None], None]


CONDITION_MESSAGE_MAX: Final = 256


def check_label(value: str) -> str:
    why = dns1123_problem(value, "label")
    if why is not None:
        raise PydanticCustomError("dns1123_label", why)
    return value


def check_subdomain(value: str) -> str:
    why = dns1123_problem(value, "subdomain")
    if why is not None:
        raise PydanticCustomError("dns1123_subdomain", why)
    return value


# Names of things that exist carry no pattern or length in the schema (every tools/list pays for them):
# an agent passes names it has read, and a typo gets the validator's own sentence. New names (DeployName) do.
Namespace = Annotated[str, AfterValidator(check_label)]
ObjectName = Annotated[str, AfterValidator(check_subdomain)]


# Field descriptions are sent on every tools/list: a few words, for what the name does not say.
DRY_RUN: Final = "Show the server's diff; change nothing."
SERVICE_ONLY: Final = "InferenceService only."


class Args(BaseModel):
    """A tool's arguments: a field the tool does not know is refused, never ignored."""

    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    """A tool's result: only the fields it declares."""

    model_config = ConfigDict(extra="forbid")


class WriteResult(Result):
    """What every write returns beside its own fields: the change as data (issue 19 item 4), and the owner
    when a bound let it change an object Git owns."""

    change: ManifestChange | None = Field(default=None, description="The change as a patch to apply or commit; "
                                          "null when nothing changed.")
    gitops_override: Owner | None = Field(default=None, description="Set when allow_gitops_owned_writes let "
                                          "this write change an object Git owns: an emergency.")

    def override_summary(self) -> dict[str, Any]:
        """For the audit outcome: an override of Git ownership, recorded as such."""
        if self.gitops_override is None:
            return {}
        return {"gitops_override": {"owner": self.gitops_override.model_dump(mode="json", exclude_none=True)}}


class WorkloadRow(Result):
    name: str
    kind: str
    desired: int = Field(description="Replicas asked for (spec.replicas; an InferenceService: minReplicas).")
    ready: int = Field(description="Replicas ready now (an InferenceService: desired when Ready, else 0).")
    images: list[str] = Field(description="Container images (an InferenceService: its storageUri).")
    revision: int | None = Field(description="Current rollout revision (an InferenceService: its latest ready "
                                 "revision's number); null before the first rollout.")
    age_seconds: int | None
    owner: str | None = Field(default=None, description="Who applies it from Git (Argo CD, Flux); null: none seen.")


class Condition(Result):
    type: str
    status: str
    reason: str | None = None
    message: str | None = Field(default=None, description=f"At most {CONDITION_MESSAGE_MAX} characters.")


def report_progress(progress: ProgressCallback | None, value: float, total: float | None, message: str) -> bool:
    """Send one progress report; a failing reporter (client gone) is dropped, never fails the call."""
    if progress is None:
        return False
    try:
        progress(value, total, message)
    except Exception:
        log.warning("progress callback failed; no more progress for this call", exc_info=True)
        return False
    return True


def _check_quantity(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_quantity(value)
    except ValueError as exc:
        raise PydanticCustomError("quantity", str(exc)) from None
    return value


Quantity = Annotated[str | None, AfterValidator(_check_quantity)]


class ResourceAmounts(Args):
    cpu: Quantity = None
    memory: Quantity = None


class Resources(Args):
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


class ScaleArgs(Args):
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

    def bound_attrs(self) -> BoundAttrs:
        """What policy bounds look at: the most replicas asked for, and an InferenceService's fewest.

        Both ends of a range are bounded: ``min_replicas=0, max_replicas=3`` scales to zero.
        """
        return BoundAttrs(replicas=self.bound_replicas(), min_replicas=self.min_replicas)


class ScaleResult(WriteResult):
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
        return {**summary, **self.override_summary()}


class RollbackArgs(Args):
    name: ObjectName
    namespace: Namespace
    kind: WorkloadKind = "Deployment"
    to_revision: int | None = Field(default=None, ge=1, description="From rollout_history; omit for the previous.")
    dry_run: bool = Field(default=False, description=DRY_RUN)


class RollbackResult(WriteResult):
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
        return {**summary, **self.override_summary()}
