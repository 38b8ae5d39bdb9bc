"""The no-op tool the in-process gate figures register: the gate's cost is what a call of it adds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from opsgate.server.toolspec import ToolSpec
    from opsgate.tools.context import CallContext


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ok(BaseModel):
    ok: bool = True


async def noop(_: NoArgs, ctx: CallContext) -> Ok:
    return Ok()


def noop_spec() -> ToolSpec[NoArgs, Ok]:
    """``noop`` as the gate registers a tool."""
    from opsgate.server.toolspec import ToolSpec

    return ToolSpec(name="noop", description="", args_model=NoArgs, result_model=Ok, run=noop)
