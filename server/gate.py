"""The gate: the one code path every tool call takes.

principal -> argument validation -> Casbin decision -> decision record (fsynced)
-> run -> outcome record. A call whose decision cannot be written is refused
before anything happens; nothing a tool or a client does can crash the server.
An allowed read changes nothing: its decision is written with its outcome, in
one fsync, before anything of its result leaves (audit/SCHEMA.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, cast, get_args

import anyio
import mcp_types as types
import structlog
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_core.core_schema import ErrorType

from opsgate import telemetry
from opsgate.audit import AuditWriteError
from opsgate.audit.denial import denial_kind
from opsgate.audit.redact import redact, redact_text
from opsgate.audit.sink import AuditSink
from opsgate.policies import BoundAttrs, BoundName, Decision, Policy, Rule
from opsgate.policies.bounds import SubjectBounds, check_bounds
from opsgate.policies.ratelimit import RateLimitBound, RateLimiter, SharedRateLimiter
from opsgate.telemetry import names as tnames
from opsgate.tools.context import AuditSummarized, BoundsCheck, CallContext, ProgressFn
from opsgate.tools.errors import ToolError
from opsgate.tools.kube import ActingFor, acting_for
from opsgate.vocab.kinds import WORKLOAD_KINDS
from opsgate.vocab.names import dns1123_problem

from .records import Caller, compact, decision_record, outcome_record
from .results import cap_strings, cap_text
from .toolspec import AskFn, ToolSpec
from .toolspec import _compact_json as default_render
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
    via: tuple[str, ...] | None = None  # the g lines that gave the principal the rule's subject, member first

    @classmethod
    def from_policy(cls, decision: Decision, via: tuple[Rule, ...] = ()) -> GateDecision:
        rule = decision.rule
        return cls(
            allowed=decision.allowed,
            reason=decision.reason,
            rule=rule.text if rule else None,
            source=rule.source if rule else None,
            policy_hash=decision.policy_hash,
            subject=rule.fields[0] if rule else None,
            via=tuple(f"{link.source} ({link.text})" for link in via) or None,
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
            "via": list(self.via) if self.via else None,
        }
        return {k: v for k, v in fields.items() if v is not None}


# What a caller can make us repeat back (a tool name, argument keys) is capped like cluster text.
MAX_NAME = 128
MAX_ERRORS = 20


# `field` of an error that concerns no single argument (a denial, an API failure, the audit log).
NO_FIELD = "-"


def error_envelope(
    code: str, message: str, call_id: str, errors: list[dict[str, str]] | None = None, **details: Any
) -> dict[str, Any]:
    """The one error shape (README "Errors"): code, one sentence, what to fix, the call id, then details.

    ``errors`` is never empty: an error that names no field gets one entry for the whole call,
    so an agent can always read ``errors[0]``. Every string is capped.
    """
    entries = errors or [{"field": NO_FIELD, "rule": code.replace("_", "-"), "message": message}]
    return cap_strings(  # type: ignore[no-any-return]
        redact({"code": code, "message": message, "errors": entries, "call_id": call_id, **details})
    )


def without_none(value: Any) -> Any:
    """``value`` without the null members of its objects, at any depth (the default text of a result)."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def error_result(error: Mapping[str, Any]) -> types.CallToolResult:
    """An error every client hands to the agent: ``isError`` and the envelope as JSON text, and no
    ``structuredContent``, which strict clients (TypeScript SDK 1.x, the Inspector) would check
    against the tool's success schema and replace our error with their own -32602."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=compact({"error": dict(error)}))], is_error=True
    )


def error_of(result: types.CallToolResult) -> dict[str, Any] | None:
    """The envelope of an error result, read from its text as any client reads it; None if it holds none."""
    if not result.is_error or len(result.content) != 1 or not isinstance(result.content[0], types.TextContent):
        return None
    try:
        envelope = json.loads(result.content[0].text)
    except ValueError:
        return None
    error = envelope.get("error") if isinstance(envelope, dict) else None
    return error if isinstance(error, dict) else None


@dataclass(frozen=True)
class Answer:
    """What a call came to before it goes on the wire: a result (text and data), or an error envelope.

    Resources read it directly; tools get :meth:`tool_result`.
    """

    error: dict[str, Any] | None = None
    text: str = ""
    data: dict[str, Any] | None = None

    def tool_result(self) -> types.CallToolResult:
        if self.error is not None:
            return error_result(self.error)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=self.text)], structured_content=self.data, is_error=False
        )


# What a user must see first when asked to confirm a call, in this order; the rest follows, and a cut is marked.
QUESTION_FIRST = ("namespace", "kind", "name", "model", "replicas", "min_replicas", "max_replicas", "image",
                  "storage_uri", "to_revision", "canary_traffic_percent", "promote", "dry_run")
MAX_QUESTION = 600


def confirmation_question(tool: str, arguments: Mapping[str, Any], limit: int = MAX_QUESTION) -> str:
    """``Allow scale in team-a: name=web, replicas=10, dry_run=false? Also: {...}`` (arguments already redacted).

    What decides a yes comes first (tool, namespace, object, replicas, image, dry_run); the other
    arguments follow as JSON; anything past ``limit`` is cut, and the cut says so.
    """
    first = [(key, arguments[key]) for key in QUESTION_FIRST if key in arguments and key != "namespace"]
    where = f" in {arguments['namespace']}" if "namespace" in arguments else ""
    said = ", ".join(f"{key}={compact(value)}" for key, value in first)
    rest = {k: v for k, v in arguments.items() if k not in QUESTION_FIRST}
    question = f"Allow {tool}{where}{': ' + said if said else ''}?"
    if rest:
        question += f" Also: {compact(rest)}"
    if len(question) <= limit:
        return question
    marker = " …[cut: {} more characters not shown]"
    keep = limit - len(marker.format(len(question)))
    return question[:keep] + marker.format(len(question) - keep)


def denial_rule(decision: GateDecision) -> str:
    """Which refusal this is, as the rule of the denied envelope: policy, bound, rate-limit or confirmation."""
    return denial_kind(decision.record())


def tool_error_envelope(exc: ToolError, call_id: str) -> dict[str, Any]:
    """A tool's expected failure in the envelope: its field and rule become ``errors[0]``; an API's
    422 causes, each a field the API refused, follow it; the HTTP status rides along."""
    rule = exc.rule or exc.code.replace("_", "-")
    errors = [{"field": exc.field or NO_FIELD, "rule": rule, "message": exc.message}]
    for cause in exc.causes:
        if isinstance(cause, dict) and cause.get("field") and cause["field"] != exc.field:
            errors.append({"field": str(cause["field"]), "rule": rule,
                           "message": str(cause.get("message") or cause.get("reason") or "")})
    details = {"http_status": exc.status} if exc.status is not None else {}  # when the failure came from an answer
    return error_envelope(exc.code, exc.message, call_id, errors[:MAX_ERRORS], **details)


# Pydantic's error types in a few short machine words (README "Errors"); any other of its types is "value".
_FORMAT_ERRORS = frozenset({
    "string_pattern_mismatch", "url_parsing", "url_syntax_violation", "url_scheme", "url_too_long",
    "uuid_parsing", "uuid_type", "date_parsing", "datetime_parsing", "time_parsing", "time_delta_parsing",
})
_RULE_OF = {
    "missing": "missing", "extra_forbidden": "extra", "literal_error": "enum", "enum": "enum",
    "greater_than": "range", "greater_than_equal": "range", "less_than": "range", "less_than_equal": "range",
    "multiple_of": "range", "finite_number": "range",
    "string_too_short": "length", "string_too_long": "length", "too_short": "length", "too_long": "length",
    "int_from_float": "type", "none_required": "type", "is_instance_of": "type",
}
# What a type error expected, in JSON's words.
_EXPECTED = {
    "dict": "an object", "model": "an object", "model_attributes": "an object", "dataclass": "an object",
    "list": "an array", "tuple": "an array", "set": "an array", "frozen_set": "an array",
    "string": "a string", "bytes": "a string", "int": "an integer", "float": "a number", "decimal": "a number",
    "bool": "true or false", "none_required": "null", "int_from_float": "a whole number",
}


_PYDANTIC_ERRORS = frozenset(get_args(ErrorType))


def rule_of(error_type: str) -> str:
    """Pydantic's own error types in our vocabulary; a rule our models raise (``PydanticCustomError``,
    e.g. ``dns1123_label``) is ours already and is kept, hyphenated like a ToolError's rule."""
    if error_type not in _PYDANTIC_ERRORS:
        return error_type.replace("_", "-")
    if error_type in _FORMAT_ERRORS:
        return "format"
    if error_type in _RULE_OF:
        return _RULE_OF[error_type]
    if error_type.endswith(("_type", "_parsing")):
        return "type"
    return "value"


