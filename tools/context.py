"""What a running tool may know about its call. Plain data, so tools never import the server."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from opsgate.policies.bounds import BoundAttrs

ProgressFn = Callable[[float, float | None, str | None], Coroutine[Any, Any, None]]
# The caller's bounds (those of the subject whose rule allowed the call) applied to what a tool read on
# the guarding read of its write (policies/bounds.py check_bounds): the refusal sentence, or None when they hold.
BoundsCheck = Callable[[BoundAttrs], str | None]


@dataclass(frozen=True)
class CallContext:
    call_id: str
    principal: str
    client: str | None = None
    groups: tuple[str, ...] = ()  # the principal's groups as policy subjects (group:platform), from its token
    principal_source: str | None = None  # config, cluster, os-user, or oauth (a verified token)
    report_progress: ProgressFn | None = None
    # For state a write takes from the cluster rather than the arguments (a rollback's restored revision):
    # the tool checks it before writing (tools/bounded.py). None outside the gate (tests calling tools directly).
    check_bounds: BoundsCheck | None = None
    # The policy rule that allowed a write (its text), for records kept outside the audit log (a GitOps commit's
    # Opsgate-Policy trailer).
    policy_rule: str | None = None


@runtime_checkable
class AuditSummarized(Protocol):
    """A tool result that says what its outcome record keeps (a few facts: counts, revisions, the
    replicas before and after), never the whole result; results without one record no summary."""

    def audit_summary(self) -> dict[str, Any]: ...
