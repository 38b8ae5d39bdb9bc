"""The MCP edge: a low-level SDK ``Server`` whose only tool handlers are the gate's.

We use the low-level server rather than ``MCPServer`` on purpose: ``MCPServer``
validates arguments before any handler of ours runs, so a bad call would never
be audited. Here ``tools/list`` and ``tools/call`` belong to the gate alone.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from opsgate import telemetry
from opsgate.telemetry.names import PRINCIPAL
from opsgate.tools.context import ProgressFn

from .access import OWN_RECORDS_URI
from .gate import Gate
from .records import Caller
from .toolspec import AskFn

# The ASGI scope key server/http.py puts a request's verified caller under (here so stdio never imports http).
CALLER_KEY = "opsgate.caller"

INSTRUCTIONS = (
    "opsgate operates Kubernetes workloads and ONNX models for the user. Every call is checked "
    "against a Casbin policy and recorded in an audit log. Call whoami first to see what you may do; "
    "a denied call names the rule that denied it."
)


def _client_of(ctx: ServerRequestContext[Any]) -> tuple[str | None, str | None]:
    params = ctx.session.client_params
    if params is None:
        return None, None
    return params.client_info.name, params.client_info.version


def request_attributes(caller: Caller) -> dict[str, str]:
    """What opsgate adds to the SDK's request span: the session (MCP conventions) and the principal."""
    return {"mcp.session.id": caller.session_id, PRINCIPAL: caller.principal}


def request_caller(ctx: ServerRequestContext[Any]) -> Caller | None:
    """Over HTTP with OAuth, the caller the request's verified token names (server/http.py puts it in the
    request's ASGI scope); None over stdio, where the process's caller acts."""
    scope = getattr(ctx.request, "scope", None)
    caller = scope.get(CALLER_KEY) if isinstance(scope, dict) else None
    return caller if isinstance(caller, Caller) else None


def caller_of(gate: Gate, ctx: ServerRequestContext[Any]) -> Caller:
    """Who a request is for, with its client's self-reported name and version."""
    return gate.with_client(*_client_of(ctx), base=request_caller(ctx))


class OurToolNamesOnly:
    """The MCP SDK's span of each request (its ``OpenTelemetryMiddleware``) shown ``-`` for a tool name that is
    none of ours: such a name is the caller's text, of any length, perhaps a pasted secret, and would name an
    exported span. The handler still gets the request as sent (and the gate refuses and audits it)."""

    def __init__(self, inner: ServerMiddleware[Any], known: frozenset[str]) -> None:
        self.inner = inner
        self.known = known

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        name = ctx.params.get("name") if ctx.params is not None else None
        if not isinstance(name, str) or name in self.known:
            return await self.inner(ctx, call_next)
        shown = replace(ctx, params={**ctx.params, "name": "-"} if ctx.params is not None else None)
        return await self.inner(shown, lambda _shown: call_next(ctx))


CONFIRM_SCHEMA = {
    "type": "object",
    "properties": {"confirm": {"type": "boolean", "title": "Allow this call?"}},
    "required": ["confirm"],
}


def _asker(ctx: ServerRequestContext[Any]) -> AskFn | None:
    """A yes/no question to the user, or None when the client declared no elicitation support."""
    capabilities = ctx.session.client_capabilities
    if capabilities is None or capabilities.elicitation is None:
        return None

    async def ask(question: str) -> str:
        try:
            answer = await ctx.session.elicit_form(question, CONFIRM_SCHEMA, related_request_id=ctx.request_id)
        except Exception:  # the client failed to answer: that is not a yes
            return "cancel"
        if answer.action == "accept" and (answer.content or {}).get("confirm") is not True:
            return "decline"
        return answer.action

    return ask


def build_server(gate: Gate, *, version: str) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller = request_caller(ctx) or gate.caller
        return types.ListToolsResult(tools=gate.list_tools(caller.principal, caller.groups))

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = caller_of(gate, ctx)
        if telemetry.ON:  # the MCP SDK's span of this request (its parent: the caller's _meta.traceparent)
            telemetry.current().set_attributes(request_attributes(caller))
        progress: ProgressFn = ctx.session.report_progress
        return await gate.call(params.name, params.arguments, caller, progress, ask=_asker(ctx))

    async def list_resources(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        caller = request_caller(ctx) or gate.caller
        if not gate.decide(caller.principal, "-", "audit_log", caller.groups).allowed:
            return types.ListResourcesResult(resources=[])
        return types.ListResourcesResult(resources=[
            types.Resource(uri=OWN_RECORDS_URI, name="my-audit-records", mime_type="application/json",
                           description="Your own recent audit records: what you asked, what was decided, how it ended"),
        ])

    async def read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        """Through the gate like a tool call: decided, audited, and refused when the policy says so."""
        if str(params.uri) != OWN_RECORDS_URI:
            raise MCPError(code=types.INVALID_PARAMS, message=f"no resource {params.uri}")
        answer = await gate.answer("audit_log", {}, caller_of(gate, ctx), route="resource")
        if answer.error is not None:  # the same envelope a tool error carries (README "Errors")
            raise MCPError(code=types.INVALID_REQUEST, message=str(answer.error["message"]), data=answer.error)
        text = json.dumps(answer.data, separators=(",", ":"))
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=OWN_RECORDS_URI, text=text, mime_type="application/json")]
        )

    server: Server[Any] = Server(
        "opsgate",
        version=version,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )
    if telemetry.ON:  # the SDK's request spans are exported now: they may name only our tools
        known = frozenset(gate.tool_names)
        server.middleware = [OurToolNamesOnly(m, known) if type(m).__name__ == "OpenTelemetryMiddleware" else m
                             for m in server.middleware]
    else:  # its spans would go nowhere: a no-op span, attributes and a context lookup per request (~15 us)
        server.middleware = [m for m in server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
    return server
