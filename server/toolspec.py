"""What a tool is, as the gate sees it: typed arguments, typed result, a verb, hints.

A ``ToolSpec`` is data, not a registration: the only way a spec reaches a
client is through ``Gate``, which owns ``tools/list`` and ``tools/call``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import mcp_types as types
from pydantic import BaseModel

from opsgate.tools.context import CallContext

from .results import cap_strings

A = TypeVar("A", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

Verb = Literal["read", "write"]
# Asks the user a yes/no question through the client: "accept", "decline", "cancel" or "unsupported".
AskFn = Callable[[str], Awaitable[str]]


def _no_namespace(_: BaseModel) -> str:
    return "-"


def _compact_json(result: BaseModel) -> str:
    """The default text: the same data as the structured result, as JSON, strings capped like it."""
    data = cap_strings(result.model_dump(mode="json", exclude_none=True))
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ToolSpec(Generic[A, R]):
    name: str
    description: str
    args_model: type[A]
    result_model: type[R]
    run: Callable[[A, CallContext], Awaitable[R]]
    verb: Verb = "read"
    destructive: bool = False
    idempotent: bool = True
    open_world: bool = False
    # The Casbin domain of a call: its namespace, or "-" for tools that have none.
    namespace_of: Callable[[A], str] = field(default=_no_namespace)
    render: Callable[[R], str] = field(default=_compact_json)
    # The arguments policy bounds look at (replicas, image, ...); None when the tool has none.
    bound_attrs: Callable[[A], dict[str, Any]] | None = None
    # Reads what a bound needs from the world (current replicas); only called when a bound asks for it.
    current_state: Callable[[A], Awaitable[dict[str, Any]]] | None = None
    # The kind of object the tool acts on, for the audit record's object reference.
    object_kind: str | None = None
    # "resource": served as an MCP resource, not in tools/list nor callable by tools/call; still gated.
    route: Literal["tool", "resource"] = "tool"

    def object_ref(self, args: A) -> dict[str, Any] | None:
        """Who the call is about, as Kubernetes audit events name it: namespace, kind, name."""
        if self.object_kind is None:
            return None
        name = getattr(args, "name", None) or getattr(args, "model", None)
        kind = getattr(args, "kind", None) or self.object_kind  # scale/rollback act on either kind
        ref = {"kind": kind, "namespace": self.namespace_of(args), "name": name}
        return {k: v for k, v in ref.items() if v not in (None, "-")}

    @property
    def namespaced(self) -> bool:
        return self.namespace_of is not _no_namespace

    def mcp_tool(self) -> types.Tool:
        return types.Tool(
            name=self.name,
            description=self.description,
            input_schema=_schema(self.args_model),
            output_schema=_schema(self.result_model, drop=OUTPUT_SCHEMA_DROP),
            annotations=types.ToolAnnotations(
                read_only_hint=self.verb == "read",
                destructive_hint=self.destructive,
                idempotent_hint=self.idempotent,
                open_world_hint=self.open_world,
            ),
        )


# Outputs are produced by us, not typed by the assistant: their schema needs shape and types, not prose.
OUTPUT_SCHEMA_DROP = ("title", "description", "default", "additionalProperties")


def _schema(model: type[BaseModel], drop: tuple[str, ...] = ("title",)) -> dict[str, Any]:
    """Pydantic's schema, compacted: every byte here is paid on every tools/list.

    Titles repeat field names; output descriptions are for people reading code
    (the assistant learns a result from the result); ``anyOf [T, null]`` with a
    ``null`` default says no more than ``type: [T, "null"]``.
    """
    return _compact(model.model_json_schema(), drop)  # type: ignore[no-any-return]


def _compact(node: Any, drop: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_compact(v, drop) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _compact(v, drop) for k, v in node.items() if not (k in drop and not isinstance(v, dict))}
    if "default" in out and out["default"] is None:
        del out["default"]
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = options[0] if options[1] == {"type": "null"} else options[1]
        if isinstance(other.get("type"), str):
            del out["anyOf"]
            out = {**other, **out, "type": [other["type"], "null"]}
    return out
