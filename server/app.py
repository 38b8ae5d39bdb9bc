"""The MCP edge: a low-level SDK ``Server`` whose only tool handlers are the gate's.

We use the low-level server rather than ``MCPServer`` on purpose: ``MCPServer``
validates arguments before any handler of ours runs, so a bad call would never
be audited. Here ``tools/list`` and ``tools/call`` belong to the gate alone.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from opsgate.tools.context import ProgressFn

from .gate import Gate

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


def build_server(gate: Gate, *, version: str) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=gate.list_tools(gate.caller.principal))

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = gate.with_client(*_client_of(ctx))
        progress: ProgressFn = ctx.session.report_progress
        return await gate.call(params.name, params.arguments, caller, progress)

    return Server(
        "opsgate",
        version=version,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