def sent_kind(value: Any) -> str:
    """The JSON kind of what was sent: never the value itself (it may be a secret)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction" if not value.is_integer() else "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return "a value of another kind"


def expected_kind(error_type: str) -> str | None:
    if error_type in _EXPECTED:
        return _EXPECTED[error_type]
    for suffix in ("_type", "_parsing"):
        if error_type.endswith(suffix):
            return _EXPECTED.get(error_type.removesuffix(suffix))
    return None


_BUILTIN_TAGS = frozenset({"int", "float", "str", "bool", "bytes", "none", "dict", "list", "tuple", "set", "any"})


def is_type_tag(part: str | int) -> bool:
    """A step pydantic adds to an error's path to name a union member or a validator (``dict[str,any]``,
    ``list[OipTensorIn]``, ``function-after[...]``, ``int``, a model's class name), not a field: our
    fields are snake_case, so a CamelCase word is a model's name. Used when the arguments are not at hand."""
    if not isinstance(part, str):
        return False
    return "[" in part or part in _BUILTIN_TAGS or (part[:1].isupper() and part.isalnum())


def type_tags(loc: tuple[str | int, ...], sent: Any, error_type: str) -> list[bool]:
    """Which steps of an error's path are pydantic's tags, told by walking the arguments that were sent:
    a key the object holds or an index the array has is a step of the path (a user's key such as an
    environment variable ``PORT`` included); a word that is neither is a tag, except a last step an error
    says is missing."""
    tags: list[bool] = []
    value, known = sent, True
    for i, part in enumerate(loc):
        held = isinstance(value, Mapping) and part in value
        held = held or (isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value))
        if known and held:
            tags.append(False)
            value = value[part]
        elif not known:
            tags.append(is_type_tag(part))
        elif isinstance(part, str) and not (i == len(loc) - 1 and error_type == "missing"):
            tags.append(True)
        else:
            tags.append(False)
            known = False
    return tags


