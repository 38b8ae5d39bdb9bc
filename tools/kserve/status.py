"""model_status: one InferenceService's URL, readiness, model state, revisions and traffic, in a sentence."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydantic import Field

from opsgate.policies.bounds import BoundAttrs

from ..context import CallContext
from ..errors import ToolError
from ..informer import read_one
from ..kube import Kube
from ..structs.freshness import SOURCE, Freshness
from ..structs.objects import meta
from ..structs.ownership import Owner, ownership
from ..workload_types import (
    CONDITION_MESSAGE_MAX,
    Args,
    Condition,
    Namespace,
    Result,
)
from .api import INFERENCE_SERVICES, read_service
from .services import RAW, ServiceName, as_json, component_of, mode_of, model_of, predictor_of, protocol_of


class ModelStatusArgs(Args):
    name: ServiceName
    namespace: Namespace


class TrafficSplit(Result):
    revision: str | None
    percent: int
    latest: bool = Field(description="Whether this target follows the latest ready revision.")
    tag: str | None = Field(default=None, description='"prev" (last rolled out) or "latest" during a canary.')


class ModelState(Result):
    transition_status: str | None = Field(description="UpToDate, InProgress, BlockedByFailedLoad or InvalidSpec.")
    active_state: str | None = None
    target_state: str | None = None
    failure_reason: str | None = None
    failure_message: str | None = None


class ModelStatusResult(Result):
    name: str
    namespace: str
    url: str | None
    ready: bool
    mode: str | None = Field(description="Serverless or RawDeployment (null: neither annotated nor reported).")
    protocol: str
    storage_uri: str | None
    canary_traffic_percent: int | None
    generation: int
    observed_generation: int
    conditions: list[Condition] = Field(description="Conditions that are not True, the most specific first; "
                                        "empty when all are True.")
    model: ModelState | None
    latest_created_revision: str | None
    latest_ready_revision: str | None
    latest_rolled_out_revision: str | None
    previous_rolled_out_revision: str | None
    traffic: list[TrafficSplit]
    done: bool = Field(description="The latest spec is served: seen by the controller, Ready, and (Serverless) "
                       "the newest revision is ready.")
    summary: str
    owner: Owner | None = Field(default=None, description="Who applies it from Git (Argo CD, Flux); direct writes "
                                "are refused.")
    source: Freshness | None = Field(default=None, description=SOURCE)

    def audit_summary(self) -> dict[str, Any]:
        return {"ready": self.ready, "done": self.done, "latest_ready": self.latest_ready_revision,
                "traffic": {t.revision or "?": t.percent for t in self.traffic}}


#: Most specific first: the condition that explains a failure best is listed, and summarized, first.
_CONDITION_ORDER: Final = ("PredictorConfigurationReady", "PredictorRouteReady", "PredictorReady", "IngressReady")


def _clip(text: Any) -> str | None:
    if not text:
        return None
    value = " ".join(str(text).split())
    return value if len(value) <= CONDITION_MESSAGE_MAX else value[: CONDITION_MESSAGE_MAX - 1] + "…"


_TOKEN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def said(text: str) -> str:
    """Text the cluster wrote (a condition's message, a model's failure), as a quoted string in our
    sentences: whoever can write an InferenceService's status writes it, so it reads as a quote of
    KServe, never as our own words. A reason that is one CamelCase-like word stays bare."""
    return text if _TOKEN.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def status_result(obj: Mapping[str, Any]) -> ModelStatusResult:
    """A compact status of one InferenceService, with KServe's own words for what is wrong. Pure."""
    m, status = meta(obj), as_json(as_json(obj).get("status"))
    name, namespace = str(m.get("name")), str(m.get("namespace"))
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    by_type = {str(c.get("type")): c for c in conditions}
    ready = as_json(by_type.get("Ready")).get("status") == "True"
    order = {t: i for i, t in enumerate(_CONDITION_ORDER)}
    failing = sorted((c for c in conditions if c.get("status") != "True"),
                     key=lambda c: (c.get("type") == "Ready", c.get("status") != "False",
                                    order.get(str(c.get("type")), len(order))))
    shown = [Condition(type=_clip(c.get("type")) or "", status=_clip(c.get("status")) or "",
                       reason=_clip(c.get("reason")), message=_clip(c.get("message"))) for c in failing]
    ms = as_json(status.get("modelStatus"))
    failure = as_json(ms.get("lastFailureInfo"))
    model = ModelState(
        transition_status=ms.get("transitionStatus"), active_state=as_json(ms.get("states")).get("activeModelState"),
        target_state=as_json(ms.get("states")).get("targetModelState"), failure_reason=_clip(failure.get("reason")),
        failure_message=_clip(failure.get("message")),
    ) if ms else None
    comp = component_of(obj)
    traffic = [TrafficSplit(revision=t.get("revisionName"), percent=int(t.get("percent") or 0),
                            latest=bool(t.get("latestRevision")), tag=t.get("tag"))
               for t in comp.get("traffic") or [] if isinstance(t, dict)]
    generation = int(m.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    mode = mode_of(obj)
    created, latest_ready = comp.get("latestCreatedRevision"), comp.get("latestReadyRevision")
    newest_ready = mode == RAW or created == latest_ready
    done = ready and observed >= generation and newest_ready
    canary = predictor_of(obj).get("canaryTrafficPercent")
    result = ModelStatusResult(
        name=name, namespace=namespace, url=status.get("url") or comp.get("url"), ready=ready, mode=mode,
        protocol=protocol_of(obj), storage_uri=model_of(obj).get("storageUri"),
        canary_traffic_percent=canary if isinstance(canary, int) else None, generation=generation,
        observed_generation=observed, conditions=shown, model=model, latest_created_revision=created,
        latest_ready_revision=latest_ready, latest_rolled_out_revision=comp.get("latestRolledoutRevision"),
        previous_rolled_out_revision=comp.get("previousRolledoutRevision"), traffic=traffic, done=done, summary="",
        owner=ownership(obj),
    )
    result.summary = summarize(result)
    return result


_URL: Final = re.compile(r"https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]{0,200})?")


def _said_url(url: Any) -> str:
    """A status URL bare when it is a plain http(s) URL, else quoted like any other cluster text."""
    text = str(url)
    return text if _URL.fullmatch(text) else said(_clip(text) or "")


def _split_text(traffic: Sequence[TrafficSplit]) -> str:
    parts = []
    for t in traffic:
        label = ", ".join(said(_clip(x) or "") for x in (t.tag, "canary" if t.tag == "latest" else None) if x)
        parts.append(f"{t.percent}% {said(_clip(t.revision) or '?')}" + (f" ({label})" if label else ""))
    return ", ".join(parts)


def summarize(s: ModelStatusResult) -> str:
    """One line: Ready and where traffic goes, or why not, in KServe's words."""
    head = f'inferenceservice "{s.name}"'
    if s.observed_generation < s.generation:
        return f"{head}: waiting for the controller to see generation {s.generation}"
    split = _split_text(s.traffic)
    # Every word below that the cluster wrote (condition type and status, revision names, the URL, the
    # model's state) is bare only when it is one plain token, else quoted and capped (issue 15 item 17).
    if s.ready and s.done:
        return f"{head} is Ready at {_said_url(s.url)}" + (f": {split}" if split else "")
    if s.ready:
        revision = said(_clip(s.latest_created_revision) or "?")
        return f"{head} is Ready ({split or _said_url(s.url)}); revision {revision} is still loading"
    first = s.conditions[0] if s.conditions else None
    why = (f"{said(first.type)} {said(first.status)}" + (f" ({said(first.reason)})" if first.reason else "")
           + (f": {said(first.message)}" if first.message else "")) if first else "no Ready condition yet"
    model = s.model
    if model is not None and model.transition_status not in (None, "UpToDate"):
        why += f"; model {said(_clip(model.transition_status) or '?')}" + failure_of(model)
    return f"{head} is not Ready: {why}"


def failure_of(model: ModelState) -> str:
    parts = [said(x) for x in (model.failure_reason, model.failure_message) if x]
    return f" ({': '.join(parts)})" if parts else ""


def model_status(kube: Kube, args: ModelStatusArgs, ctx: CallContext) -> ModelStatusResult:
    """One InferenceService: URL, Ready (or the failing condition), model state, revisions, traffic split."""
    obj, source = read_one(kube, INFERENCE_SERVICES, args.namespace, args.name,
                           lambda: read_service(kube, args.name, args.namespace, ctx))
    result = status_result(obj)
    result.source = source
    return result


def replica_ceiling(obj: Mapping[str, Any] | None) -> int:
    """The most replicas a service may run now: maxReplicas, else minReplicas, else KServe's default 1. Pure."""
    predictor = predictor_of(obj)
    for key in ("maxReplicas", "minReplicas"):
        value = predictor.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 1


def current_replicas(kube: Kube, namespace: str, name: str) -> BoundAttrs:
    """For the ``max_replicas_change`` bound, read before the call is decided: ``current_replicas`` is
    :func:`replica_ceiling` now, 0 for a service not created yet; nothing (unknown, so the bound refuses)
    when it cannot be read."""
    try:
        obj = read_service(kube, name, namespace, CallContext(call_id="", principal=""))
    except ToolError as exc:
        return BoundAttrs(current_replicas=0) if exc.status == 404 and exc.rule != "kserve-not-installed" else (
            BoundAttrs())
    return BoundAttrs(current_replicas=replica_ceiling(obj))
