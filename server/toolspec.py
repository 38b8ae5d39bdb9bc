"""What a tool is, as the gate sees it: typed arguments, typed result, a verb, hints.

A ``ToolSpec`` is data, not a registration: the only way a spec reaches a
client is through ``Gate``, which owns ``tools/list`` and ``tools/call``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import mcp_types as types
from pydantic import BaseModel

from opsgate.policies import BoundAttrs, BoundName
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
    # What a call tells the policy's bounds, from its arguments (replicas, images, ...); None when nothing.
    bound_attrs: Callable[[A], BoundAttrs] | None = None
    # Reads what a bound needs from the world (current replicas, in tools/); only called when a bound asks.
    current_state: Callable[[A], Awaitable[BoundAttrs]] | None = None
    # Every BoundAttrs field the tool ever tells: from bound_attrs, current_state, and the state it checks on
    # the read that guards its write (CallContext.check_bounds). The lint reads it to know which bounds can
    # reach this tool; the gate refuses to pass on a field not declared here, so the two cannot drift.
    bounded: frozenset[BoundName] = frozenset()
    # The kind of object the tool acts on, for the audit record's object reference.
    object_kind: str | None = None
    # The kind a call is about when its arguments choose it (scale, rollback, list_workloads): set by the
    # catalog, which also picks the tool path by it; None means object_kind.
    kind_of: Callable[[A], str] | None = None
    # The object a call names, for the same reference (its name argument; infer: the model); None: no name.
    name_of: Callable[[A], str] | None = None
    # "resource": served as an MCP resource, not in tools/list nor callable by tools/call; still gated.
    route: Literal["tool", "resource"] = "tool"
    # The input schema computed at build time (catalog: tool_schemas.json, held to the models by a drift
    # test), so listing a tool neither imports its module nor asks pydantic for a schema; None: computed.
    schema: Mapping[str, Any] | None = None

    def told(self, attrs: BoundAttrs) -> BoundAttrs:
        """``attrs``, once checked to hold only fields this spec declares in ``bounded``."""
        undeclared = attrs.given() - self.bounded
        if undeclared:
            raise RuntimeError(f"tool {self.name} tells the policy {sorted(undeclared)}, which its spec does not "
                               "declare in ToolSpec.bounded")
        return attrs

    def object_ref(self, args: A) -> dict[str, Any] | None:
        """Who the call is about, as Kubernetes audit events name it: namespace, kind, name."""
        if self.object_kind is None:
            return None
        name = self.name_of(args) if self.name_of is not None else None
        kind = self.kind_of(args) if self.kind_of is not None else self.object_kind
        ref = {"kind": kind, "namespace": self.namespace_of(args), "name": name}
        return {k: v for k, v in ref.items() if v not in (None, "-")}

    @property
    def namespaced(self) -> bool:
        return self.namespace_of is not _no_namespace

    def mcp_tool(self) -> types.Tool:
        """The tools/list entry: no outputSchema (strict clients validate results, errors too, against it;
        results still carry structuredContent and its JSON text), and only the hints that differ from
        the spec's defaults."""
        return types.Tool(
            name=self.name,
            description=self.description,
            input_schema=dict(self.schema) if self.schema is not None else input_schema(self.args_model),
            annotations=hints(self.verb == "read", self.destructive, self.idempotent, self.open_world),
        )


class DeferredModel:
    """A tool's pydantic model, named by module and class and imported on its first use (a call's
    validation), so serving starts without importing every tool module. Anything asked of it
    (``model_validate``, ``model_json_schema``, ...) is asked of the real class."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        self._model: type[BaseModel] | None = None

    def resolve(self) -> type[BaseModel]:
        model = self._model
        if model is None:  # the import system makes concurrent first uses safe: each gets the one class
            model = self._model = getattr(importlib.import_module(self.module), self.name)
        return model

    def model_validate(self, obj: Any, **kwargs: Any) -> BaseModel:
        return self.resolve().model_validate(obj, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):  # copy/pickle probes, and our own fields before __init__ set them
            raise AttributeError(attr)
        return getattr(self.resolve(), attr)

    def __repr__(self) -> str:
        return f"DeferredModel({self.module}.{self.name})"


def deferred(module: str, name: str) -> Any:
    """``module.name``, a pydantic model class, imported on first use (see DeferredModel); typed Any
    because it stands where a model class is expected."""
    return DeferredModel(module, name)


def deferred_function(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, a function, imported on its first call (in the worker thread that runs the tool)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = name
    return call


def model_class(model: Any) -> type[BaseModel]:
    """The real class behind a spec's ``args_model`` or ``result_model``, deferred or not."""
    return model.resolve() if isinstance(model, DeferredModel) else model


def hints(read_only: bool, destructive: bool, idempotent: bool, open_world: bool) -> types.ToolAnnotations | None:
    """The hints that differ from the MCP defaults (readOnly false, destructive true, idempotent false,
    openWorld true); destructive and idempotent mean nothing for a read-only tool, so they are left out."""
    given = types.ToolAnnotations(
        read_only_hint=True if read_only else None,
        destructive_hint=False if not read_only and not destructive else None,
        idempotent_hint=True if not read_only and idempotent else None,
        open_world_hint=False if not open_world else None,
    )
    return given if given.model_dump(exclude_none=True) else None