def _message(error_type: str, pydantic_message: str, sent: Any, depth: int) -> str:
    """The agent's words: what was expected and what kind of value was sent, never the value."""
    if error_type == "missing":
        return "required, and not sent"
    if error_type == "extra_forbidden":
        return "not an argument of this tool" if depth <= 1 else "not a field this object takes"
    expected = expected_kind(error_type) if rule_of(error_type) == "type" else None
    if expected is not None:
        return f"{expected} was expected, {sent_kind(sent)} was sent"
    text = pydantic_message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return _unquoted(text.replace("Input should be", "should be", 1), sent)


def _unquoted(text: str, sent: Any) -> str:
    """A validator's message with the strings sent (a value, a dict's keys and values) taken out, then redacted:
    a rejection names what is wrong, never the value (audit/SCHEMA.md)."""
    values: list[Any] = [sent] if isinstance(sent, str) else [*sent, *sent.values()] if isinstance(sent, dict) else []
    strings: list[str] = [v for v in values[:64] if isinstance(v, str) and len(v) >= 4]
    for value in sorted(strings, key=len, reverse=True):
        text = text.replace(repr(value), "(the value sent)").replace(value, "(the value sent)")
    cleaned: str = redact_text(text)
    return cleaned


def validation_errors(exc: ValidationError, sent: Any = None) -> list[dict[str, str]]:
    """Field, short rule and a sentence (README "Errors"), never the rejected value, and few of them.

    Pydantic reports a value that fits no member of a union once per member, under paths tagged with
    the member's type; those tags are cut from the field, a member the value matched in shape keeps its
    detailed errors and hides the others, and members that all failed on the value's kind become one
    "an object or an array was expected" entry. ``sent`` (the arguments) tells tags from keys exactly.
    """
    raw = exc.errors(include_url=False, include_input=True, include_context=False)
    branches: dict[tuple[str | int, ...], dict[str, bool]] = {}  # union position -> member tag -> only a kind mismatch
    parsed: list[tuple[tuple[str | int, ...], str | None, list[str | int], ErrorDetails]] = []
    for err in raw:
        loc = list(err["loc"])
        tags = type_tags(err["loc"], sent, err["type"]) if sent is not None else [is_type_tag(p) for p in loc]
        path = [part for part, tag in zip(loc, tags, strict=True) if not tag]
        first = next((i for i, tag in enumerate(tags) if tag), None)
        prefix: tuple[str | int, ...] = ()
        tag = None
        if first is not None:
            prefix, tag = tuple(loc[:first]), str(loc[first])
            kind_only = rule_of(err["type"]) == "type" and len(loc) == first + 1
            members = branches.setdefault(prefix, {})
            members[tag] = members.get(tag, True) and kind_only
        parsed.append((prefix, tag, path, err))

    merged: dict[str, dict[str, str]] = {}
    errors: list[dict[str, str]] = []
    for prefix, tag, path, err in parsed:
        members = branches.get(prefix, {})
        if tag is not None and members[tag] and not all(members.values()):
            continue  # the value had the shape of another member: its errors say more
        field = cap_strings(".".join(str(p) for p in path) or "arguments", MAX_NAME)
        rule = rule_of(err["type"])
        message = _message(err["type"], err["msg"], err.get("input"), len(path))
        if tag is not None and rule == "type" and field in merged:
            entry = merged[field]
            expected = message.split(" was expected, ", 1)[0]
            head, tail = entry["message"].split(" was expected, ", 1)
            if expected not in head.split(" or "):
                entry["message"] = f"{head} or {expected} was expected, {tail}"
            continue
        entry = {"field": field, "rule": rule, "message": cap_strings(message, MAX_NAME * 2)}
        if tag is not None and rule == "type":
            merged[field] = entry
        errors.append(entry)
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS
        errors = [*errors[:MAX_ERRORS], {"field": "arguments", "rule": "more-errors", "message": f"{more} more"}]
    return errors


