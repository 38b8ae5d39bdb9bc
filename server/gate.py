"""The gate: the one code path every tool call takes.

principal -> argument validation -> Casbin decision -> decision record (fsynced)
-> run -> outcome record. A call whose decision cannot be written is refused
before anything happens; nothing a tool or a client does can crash the server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import anyio
import mcp_types as types
import structlog
from pydantic import BaseModel, ValidationError

from opsgate.audit import AuditLog, AuditWriteError
from opsgate.policies.bounds import check_bounds
from opsgate.policies.engine import Decision, Policy
from opsgate.policies.ratelimit import RateLimiter
from opsgate.tools.context import BoundsCheck, CallContext, ProgressFn
from opsgate.tools.errors import ToolError

from .records import Caller, compact, decision_record, outcome_record
from .results import cap_strings, cap_text
from .toolspec import AskFn, ToolSpec
from .wire import rejection_errors

log = structlog.get_logger("opsgate.gate")


@dataclass(frozen=True)
class GateDecision:
    """A Casbin decision, or the gate's own refusal (read-only mode), in audit form."""

    allowed: bool
    reason: str
    rule: str | None = None
    source: str | None = None
    policy_hash: str | None = None
    subject: str | None = None  # the subject the deciding rule names: whose bounds apply
    bound: str | None = None  # the bound that refused an allowed call
    confirmation: str | None = None  # accepted / decline / cancel / unsupported, when the policy asked

    @classmethod
    def from_policy(cls, decision: Decision) -> GateDecision:
        rule = decision.rule
        return cls(
            allowed=decision.allowed,
            reason=decision.reason,
            rule=rule.text if rule else None,
            source=rule.source if rule else None,
            policy_hash=decision.policy_hash,
            subject=rule.fields[0] if rule else None,
        )

    def record(self) -> dict[str, Any]:
        fields = {
            "effect": "allow" if self.allowed else "deny",
            "reason": self.reason,
            "rule": self.rule,
            "source": self.source,
            "policy_hash": self.policy_hash,
            "bound": self.bound,
            "confirmation": self.confirmation,
        }
        return {k: v for k, v in fields.items() if v is not None}


# What a caller can make us repeat back (a tool name, argument keys) is capped like cluster text.
MAX_NAME = 128
MAX_ERRORS = 20


