"""A Deployment's rollout progress and kubectl's ``rollout status`` verdict, from its status alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .objects import meta, spec_of, status_of


def rollout_progress(desired: int, replicas: int, updated: int, available: int) -> tuple[float, float]:
    """(progress, total) of a rollout in three steps per replica: updated, available, old one gone.

    Monotone as a rolling update advances, and equal to total only when kubectl would say done.
    """
    total = 3 * max(desired, 1)
    pending_old = max(replicas - updated, 0)
    value = min(updated, desired) + min(available, updated, desired) + max(desired - pending_old, 0)
    if desired == 0:
        value = 3 if replicas == 0 else 0
    return float(min(value, total)), float(total)





@dataclass(frozen=True)
class RolloutState:
    summary: str
    done: bool
    failed: bool


def rollout_state(deployment: Mapping[str, Any]) -> RolloutState:
    """kubectl's ``rollout status`` verdict for a Deployment (DeploymentStatusViewer), as one line."""
    name = meta(deployment).get("name", "")
    spec, status = spec_of(deployment), status_of(deployment)
    generation = int(meta(deployment).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    if generation > observed:
        return RolloutState("Waiting for deployment spec update to be observed...", False, False)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return RolloutState(f'deployment "{name}" exceeded its progress deadline', False, True)
    desired = spec.get("replicas")
    updated = int(status.get("updatedReplicas") or 0)
    replicas = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    if desired is not None and updated < int(desired):
        return RolloutState(f"{waiting}{updated} out of {desired} new replicas have been updated...", False, False)
    if replicas > updated:
        return RolloutState(f"{waiting}{replicas - updated} old replicas are pending termination...", False, False)
    if available < updated:
        return RolloutState(f"{waiting}{available} of {updated} updated replicas are available...", False, False)
    return RolloutState(f'deployment "{name}" successfully rolled out', True, False)