# The facts of the call running, for its metrics (set by Gate._traced_call, filled from its audit records).
_CALL_FACTS: ContextVar[dict[str, Any] | None] = ContextVar("opsgate_call_facts", default=None)


def call_facts(record: Mapping[str, Any], facts: dict[str, Any] | None) -> dict[str, Any]:
    """The span attributes an audit record gives its call (call id, decision, rule; the outcome), counting the
    policy's decisions, rate-limit refusals and confirmations on the way; ``facts`` keeps decision and outcome
    for the call's own metrics."""
    attributes: dict[str, Any] = {tnames.CALL_ID: record.get("call_id", "-")}
    tool = record.get("tool") if isinstance(record.get("tool"), str) else "-"
    if record.get("stage") == "decision":
        decision = record.get("decision") or {}
        effect = str(decision.get("effect", "-"))
        attributes[tnames.DECISION] = effect
        rule = decision.get("bound") or decision.get("source")
        if rule:
            attributes[tnames.RULE] = str(rule)
        if facts is not None:
            facts["decision"] = effect
        kind = denial_kind(decision) if effect == "deny" else None
        telemetry.add(telemetry.POLICY_DECISIONS, 1, {tnames.DECISION: effect, "opsgate.denial": kind or "-"})
        if kind == "rate-limit":
            telemetry.add(telemetry.RATE_LIMIT_REFUSALS, 1,
                          {"gen_ai.tool.name": tool, "opsgate.verb": str(record.get("verb"))})
        if decision.get("confirmation") is not None:
            telemetry.add(telemetry.CONFIRMATIONS, 1, {"gen_ai.tool.name": tool,
                                                       "opsgate.answer": str(decision["confirmation"])})
    elif record.get("stage") == "outcome":
        outcome = record.get("outcome") or {}
        error = outcome.get("error") or {}
        status = str(error.get("code") or outcome.get("status") or "-")
        attributes["opsgate.outcome"] = status
        if facts is not None:
            facts["outcome"] = status
    return attributes


STOPPED = ("the server stopped before the call finished; what it changed, if anything, is not known here "
           "(read the object again)")
MAX_CLIENT_TEXT = 128  # characters of a client's self-reported name or version kept in records


def client_text(value: str | None) -> str | None:
    """A client's self-reported name or version as records keep it: redacted, then capped."""
    if value is None:
        return None
    return cap_strings(redact_text(value), MAX_CLIENT_TEXT)  # type: ignore[no-any-return]


def readable_target(raw: Any, object_kind: str | None) -> tuple[str, dict[str, str] | None]:
    """The namespace and object a rejected call named, when they read as Kubernetes names; else ``-`` and None.

    A call refused for one bad field is still about a namespace: ``audit query --namespace`` must find it
    (issue 15 item 5). Only values that pass the DNS-1123 rules are kept, so nothing unchecked is filed
    as a namespace.
    """
    if not isinstance(raw, Mapping):
        return "-", None
    ns = raw.get("namespace")
    namespace = ns if isinstance(ns, str) and dns1123_problem(ns, "label") is None else "-"
    if object_kind is None:
        return namespace, None
    name = raw.get("name")
    kind = raw.get("kind") if raw.get("kind") in WORKLOAD_KINDS else object_kind
    ref = {"kind": str(kind)}
    if namespace != "-":
        ref["namespace"] = namespace
    if isinstance(name, str) and dns1123_problem(name, "subdomain") is None:
        ref["name"] = name
    return namespace, ref


async def _limited(limiter: RateLimiter | SharedRateLimiter, principal: str, subject: str, bounds: SubjectBounds,
                   bound: RateLimitBound) -> str | None:
    """A limiter's answer: in this thread for the in-process buckets (a lock and some arithmetic), in a worker
    thread for shared ones (a database round trip must not stall every other session's calls)."""
    if isinstance(limiter, SharedRateLimiter):
        return await anyio.to_thread.run_sync(limiter.check, principal, subject, bounds, time.monotonic(), bound)
    return limiter.check(principal, subject, bounds, time.monotonic(), bound)


