"""The gate's own tools (``whoami``, ``explain_access``, the caller's audit records): the gate describing itself.

They live beside the gate, not in ``tools/``, because what they report is the
gate's own state (identity, policy, mode); they still run through the gate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from opsgate.audit.sink import AuditSink, sink_location
from opsgate.policies import BoundAttrs
from opsgate.policies.bounds import check_bounds
from opsgate.tools.context import CallContext
from opsgate.tools.inline import at_once_or_in_thread
from opsgate.tools.structs.ownership import Owner, owner_text
from opsgate.vocab.kinds import DEPLOYMENT, INFERENCE_SERVICE
from opsgate.vocab.names import DNS1123_LABEL, dns1123_problem

from .cluster import cluster_text
from .toolspec import ToolSpec

if TYPE_CHECKING:
    from .gate import Gate

OWN_RECORDS_URI = "opsgate://audit/mine"
# How far back from the end of the live log the resource looks: recent means recent, and reads stay cheap.
TAIL_BYTES = 1 << 20
NAMESPACE_PATTERN = rf"^(-|{DNS1123_LABEL})$"  # a namespace, or "-" for tools that take none; length: max_length


class WhoamiArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Grant(BaseModel):
    effect: str = Field(description="allow or deny")
    namespaces: str = Field(description="where this grant holds for you: the rule's namespace pattern narrowed by "
                            "the role assignments that give it ('*' = all, '-' = tools without a namespace)")
    tools: str = Field(description="tool name or pattern")
    verb: str = Field(description="read, write or *")
    via: str = Field(description="the subject or role the rule names")
    source: str = Field(description="policy file and line")
    granted_by: list[str] = Field(default_factory=list, description="the g lines (file:line) that give you the "
                                  "rule's subject, yours first; empty when the rule names you or role:everyone")


class WhoamiResult(BaseModel):
    principal: str
    principal_source: str = Field(description="config (--principal), cluster (its SelfSubjectReview), os-user, "
                                  "or oauth (a verified token, over HTTP)")
    os_user: str
    client: str | None = Field(description="the MCP client's self-reported name/version (recorded, not trusted)")
    read_only: bool
    grants: list[Grant]
    tools: list[str] = Field(description="every tool this server offers")
    policy_hash: str
    protected_namespaces: list[str] = Field(description="writes there need a rule that names the namespace itself")
    bounds: str = Field(default="", description="which bounds file applies, if any, and the protected namespaces")
    audit_log: str
    cluster: dict[str, Any] | None = Field(
        default=None, description="the cluster the Kubernetes tools use; sandbox=true means the built-in one"
    )


def _object_name(value: str) -> str:
    why = dns1123_problem(value, "subdomain")
    if why is not None:
        raise PydanticCustomError("dns1123_subdomain", why)
    return value


class ExplainAccessArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: str = Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$", description="e.g. 'deploy'")
    namespace: str = Field(
        default="-", max_length=63, pattern=NAMESPACE_PATTERN, description="'-' for tools that take none",
    )
    name: Annotated[str, AfterValidator(_object_name)] | None = Field(
        default=None, description="Also say who owns this object.")


class ExplainAccessResult(BaseModel):
    tool: str
    namespace: str
    verb: str
    allowed: bool
    reason: str = Field(description="one sentence naming the rule that decided")
    rule: str | None = None
    source: str | None = Field(default=None, description="policy file and line of the rule")
    policy_hash: str | None = None
    owner: Owner | None = Field(default=None, description="Who applies the object from Git; its direct writes are "
                                "refused unless allow_gitops_owned_writes")
    allowed_in: list[str] | None = Field(default=None, description="when denied: the namespace patterns where this "
                                         "call would be allowed for you (empty: nowhere)")


class OwnRecordsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=50, ge=1, le=200)


class OwnRecordsResult(BaseModel):
    principal: str
    records: list[dict[str, Any]] = Field(description="newest last; decision and outcome records of this principal")


def own_records(sink: AuditSink, principal: str, limit: int) -> list[dict[str, Any]]:
    """The principal's own recent call records, read backwards (file segments or table rows) within a byte budget."""
    from opsgate.audit.sink import recent_records

    def mine(record: dict[str, Any]) -> bool:
        return record.get("principal") == principal and "call_id" in record

    return recent_records(sink, mine, limit, max_bytes=TAIL_BYTES)


