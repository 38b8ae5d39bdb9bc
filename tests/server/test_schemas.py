"""Issue 14: input schemas that every MCP client reads the same way, and a tools/list within budget.

The listings come from a real ``opsgate serve`` through the SDK's stdio client, as a client sees them.
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from opsgate.server.catalog import tool_verbs
from opsgate.server.toolspec import hints, input_schema, portability_problems
from opsgate.tools.kserve import DeployModelArgs, KServeInferArgs
from opsgate.tools.listing import ListWorkloadsArgs
from opsgate.tools.workload_types import RollbackArgs, ScaleArgs
from opsgate.tools.workloads import DeployArgs
from tests.harness import serve, shipped_policy

pytestmark = pytest.mark.anyio

# The issue's budget for tools/list (compact JSON of the tools array).
ADMIN_BUDGET = 10 * 1024
VIEWER_BUDGET = 6 * 1024
# The MCP spec's values for a hint that is not given.
SPEC_DEFAULTS = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False, "openWorldHint": True}


async def listing(tmp_path: Path, principal: str, *policy_lines: str) -> list[dict[str, Any]]:
    policy = shipped_policy(tmp_path / "policy", *policy_lines)
    async with serve(tmp_path, "--principal", principal, "--policy", str(policy)) as s:
        tools = (await s.session.list_tools()).tools
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]


def compact_size(tools: list[dict[str, Any]]) -> int:
    return len(json.dumps(tools, separators=(",", ":"), ensure_ascii=False).encode())


def hint_values(tool: dict[str, Any]) -> dict[str, bool]:
    """What a client following the spec understands from a tool's annotations."""
    return {**SPEC_DEFAULTS, **tool.get("annotations", {})}


def assert_portable(tools: list[dict[str, Any]]) -> None:
    for tool in tools:
        assert "outputSchema" not in tool, tool["name"]
        assert portability_problems(tool["inputSchema"]) == [], tool["name"]
        assert len(tool["description"]) >= 40, tool["name"]  # still says what it does and when


async def test_admin_listing_is_portable_and_within_budget(tmp_path: Path) -> None:
    tools = await listing(tmp_path, "ada", "g, ada, role:admin, *")
    verbs = tool_verbs()
    assert {t["name"] for t in tools} == {name for name in verbs if name != "audit_log"}  # every tool
    assert_portable(tools)
    assert compact_size(tools) <= ADMIN_BUDGET, {t["name"]: compact_size([t]) for t in tools}
    # Annotations leave out what the spec's defaults already say, and still say the same thing.
    by_name = {t["name"]: hint_values(t) for t in tools}
    for name, hint in by_name.items():
        assert hint["readOnlyHint"] is (verbs[name] == "read"), name
    assert by_name["infer"]["openWorldHint"] is False and by_name["list_workloads"]["openWorldHint"] is True
    assert by_name["deploy"]["destructiveHint"] is True and by_name["deploy"]["idempotentHint"] is True
    assert by_name["rollback"]["destructiveHint"] is True and by_name["rollback"]["idempotentHint"] is False


async def test_viewer_listing_is_portable_and_within_budget(tmp_path: Path) -> None:
    tools = await listing(tmp_path, "vic")  # the shipped policy: everyone is a viewer
    verbs = tool_verbs()
    assert {t["name"] for t in tools} == {n for n, v in verbs.items() if v == "read" and n != "audit_log"}
    assert_portable(tools)
    assert compact_size(tools) <= VIEWER_BUDGET, {t["name"]: compact_size([t]) for t in tools}


def test_hints_keep_their_meaning_under_the_spec_defaults() -> None:
    for read_only, destructive, idempotent, open_world in product((True, False), repeat=4):
        given = hints(read_only, destructive, idempotent, open_world)
        got = hint_values({"annotations": given.model_dump(by_alias=True, exclude_none=True)} if given else {})
        assert got["readOnlyHint"] is read_only and got["openWorldHint"] is open_world
        if not read_only:  # the spec: destructive and idempotent mean something only for a tool that writes
            assert got["destructiveHint"] is destructive and got["idempotentHint"] is idempotent