class Gate:
    def __init__(
        self,
        *,
        policy: Policy,
        audit: AuditSink,
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
        # In this process; the team server swaps in SharedRateLimiter (server/main.py) so replicas share them.
        self.limiter: RateLimiter | SharedRateLimiter = RateLimiter()
        # Its own buckets: writes never eat the read budget, nor reads the writes.
        self.read_limiter: RateLimiter | SharedRateLimiter = RateLimiter()
        self._in_flight = 0  # calls between decision and outcome: decides how records are appended
        # Calls running, by call id: tool, caller, start, and a read's decision record not yet written.
        self._open: dict[str, tuple[str, Caller, float, dict[str, Any] | None]] = {}
        self._client_caller: tuple[tuple[str | None, str | None, Caller], Caller] | None = None  # see with_client
        self._summary_of: dict[type[Any], bool] = {}  # result class -> gives an audit summary (_summarized)

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

    @property
    def tool_bounds(self) -> dict[str, frozenset[BoundName]]:
        """What each registered tool tells the policy's bounds (``ToolSpec.bounded``): the lint's view of them."""
        return {name: spec.bounded for name, spec in self._tools.items()}

    def verb_of(self, tool: str) -> str | None:
        spec = self._tools.get(tool)
        return spec.verb if spec else None

    def list_tools(self, principal: str | None = None, groups: tuple[str, ...] = ()) -> list[types.Tool]:
        """What this principal may call somewhere: a tool it can never call is noise for the assistant."""
        who = principal or self.caller.principal
        return [tool for tool in self._listing if self._offered(self._tools[tool.name], who, groups)]

    def _offered(self, spec: ToolSpec[Any, Any], principal: str, groups: tuple[str, ...] = ()) -> bool:
        if self.read_only and spec.verb == "write":
            return False
        if self.disable_destructive and spec.destructive:
            return False
        return self.policy.may_call_somewhere(principal, spec.name, spec.verb, namespaced=spec.namespaced,
                                              groups=groups)

    def decide(self, principal: str, namespace: str, tool: str, groups: tuple[str, ...] = ()) -> GateDecision:
        """The decision alone, for ``explain_access`` and for the call path."""
        verb = self.verb_of(tool) or "read"
        if self.read_only and verb == "write":
            return GateDecision(False, "denied: the server runs with --read-only; no tool may change anything")
        spec = self._tools.get(tool)
        if self.disable_destructive and spec is not None and spec.destructive:
            return GateDecision(False, "denied: the server runs with --disable-destructive")
        try:
            decision = self.policy.decide(principal, namespace, tool, verb, groups)
            via: tuple[Rule, ...] = ()
            rule = decision.rule
            if rule is not None:
                for subject in (principal, *groups):  # a token's group may hold the grant
                    via = via or self.policy.granted_via(subject, namespace, rule)
            return GateDecision.from_policy(decision, via)
        except Exception as exc:  # a policy that fails while deciding denies
            log.error("policy_error", error=repr(exc))
            return GateDecision(False, f"denied: policy error ({type(exc).__name__})")

    async def _decide_call(
        self, spec: ToolSpec[Any, Any], args: BaseModel, caller: Caller, namespace: str, ask: AskFn | None,
        *, confirmed: bool = False,
    ) -> GateDecision:
        """Casbin, then the allowing subject's bounds, then its rate limits, then the user's confirmation.

        A policy reloaded while the user was being asked decides again (Casbin and bounds; the user's
        yes stands, ``confirmed``, and the rate limit is not charged twice): a grant revoked meanwhile
        stops the call.
        """
        decision = self.decide(caller.principal, namespace, spec.name, caller.groups)
        if not decision.allowed:
            return decision
        bounds = self.policy.bounds_for(decision.subject)  # never None: some bounds hold for every subject
        if spec.bound_attrs is not None:
            attrs = spec.bound_attrs(args)
            if bounds.max_replicas_change is not None and spec.current_state is not None:
                attrs = attrs.but(await spec.current_state(args))  # the world now (tools/), only when asked
            decision = self.apply_bounds(decision, spec.told(attrs))
            if not decision.allowed:
                return decision
        if spec.verb == "write" and not confirmed:
            refusal = await _limited(self.limiter, caller.principal, decision.subject or "", bounds,
                                     "rate_limit_per_minute")
            if refusal is not None:
                return replace(decision, allowed=False, reason=f"denied by rate limit: {refusal}", bound=refusal)
        if spec.verb == "read" and spec.open_world and not confirmed:  # a read that reaches the cluster
            refusal = await _limited(self.read_limiter, caller.principal, decision.subject or "", bounds,
                                     "read_rate_limit_per_minute")
            if refusal is not None:
                return replace(decision, allowed=False, reason=f"denied by rate limit: {refusal}", bound=refusal)
        if spec.name in bounds.confirm and not confirmed:
            decision = await self._confirm(decision, spec, args, ask)
            if decision.allowed and decision.policy_hash != self.policy.hash:
                again = await self._decide_call(spec, args, caller, namespace, None, confirmed=True)
                note = "decided again: the policy changed while the user was being asked"
                return replace(again, reason=f"{again.reason} ({note})", confirmation="accepted")
        return decision

    async def _confirm(
        self, decision: GateDecision, spec: ToolSpec[Any, Any], args: BaseModel, ask: AskFn | None
    ) -> GateDecision:
        question = confirmation_question(spec.name, redact(args.model_dump(mode="json", exclude_none=True)))
        answer = "unsupported" if ask is None else await ask(question)
        if answer == "accept":
            return replace(decision, confirmation="accepted")
        reason = {
            "unsupported": "the policy asks the user to confirm this tool, and this client cannot ask",
            "decline": "the user declined",
            "cancel": "the user cancelled the confirmation",
        }.get(answer, "the confirmation failed")
        return replace(decision, allowed=False, reason=f"denied: {reason}", confirmation=answer)

    def apply_bounds(self, decision: GateDecision, attrs: BoundAttrs) -> GateDecision:
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

    def bounds_check(self, decision: GateDecision, spec: ToolSpec[Any, Any]) -> BoundsCheck:
        """The allowing subject's bounds as the call's tool sees them (CallContext.check_bounds).

        Taken at decision time, so a reload mid-call changes nothing; for state a tool reads before
        its write (the revision a rollback restores), checked by the same function as the gate's own
        and refused in the same words.
        """
        subject, bounds, source = decision.subject or "", self.policy.bounds_for(decision.subject), decision.source

        def check(attrs: BoundAttrs) -> str | None:
            reason = check_bounds(subject, bounds, spec.told(attrs))
            return None if reason is None else f"denied by bound: {reason} (the call was allowed by {source})"

        return check

    def with_client(self, name: str | None, version: str | None, base: Caller | None = None) -> Caller:
        """The caller with the client's self-reported name and version, capped and redacted once per session.

        ``clientInfo`` is the client's text: it lands in every decision record, so a megabyte name or a
        token pasted into it would be copied into each one (issue 15 item 6). ``base``: the request's own
        caller (a verified token's, over HTTP); else the process's.
        """
        c = base or self.caller
        key = (name, version, c)
        cached = self._client_caller
        if cached is not None and cached[0] == key:
            return cached[1]
        caller = Caller(c.principal, c.principal_source, c.os_user, client_text(name), client_text(version),
                        c.session_id, c.groups)
        self._client_caller = (key, caller)
        return caller

    async def call(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        caller: Caller,
        progress: ProgressFn | None = None,
        route: str = "tool",
        ask: AskFn | None = None,
    ) -> types.CallToolResult:
        return (await self.answer(name, arguments, caller, progress, route, ask)).tool_result()

    async def answer(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        caller: Caller,
        progress: ProgressFn | None = None,
        route: str = "tool",
        ask: AskFn | None = None,
    ) -> Answer:
        """A call through the gate, its answer not yet put on the wire (resources read the error as is)."""
        self._in_flight += 1
        try:
            with acting_for(ActingFor(caller.principal, caller.groups)):  # whom the cluster hears it is for
                if telemetry.ON:
                    return await self._traced_call(name, arguments, caller, progress, route, ask)
                return await self._call(name, arguments, caller, progress, route, ask)
        finally:
            self._in_flight -= 1

    async def _traced_call(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        caller: Caller,
        progress: ProgressFn | None,
        route: str,
        ask: AskFn | None,
    ) -> Answer:
        """The call in its ``execute_tool`` span, counted and timed. A name that is no tool of ours is the
        caller's text: it names neither a span nor a metric (``-``)."""
        tool = name if isinstance(name, str) and name in self._tools else "-"
        facts: dict[str, Any] = {}
        started = time.perf_counter()
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                      tnames.PRINCIPAL: caller.principal, "mcp.session.id": caller.session_id}
        token = _CALL_FACTS.set(facts)
        try:
            with telemetry.span(f"execute_tool {tool}" if tool != "-" else "execute_tool", attributes) as span:
                answer = await self._call(name, arguments, caller, progress, route, ask)
                outcome = facts.get("outcome") or (answer.error["code"] if answer.error is not None else "ok")
                if answer.error is not None:
                    telemetry.fail(span, str(answer.error["code"]))
        finally:
            _CALL_FACTS.reset(token)
        labels = {"gen_ai.tool.name": tool, tnames.DECISION: facts.get("decision", "-"), "opsgate.outcome": outcome}
        telemetry.add(telemetry.CALLS, 1, labels)
        duration = {"mcp.method.name": "tools/call", "gen_ai.tool.name": tool}
        if answer.error is not None:
            duration["error.type"] = str(answer.error["code"])
        telemetry.record(telemetry.CALL_DURATION, time.perf_counter() - started, duration)
        return answer

    async def _call(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        caller: Caller,
        progress: ProgressFn | None,
        route: str,
        ask: AskFn | None,
    ) -> Answer:
        call_id = os.urandom(16).hex()  # 128 random bits, as uuid4 gave, at a quarter of its cost
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
            return await self._invalid(call_id, caller, name, raw, validation_errors(exc, raw), bound)

        namespace = spec.namespace_of(args)
        with telemetry.span("opsgate.policy.decide"):
            decision = await self._decide_call(spec, args, caller, namespace, ask)
        record = decision_record(
            call_id=call_id, caller=caller, tool=name, verb=spec.verb, namespace=namespace,
            arguments=args.model_dump(mode="json"), decision=decision.record(), object_ref=spec.object_ref(args),
        )
        if decision.allowed and spec.verb == "read":  # one fsync for decision and outcome (audit/SCHEMA.md)
            return await self._run(spec, args, call_id, caller, started, progress, bound,
                                   self.bounds_check(decision, spec), record)
        if not await self._append(bound, record):
            return self._audit_refusal(call_id)
        if not decision.allowed:
            bound.info("call_denied", reason=decision.reason)
            denial = {"field": NO_FIELD, "rule": denial_rule(decision), "message": decision.reason}
            return Answer(error_envelope("denied", decision.reason, call_id, [denial], decision=decision.record()))

        return await self._run(spec, args, call_id, caller, started, progress, bound, self.bounds_check(decision, spec),
                               policy_rule=decision.rule)

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
        decided: dict[str, Any] | None = None,
        policy_rule: str | None = None,
    ) -> Answer:
        """Run an allowed call and write its outcome. ``decided``: a read's decision record, written with
        the outcome in one write and one fsync before anything of the result leaves (audit/SCHEMA.md)."""
        client = f"{caller.client_name}/{caller.client_version}" if caller.client_name else None
        context = CallContext(call_id=call_id, principal=caller.principal, client=client, report_progress=progress,
                              check_bounds=check_bounds, groups=caller.groups,
                              principal_source=caller.principal_source, policy_rule=policy_rule)
        result: BaseModel | None = None
        error: dict[str, Any] | None = None  # for the outcome record (audit/SCHEMA.md)
        envelope: dict[str, Any] | None = None  # for the caller (README "Errors")
        cancelled: BaseException | None = None
        self._open[call_id] = (spec.name, caller, started, decided)
        try:
            result = await spec.run(args, context)
        except anyio.get_cancelled_exc_class() as exc:  # the client cancelled: that is an outcome too
            cancelled = exc
            error = {"code": "cancelled", "message": "the client cancelled the call while it ran; what it "
                     "changed, if anything, is not known here (read the object again)"}
            envelope = error_envelope(error["code"], error["message"], call_id)
        except ToolError as exc:
            envelope = tool_error_envelope(exc, call_id)
            error = {"code": exc.code, "message": exc.message, "field": exc.field, "rule": exc.rule,
                     "http_status": envelope.get("http_status")}
            error = {k: v for k, v in error.items() if v is not None}
        except Exception as exc:  # never crash the server; the log keeps the traceback
            bound.exception("tool_crashed")
            error = {"code": "internal_error", "message": f"internal error in {spec.name} ({type(exc).__name__})"}
            envelope = error_envelope(error["code"], error["message"], call_id)
        duration_ms = (time.perf_counter() - started) * 1000
        outcome = outcome_record(
            call_id=call_id, caller=caller, tool=spec.name,
            status="ok" if error is None else "error", duration_ms=duration_ms, error=error,
            result=cast(AuditSummarized, result).audit_summary()
            if result is not None and self._summarized(type(result)) else None,
        )
        if self._open.pop(call_id, None) is None:  # a forced stop wrote this call's outcome (close_open_calls)
            if cancelled is not None:
                raise cancelled
            return Answer(error_envelope("cancelled", STOPPED, call_id))
        with anyio.CancelScope(shield=True):  # a cancel must not cut the record of what ran (issue 15 item 3)
            written = await (self._append(bound, outcome) if decided is None else self._append(bound, decided, outcome))
        if cancelled is not None:
            bound.info("call_cancelled", duration_ms=round(duration_ms, 3))
            raise cancelled
        if not written:
            unwritten = "its outcome" if decided is None else "its decision and outcome"
            return Answer(error_envelope(
                "audit_unavailable",
                f"the call ran but {unwritten} could not be written to the audit log; the result is withheld",
                call_id,
            ))
        if envelope is not None:
            bound.info("call_failed", code=envelope["code"], duration_ms=round(duration_ms, 3))
            return Answer(envelope)
        assert result is not None
        bound.debug("call_ok", duration_ms=round(duration_ms, 3))  # the outcome record has it; stderr is ops
        data = cap_strings(redact(result.model_dump(mode="json")))
        # The default text is the data as JSON, nulls left out: rendered from the one dump, not a second one.
        text = compact(without_none(data)) if spec.render is default_render else spec.render(result)
        return Answer(text=cap_text(redact_text(text)), data=data)  # a label, an image, the cluster's text

    def _summarized(self, kind: type[Any]) -> bool:
        """Whether results of this class give an audit summary: asked once per class, not per call (a
        runtime Protocol check walks the class's attributes every time)."""
        known = self._summary_of.get(kind)
        if known is None:
            known = self._summary_of[kind] = issubclass(kind, AuditSummarized)
        return known

    @property
    def calls_in_flight(self) -> int:
        return self._in_flight

    def close_open_calls(self) -> int:
        """For a forced stop: an outcome record for every call still running, so no decision that ran is left
        without one (issue 15 item 3). Their threads cannot be interrupted; the process ends without them.
        Runs on the event loop, like ``_run``'s own outcome append, so each call gets exactly one outcome."""
        closed = 0
        for call_id, (tool, caller, started, decided) in list(self._open.items()):
            del self._open[call_id]
            outcome = outcome_record(
                call_id=call_id, caller=caller, tool=tool, status="error",
                duration_ms=(time.perf_counter() - started) * 1000, error={"code": "cancelled", "message": STOPPED},
            )
            try:
                if decided is None:
                    self.audit.append(outcome)
                else:
                    self.audit.append_many((decided, outcome))  # a read's decision goes with its outcome
            except AuditWriteError as exc:
                log.error("audit_write_failed", stage="outcome", call_id=call_id, error=str(exc))
                continue
            closed += 1
        return closed

    async def _invalid(
        self,
        call_id: str,
        caller: Caller,
        tool: str,
        raw: Any,
        errors: list[dict[str, str]],
        bound: structlog.typing.FilteringBoundLogger,
    ) -> Answer:
        decision = {"effect": "invalid", "reason": "arguments rejected before any decision", "errors": errors}
        spec = self._tools.get(tool)
        namespace, object_ref = readable_target(raw, spec.object_kind if spec is not None else None)
        record = decision_record(
            call_id=call_id, caller=caller, tool=tool, verb=self.verb_of(tool) or "unknown",
            namespace=namespace, arguments=raw, decision=decision, object_ref=object_ref,
        )
        if not await self._append(bound, record):
            return self._audit_refusal(call_id)
        bound.info("call_invalid", fields=[e["field"] for e in errors])
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return Answer(error_envelope("invalid_arguments", summary, call_id, errors))

    async def _append(self, bound: structlog.typing.FilteringBoundLogger, *records: dict[str, Any]) -> bool:
        """Durable before it returns, several records in one write and one fsync. Alone, inline (a thread
        hop costs more than the fsync); with other calls in flight, in a worker thread, so they share one
        fsync (group commit) and none stalls the loop for the others."""
        if telemetry.ON:
            return await self._traced_append(bound, records)
        return await self._write(bound, records) is not None

    async def _write(
        self, bound: structlog.typing.FilteringBoundLogger, records: tuple[dict[str, Any], ...]
    ) -> list[dict[str, Any]] | None:
        try:
            if self._in_flight <= 1:
                return self.audit.append_many(records)
            return await anyio.to_thread.run_sync(self.audit.append_many, records)
        except AuditWriteError as exc:
            bound.error("audit_write_failed", error=str(exc), stage="+".join(str(r.get("stage")) for r in records))
            return None

    async def _traced_append(
        self, bound: structlog.typing.FilteringBoundLogger, records: tuple[dict[str, Any], ...]
    ) -> bool:
        """The append in its own span; each record gets the call span's ids (``trace``), the call span the
        record's call id, decision and seq, so a record and a trace find each other both ways."""
        call_span = telemetry.current()
        ids = telemetry.trace_ids()
        facts = _CALL_FACTS.get()
        for record in records:
            if ids is not None and record.get("call_id"):
                record["trace"] = ids
            call_span.set_attributes(call_facts(record, facts))
        started = time.perf_counter()
        with telemetry.span("opsgate.audit.append", {"opsgate.audit.records": len(records)}) as span:
            written = await self._write(bound, records)
            if written is None:
                telemetry.fail(span, "audit_unavailable")
            else:
                span.set_attribute(tnames.AUDIT_SEQ, written[-1]["seq"])
                first = next((r["seq"] for r in written if r.get("stage") == "decision"), None)
                if first is not None:
                    call_span.set_attribute(tnames.AUDIT_SEQ, first)
        telemetry.record(telemetry.AUDIT_APPEND_DURATION, time.perf_counter() - started,
                         {"opsgate.audit.ok": written is not None})
        return written is not None

    @staticmethod
    def _audit_refusal(call_id: str) -> Answer:
        return Answer(error_envelope(
            "audit_unavailable", "refused: the audit log cannot be written, so nothing was run", call_id
        ))


__all__ = ["Answer", "Gate", "GateDecision", "compact", "error_envelope", "error_of", "error_result"]