def error_result(code: str, message: str, call_id: str, **details: Any) -> types.CallToolResult:
    """Errors are data too: a code, one sentence, and the fields to act on; every string capped."""
    error = cap_strings({"code": code, "message": message, "call_id": call_id, **details})
    message = error["message"]
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"error ({code}): {message} [call {call_id}]")],
        structured_content={"error": error},
        is_error=True,
    )


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Field and rule only (the rejected values are the caller's data and may be secrets), and few of them."""
    errors = [
        {
            "field": cap_strings(".".join(str(p) for p in err["loc"]) or "arguments", MAX_NAME),
            "rule": err["type"],
            "message": cap_strings(err["msg"], MAX_NAME * 2),
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS
        errors = [*errors[:MAX_ERRORS], {"field": "arguments", "rule": "more-errors", "message": f"{more} more"}]
    return errors


class Gate:
    def __init__(
        self,
        *,
        policy: Policy,
        audit: AuditLog,
        caller: Caller,
        read_only: bool = False,
        disable_destructive: bool = False,
    ) -> None:
        self._tools: dict[str, ToolSpec[Any, Any]] = {}
        self._listing: list[types.Tool] = []
        self.policy = policy
        self.audit = audit
        self.caller = caller
        self.read_only = read_only
        self.disable_destructive = disable_destructive
        # On the gate, not the policy: a reload must not refill anyone's budget.
        self.limiter = RateLimiter()
        self._in_flight = 0  # calls between decision and outcome: decides how records are appended

    def register(self, specs: Iterable[ToolSpec[Any, Any]]) -> None:
        """The only way a tool reaches a client: through this gate's list and call handlers."""
        for spec in specs:
            if spec.name in self._tools:
                raise ValueError(f"tool {spec.name!r} registered twice")
            self._tools[spec.name] = spec
            if spec.route == "tool":
                self._listing.append(spec.mcp_tool())

    @property
    def tool_names(self) -> list[str]:
        return [name for name, spec in self._tools.items() if spec.route == "tool"]

    @property
    def verbs(self) -> dict[str, str]:
        """Every name a policy may grant (tools and gated resources) and its verb."""
        return {name: spec.verb for name, spec in self._tools.items()}

    def verb_of(self, tool: str) -> str | None:
        spec = self._tools.get(tool)
        return spec.verb if spec else None

    def list_tools(self, principal: str | None = None) -> list[types.Tool]:
        """What this principal may call somewhere: a tool it can never call is noise for the assistant."""
        who = principal or self.caller.principal
        return [tool for tool in self._listing if self._offered(self._tools[tool.name], who)]

    def _offered(self, spec: ToolSpec[Any, Any], principal: str) -> bool:
        if self.read_only and spec.verb == "write":
            return False
        if self.disable_destructive and spec.destructive:
            return False
        return self.policy.may_call_somewhere(principal, spec.name, spec.verb, namespaced=spec.namespaced)

    def decide(self, principal: str, namespace: str, tool: str) -> GateDecision:
        """The decision alone, for ``explain_access`` and for the call path."""
        verb = self.verb_of(tool) or "read"
        if self.read_only and verb == "write":
            return GateDecision(False, "denied: the server runs with --read-only; no tool may change anything")
        spec = self._tools.get(tool)
        if self.disable_destructive and spec is not None and spec.destructive:
            return GateDecision(False, "denied: the server runs with --disable-destructive")
        try:
            return GateDecision.from_policy(self.policy.decide(principal, namespace, tool, verb))
        except Exception as exc:  # a policy that fails while deciding denies
            log.error("policy_error", error=repr(exc))
            return GateDecision(False, f"denied: policy error ({type(exc).__name__})")

    async def _decide_call(
        self, spec: ToolSpec[Any, Any], args: BaseModel, caller: Caller, namespace: str, ask: AskFn | None
    ) -> GateDecision:
        """Casbin, then the allowing subject's bounds, then its rate limit, then the user's confirmation."""
        decision = self.decide(caller.principal, namespace, spec.name)
        if not decision.allowed:
            return decision
        bounds = self.policy.bounds_for(decision.subject)  # never None: some bounds hold for every subject
        attrs = spec.bound_attrs(args) if spec.bound_attrs is not None else {}
        if attrs.get("url_override") and not (bounds is not None and bounds.allow_url_override):
            # An address the caller picks is a request from inside the cluster's network: opt-in only.
            reason = f"a url override needs allow_url_override = true in bounds.toml for {decision.subject}"
            return replace(decision, allowed=False, reason=f"denied by bound: {reason}", bound=reason)
        if bounds is None:
            return decision
        if spec.bound_attrs is not None:
            if bounds.max_replicas_change is not None and spec.current_state is not None:
                attrs = {**attrs, **await spec.current_state(args)}
            decision = self.apply_bounds(decision, attrs)
            if not decision.allowed:
                return decision
        if spec.verb == "write":
            refusal = self.limiter.check(caller.principal, decision.subject or "", bounds, time.monotonic())
            if refusal is not None:
                return replace(decision, allowed=False, reason=f"denied by rate limit: {refusal}", bound=refusal)
        if spec.name in bounds.confirm:
            return await self._confirm(decision, spec, args, ask)
        return decision

    async def _confirm(
        self, decision: GateDecision, spec: ToolSpec[Any, Any], args: BaseModel, ask: AskFn | None
    ) -> GateDecision:
        question = f"Allow {spec.name} {compact(args.model_dump(mode='json', exclude_none=True))[:300]}?"
        answer = "unsupported" if ask is None else await ask(question)
        if answer == "accept":
            return replace(decision, confirmation="accepted")
        reason = {
            "unsupported": "the policy asks the user to confirm this tool, and this client cannot ask",
            "decline": "the user declined",
            "cancel": "the user cancelled the confirmation",
        }.get(answer, "the confirmation failed")
        return replace(decision, allowed=False, reason=f"denied: {reason}", confirmation=answer)

    def apply_bounds(self, decision: GateDecision, attrs: Mapping[str, Any]) -> GateDecision:
        """An allowed call whose arguments break a bound of the allowing subject is denied, naming both."""
        reason = check_bounds(decision.subject or "", self.policy.bounds_for(decision.subject), attrs)
        if reason is None:
            return decision
        return replace(
            decision,
            allowed=False,
            reason=f"denied by bound: {reason} (the call was allowed by {decision.source}; bounds in bounds.toml)",
            bound=reason,
        )

    def bounds_check(self, decision: GateDecision) -> BoundsCheck:
        """The allowing subject's bounds as the call's tool sees them (CallContext.check_bounds).

        Taken at decision time, so a reload mid-call changes nothing; for state a tool reads before
        its write (the revision a rollback restores), refused in the same words as the gate's own.
        """
        subject, bounds, source = decision.subject or "", self.policy.bounds_for(decision.subject), decision.source

        def check(attrs: Mapping[str, Any]) -> str | None:
            reason = check_bounds(subject, bounds, attrs)
            return None if reason is None else f"denied by bound: {reason} (the call was allowed by {source})"

        return check

    def with_client(self, name: str | None, version: str | None) -> Caller:
        c = self.caller
        return Caller(c.principal, c.principal_source, c.os_user, name, version, c.session_id)

    async def call(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        caller: Caller,
        progress: ProgressFn | None = None,
        route: str = "tool",
        ask: AskFn | None = None,
    ) -> types.CallToolResult:
        self._in_flight += 1
        try:
            return await self._call(name, arguments, caller, progress, route, ask)
        finally:
            self._in_flight -= 1

    async def _call(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        caller: Caller,
        progress: ProgressFn | None,
        route: str,
        ask: AskFn | None,
    ) -> types.CallToolResult:
        call_id = uuid.uuid4().hex
        started = time.perf_counter()
        bound = log.bind(call_id=call_id, tool=name, principal=caller.principal)
        raw: Any = dict(arguments) if arguments is not None else {}

        name = cap_strings(name, MAX_NAME)  # the name is the caller's text: recorded and echoed, but short
        rejected = rejection_errors(raw)  # a request the stdin edge disarmed (too deep, malformed, too long)
        if rejected is not None:
            return await self._invalid(call_id, caller, name, raw, rejected, bound)
        spec = self._tools.get(name)
        if spec is None or spec.route != route:
            errors = [{"field": "name", "rule": "unknown-tool", "message": f"no {route} named {name!r}"}]
            return await self._invalid(call_id, caller, name, raw, errors, bound)
        try:
            args = spec.args_model.model_validate(raw)
        except ValidationError as exc:
            return await self._invalid(call_id, caller, name, raw, validation_errors(exc), bound)

        namespace = spec.namespace_of(args)
        decision = await self._decide_call(spec, args, caller, namespace, ask)
        record = decision_record(
            call_id=call_id, caller=caller, tool=name, verb=spec.verb, namespace=namespace,
            arguments=args.model_dump(mode="json"), decision=decision.record(), object_ref=spec.object_ref(args),
        )
        if not await self._append(record, bound):
            return self._audit_refusal(call_id)
        if not decision.allowed:
            bound.info("call_denied", reason=decision.reason)
            return error_result("denied", decision.reason, call_id, decision=decision.record())

        return await self._run(spec, args, call_id, caller, started, progress, bound, self.bounds_check(decision))

    async def _run(
        self,
        spec: ToolSpec[Any, Any],
        args: BaseModel,
        call_id: str,
        caller: Caller,
        started: float,
        progress: ProgressFn | None,
        bound: structlog.typing.FilteringBoundLogger,
        check_bounds: BoundsCheck | None = None,
    ) -> types.CallToolResult:
        client = f"{caller.client_name}/{caller.client_version}" if caller.client_name else None
        context = CallContext(call_id=call_id, principal=caller.principal, client=client, report_progress=progress,
                              check_bounds=check_bounds)
        result: BaseModel | None = None
        error: dict[str, Any] | None = None
        try:
            result = await spec.run(args, context)
        except ToolError as exc:
            status = getattr(exc, "status", None)  # the API's HTTP status, when the failure came from one
            error = {"code": exc.code, "message": exc.message, "field": exc.field, "rule": exc.rule,
                     "http_status": status if isinstance(status, int) else None}
            error = {k: v for k, v in error.items() if v is not None}
        except Exception as exc:  # never crash the server; the log keeps the traceback
            bound.exception("tool_crashed")
            error = {"code": "internal_error", "message": f"internal error in {spec.name} ({type(exc).__name__})"}
        duration_ms = (time.perf_counter() - started) * 1000
        summary = getattr(result, "audit_summary", None)
        outcome = outcome_record(
            call_id=call_id, caller=caller, tool=spec.name,
            status="ok" if error is None else "error", duration_ms=duration_ms, error=error,
            result=summary() if callable(summary) else None,
        )
        if not await self._append(outcome, bound):
            return error_result(
                "audit_unavailable",
                "the call ran but its outcome could not be written to the audit log; the result is withheld",
                call_id,
            )
        if error is not None:
            bound.info("call_failed", code=error["code"], duration_ms=round(duration_ms, 3))
            return error_result(error.pop("code"), error.pop("message"), call_id, **error)
        assert result is not None
        bound.info("call_ok", duration_ms=round(duration_ms, 3))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=cap_text(spec.render(result)))],
            structured_content=cap_strings(result.model_dump(mode="json")),
            is_error=False,
        )

    async def _invalid(
        self,
        call_id: str,
        caller: Caller,
        tool: str,
        raw: Any,
        errors: list[dict[str, str]],
        bound: structlog.typing.FilteringBoundLogger,
    ) -> types.CallToolResult:
        decision = {"effect": "invalid", "reason": "arguments rejected before any decision", "errors": errors}
        record = decision_record(
            call_id=call_id, caller=caller, tool=tool, verb=self.verb_of(tool) or "unknown",
            namespace="-", arguments=raw, decision=decision,
        )
        if not await self._append(record, bound):
            return self._audit_refusal(call_id)
        bound.info("call_invalid", fields=[e["field"] for e in errors])
        summary = "; ".join(f"{e['field']}: {e['message']} ({e['rule']})" for e in errors[:5])
        return error_result("invalid_arguments", summary, call_id, errors=errors)

    async def _append(self, record: dict[str, Any], bound: structlog.typing.FilteringBoundLogger) -> bool:
        """Durable before it returns. Alone, inline (a thread hop costs more than the fsync);
        with other calls in flight, in a worker thread, so they share one fsync (group commit)
        and none stalls the loop for the others."""
        try:
            if self._in_flight <= 1:
                self.audit.append(record)
            else:
                await anyio.to_thread.run_sync(self.audit.append, record)
        except AuditWriteError as exc:
            bound.error("audit_write_failed", error=str(exc), stage=record.get("stage"))
            return False
        return True

    @staticmethod
    def _audit_refusal(call_id: str) -> types.CallToolResult:
        return error_result(
            "audit_unavailable", "refused: the audit log cannot be written, so nothing was run", call_id
        )


__all__ = ["Gate", "GateDecision", "compact", "error_result"]