GOOD: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 63},
        "kind": {"type": "string", "enum": ["a", "b"]},
        "inputs": {"anyOf": [{"type": "object", "additionalProperties": {"type": "array"}},
                             {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}}]},
    },
    "required": ["name"],
}


def with_property(schema: dict[str, Any]) -> dict[str, Any]:
    return {**GOOD, "properties": {**GOOD["properties"], "x": schema}}


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (with_property({"type": ["string", "null"]}), "$.x: type array"),
        (with_property({"type": "null"}), "$.x: null type"),
        (with_property({}), "$.x: empty schema"),
        (with_property({"type": "object", "additionalProperties": True}), "$.x.additionalProperties: empty schema"),
        (with_property({"type": "array", "items": {}}), "$.x.items: empty schema"),
        (with_property({"description": "anything"}), "$.x: no type"),
        (with_property({"$ref": "#/$defs/Thing"}), "$.x: $ref"),
        ({**GOOD, "$defs": {"Thing": {"type": "string"}}}, "$: $defs"),
        (with_property({"anyOf": [{"type": "string"}, {"type": "null"}]}), "$.x: anyOf with a null branch"),
        (with_property({"anyOf": [{"type": "integer"}]}), "$.x: anyOf with fewer than two shapes"),
        (with_property({"anyOf": [{"type": "string", "maxLength": 3}, {"type": "string", "pattern": "^a"}]}),
         "$.x: anyOf whose shapes share a type"),
        (with_property({"allOf": [{"type": "string"}]}), "$.x: allOf"),
        (with_property({"type": "string", "title": "X"}), "$.x: title"),
        ({**GOOD, "type": "array"}, "$: the root must be"),
        ({**GOOD, "required": ["name", "ghost"]}, "$: required 'ghost' is not a property"),
    ],
)
def test_the_checker_catches_each_rule(schema: dict[str, Any], expected: str) -> None:
    assert portability_problems(GOOD) == []
    problems = portability_problems(schema)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_property_named_like_a_keyword_is_not_a_problem() -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "type": {"type": "string"}}}
    assert portability_problems(schema) == []


def test_optional_fields_still_take_an_explicit_null() -> None:
    """The schemas say optional by leaving a field out of required; a client that sends null is not refused."""
    ListWorkloadsArgs.model_validate({"namespace": "d", "kind": None, "cursor": None})
    DeployArgs.model_validate({"name": "web", "namespace": "d", "image": "nginx:1", "replicas": None, "env": None,
                               "ports": None, "labels": None,
                               "resources": {"requests": None, "limits": {"cpu": None, "memory": "1Gi"}}})
    ScaleArgs.model_validate({"name": "web", "namespace": "d", "replicas": 2, "min_replicas": None,
                              "max_replicas": None, "scale_target": None, "scale_metric": None})
    RollbackArgs.model_validate({"name": "web", "namespace": "d", "to_revision": None})
    DeployModelArgs.model_validate({"name": "iris", "namespace": "d", "storage_uri": None, "runtime": None,
                                    "protocol_version": None, "canary_traffic_percent": None})
    KServeInferArgs.model_validate({"name": "iris", "namespace": "d", "inputs": {"x": [[1.0]]}, "protocol": None,
                                    "url": None})


class Inner(BaseModel):
    """A docstring for code readers."""

    size: int | None = Field(default=None, ge=0, description="how big")


class Outer(BaseModel):
    name: str
    inner: Inner | None = Field(default=None, description="nested")
    kind: Literal["one"] = "one"
    anything: Any = None


class Tree(BaseModel):
    children: list[Tree] = []


def test_input_schema_inlines_drops_null_and_leaves_untyped_values_for_the_checker() -> None:
    schema = input_schema(Outer)
    assert schema["required"] == ["name"]
    assert schema["properties"]["inner"] == {
        "type": "object", "description": "nested",
        "properties": {"size": {"type": "integer", "minimum": 0, "description": "how big"}},
    }
    assert schema["properties"]["kind"] == {"type": "string", "enum": ["one"], "default": "one"}
    assert portability_problems(schema) == ["$.anything: empty schema (any value); give it a real type"]
    recursive = input_schema(Tree)  # cannot be inlined: the $ref stays, and the checker names it
    assert any("$ref" in p for p in portability_problems(recursive))