def access_tools(
    gate_of: Callable[[], Gate], cluster: Callable[[], Mapping[str, Any]] | None = None,
    owner_of: Callable[[str, str, str, CallContext], Owner | None] | None = None,
) -> list[ToolSpec[Any, Any]]:
    """The gate's own tools. ``gate_of`` names the gate they describe when they run: the gate is built from
    a policy checked against these very specs, so it does not exist yet when they are made."""

    async def whoami(_: WhoamiArgs, ctx: CallContext) -> WhoamiResult:
        gate = gate_of()
        caller = gate.caller
        grants = [
            Grant(
                effect=g.rule.fields[4], namespaces=g.namespaces, tools=g.rule.fields[2], verb=g.rule.fields[3],
                via=g.rule.fields[0], source=g.rule.source, granted_by=[link.source for link in g.via],
            )
            for g in dict.fromkeys(  # the principal's own grants, then its token's groups' (once each)
                grant for subject in (ctx.principal, *ctx.groups) for grant in gate.policy.effective_grants(subject)
            )
        ]
        return WhoamiResult(
            principal=ctx.principal,
            principal_source=ctx.principal_source or caller.principal_source,
            os_user=caller.os_user,
            client=ctx.client,
            read_only=gate.read_only,
            grants=grants,
            tools=gate.tool_names,
            policy_hash=gate.policy.hash,
            protected_namespaces=list(gate.policy.protected),
            bounds=gate.policy.bounds_note(),
            audit_log=sink_location(gate.audit),
            cluster=dict(await at_once_or_in_thread(cluster)) if cluster is not None else None,  # no hop once started
        )

    async def explain_access(args: ExplainAccessArgs, ctx: CallContext) -> ExplainAccessResult:
        from opsgate.tools.errors import ToolError

        gate = gate_of()
        verb = gate.verb_of(args.tool)
        if verb is None:
            raise ToolError(
                f"no tool named {args.tool!r}; tools: {', '.join(gate.tool_names)}",
                code="invalid_arguments", field="tool", rule="unknown-tool",
            )
        d = gate.decide(ctx.principal, args.namespace, args.tool, ctx.groups)
        # Only for the policy's own denials (a --read-only refusal has no policy hash): where it would allow.
        policy_denied = not d.allowed and d.policy_hash is not None and args.namespace != "-"
        where = gate.policy.allowed_in(ctx.principal, args.tool, verb) if policy_denied else None
        reason, owner = d.reason, None
        if args.name is not None and owner_of is not None and args.namespace != "-":
            kind = INFERENCE_SERVICE if args.tool in ("deploy_model", "model_status") else DEPLOYMENT
            owner = await anyio.to_thread.run_sync(owner_of, kind, args.namespace, args.name, ctx)
            if owner is not None and owner.certain and d.allowed and verb == "write":
                bounds = gate.policy.bounds_for(d.subject)
                held = check_bounds(d.subject or "", bounds, BoundAttrs(gitops_owned=True)) is None
                reason += (f"; {args.name} is reconciled by {owner_text(owner)} from Git: a direct write is "
                           + ("allowed as an override (allow_gitops_owned_writes)" if held else
                              "refused (gitops-owned): change it in Git, or use gitops mode"))
        return ExplainAccessResult(
            tool=args.tool, namespace=args.namespace, verb=verb, allowed=d.allowed, reason=reason,
            rule=d.rule, source=d.source, policy_hash=d.policy_hash, allowed_in=where, owner=owner,
        )

    async def audit_log(args: OwnRecordsArgs, ctx: CallContext) -> OwnRecordsResult:
        records = await anyio.to_thread.run_sync(own_records, gate_of().audit, ctx.principal, args.limit)
        return OwnRecordsResult(principal=ctx.principal, records=records)

    def render_whoami(r: WhoamiResult) -> str:
        """Sentences, not a dict repr: the same facts as the structured result, for clients that show text."""
        mode = "read-only: tools that change something are refused" if r.read_only else "read-write"
        lines = [f"principal {r.principal} ({r.principal_source}), OS user {r.os_user}; {mode}"]
        if r.cluster is not None:
            lines.append(f"cluster: {cluster_text(r.cluster)}")
        lines.append(f"policy sha256 {r.policy_hash[:12]}; protected namespaces: "
                     f"{', '.join(r.protected_namespaces) or 'none'}")
        lines.append("grants:" if r.grants else "grants: none")
        lines += [f"  {g.effect} {g.verb} {g.tools} in {g.namespaces} via {g.via} [{g.source}]" for g in r.grants]
        lines.append(f"audit log: {r.audit_log}")
        return "\n".join(lines)

    def render_explain(r: ExplainAccessResult) -> str:
        return f"{'ALLOWED' if r.allowed else 'DENIED'}: {r.tool} ({r.verb}) in {r.namespace}: {r.reason}"

    specs: list[ToolSpec[Any, Any]] = [
        ToolSpec(
            name="whoami",
            description="Who you act as, what the policy grants you per namespace, and the server's mode. "
            "Call first.",
            args_model=WhoamiArgs, result_model=WhoamiResult, run=whoami, render=render_whoami,
        ),
        ToolSpec(
            name="explain_access",
            description="Would this tool be allowed in this namespace, and by which policy rule? Ask before a "
            "write or after a denial.",
            args_model=ExplainAccessArgs, result_model=ExplainAccessResult, run=explain_access,
            render=render_explain,
        ),
        ToolSpec(
            name="audit_log",
            description="Your own recent audit records (decisions and outcomes), newest last.",
            args_model=OwnRecordsArgs, result_model=OwnRecordsResult, run=audit_log, route="resource",
        ),
    ]
    return specs