# Keywords whose value is one schema, a list of schemas, or a map of name to schema.
_ONE_SCHEMA = ("items", "additionalProperties", "not", "contains", "propertyNames")
_SCHEMA_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAP = ("properties", "patternProperties", "$defs", "definitions")
# Annotations for people reading the schema, not for the agent filling it in.
_DROP = ("title", "writeOnly")
_NULL = {"type": "null"}


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Pydantic's schema, made portable and lean: every byte here is paid on every tools/list.

    ``$ref`` inlined, optional means "not in required" (the ``null`` branch pydantic adds for
    ``X | None`` is dropped; the model still accepts an explicit null), titles and null defaults
    dropped, ``const`` as a one-value enum. ``additionalProperties: false`` is dropped too: the
    models still refuse an unknown field, and the error names it. What this cannot fix (an untyped
    value) is left for ``portability_problems`` to report.
    """
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})
    return _portable(raw, defs)  # type: ignore[no-any-return]


def _portable(node: Any, defs: dict[str, Any], inlining: frozenset[str] = frozenset()) -> Any:
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        if ref in inlining:
            return node  # a recursive model cannot be inlined: its $ref stays, for portability_problems to name
        inlining = inlining | {ref}
        # A nested model's docstring is for code readers; the field's own description (if any) is kept.
        target = {k: v for k, v in defs[ref.removeprefix("#/$defs/")].items() if k != "description"}
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None) or (key == "additionalProperties" and value is False):
            continue
        if key in _ONE_SCHEMA:
            out[key] = _portable(value, defs, inlining)
        elif key in _SCHEMA_LIST and isinstance(value, list):
            out[key] = [_portable(v, defs, inlining) for v in value]
        elif key in _SCHEMA_MAP and isinstance(value, dict):
            out[key] = {name: _portable(v, defs, inlining) for name, v in value.items()}
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    options = out.get("anyOf")
    if isinstance(options, list) and _NULL in options:
        rest = [o for o in options if o != _NULL]
        del out["anyOf"]
        if len(rest) == 1:
            out = {**rest[0], **out}
        else:
            out["anyOf"] = rest
    return out


def portability_problems(schema: Any) -> list[str]:
    """What makes a tool's input schema unportable or wasteful, one sentence each, with its JSON path.

    The rules: the root is an object; every schema has one real type (a string ``type``, an ``enum``,
    or an ``anyOf`` of differently typed shapes); optional means "not in required", never a ``null``
    type; no ``$ref``/``$defs``; no titles. Empty, true-valued or untyped schemas count as untyped.
    """
    problems: list[str] = []
    if not isinstance(schema, dict) or schema.get("type") != "object":
        problems.append("$: the root must be {\"type\": \"object\", ...}")
    _check(schema, "$", problems)
    return problems


def _check(node: Any, path: str, problems: list[str]) -> None:
    if node is True or node == {}:
        problems.append(f"{path}: empty schema (any value); give it a real type")
        return
    if not isinstance(node, dict):
        problems.append(f"{path}: not a schema object")
        return
    for key in ("$ref", "$defs", "definitions"):
        if key in node:
            problems.append(f"{path}: {key} (inline the definition)")
    if "title" in node:
        problems.append(f"{path}: title (repeats the property name)")
    kind = node.get("type")
    if isinstance(kind, list):
        problems.append(f"{path}: type array {kind} (one type; optional means not in required)")
    elif kind == "null":
        problems.append(f"{path}: null type (optional means not in required)")
    elif kind is None and not any(k in node for k in ("anyOf", "oneOf", "enum", "const")):
        problems.append(f"{path}: no type (give it a real type)")
    if "allOf" in node:
        problems.append(f"{path}: allOf (merge it into one schema)")
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if options is None:
            continue
        if not isinstance(options, list) or len(options) < 2:
            problems.append(f"{path}: {key} with fewer than two shapes")
            continue
        kinds = [o.get("type") if isinstance(o, dict) else None for o in options]
        if "null" in kinds:
            problems.append(f"{path}: {key} with a null branch (optional means not in required)")
        if None in kinds or len(set(map(str, kinds))) < len(kinds):
            problems.append(f"{path}: {key} whose shapes share a type (one schema would do)")
    required = node.get("required", [])
    properties = node.get("properties", {})
    for name in required if isinstance(required, list) else []:
        if name not in properties:
            problems.append(f"{path}: required {name!r} is not a property")
    for key, value in node.items():
        if key in _ONE_SCHEMA and not (key == "additionalProperties" and value is False):
            _check(value, f"{path}.{key}", problems)
        elif key in _SCHEMA_LIST and isinstance(value, list):
            for i, option in enumerate(value):
                _check(option, f"{path}.{key}[{i}]", problems)
        elif key in _SCHEMA_MAP and isinstance(value, dict):
            for name, sub in value.items():
                _check(sub, f"{path}.{name}" if key == "properties" else f"{path}.{key}.{name}", problems)
