"""A custom resource through its CRD's structural schema, as the API server handles it (pure).

In the API server's order: ``prune`` drops fields the schema does not know
(unless ``x-kubernetes-preserve-unknown-fields``) and nulls of fields that are
not ``nullable``; ``default`` fills the schema's ``default`` values where a
field is missing; ``validate`` checks types, ``required``, ``enum``,
``pattern``, lengths, item counts and bounds, and words each finding as
apiextensions-apiserver does (``spec.predictor.canaryTrafficPercent: Invalid
value: 150: spec.predictor.canaryTrafficPercent in body should be less than or
equal to 100``). ``apiVersion``, ``kind`` and ``metadata`` are the API
server's own, not the schema's, and are left alone.

Not done: ``x-kubernetes-validations`` (CEL; KServe's CRD has none),
``format`` checks (date-time, int32 ranges), ``oneOf``/``allOf``/``not``
(``anyOf`` only as it comes with ``x-kubernetes-int-or-string``), list-type
uniqueness (``x-kubernetes-list-type: set``/``map``), and ratcheting of
unchanged invalid fields on update.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .errors import Cause
from .validation import fmt_value, not_supported, required

JSON = dict[str, Any]

_OWN_FIELDS = ("apiVersion", "kind", "metadata")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _is_type(value: Any, wanted: str) -> bool:
    actual = _json_type(value)
    if wanted == "number":
        return actual in ("integer", "number")
    if wanted == "integer":
        return actual == "integer" or (actual == "number" and float(value).is_integer())
    return actual == wanted


def _shown(value: Any) -> str:
    """The value in a finding: scalars as Go prints them, containers by their JSON type."""
    return _json_type(value) if isinstance(value, (dict, list)) else fmt_value(value)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- pruning and defaulting ----------------------------------------------------------------------


def prune(value: Any, schema: JSON, *, top: bool = True) -> Any:
    """``value`` without what ``schema`` does not know, and without nulls that may not be null."""
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        out: JSON = {}
        for key, item in value.items():
            if top and key in _OWN_FIELDS:
                out[key] = item
                continue
            sub = props.get(key) if isinstance(props, dict) else None
            if sub is None and isinstance(extra, dict):
                sub = extra
            if sub is None:
                if keep_unknown:
                    out[key] = item
                continue
            if item is None and not sub.get("nullable"):
                continue
            out[key] = prune(item, sub, top=False)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"], top=False) for item in value]
    return value


def default(value: Any, schema: JSON, *, top: bool = True) -> Any:
    """Fill the schema's defaults where a field is missing (inside objects that are there)."""
    if isinstance(value, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            for key, sub in props.items():
                if top and key in _OWN_FIELDS:
                    continue
                if key not in value and isinstance(sub, dict) and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    value[key] = default(value[key], sub, top=False)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in [k for k in value if not (isinstance(props, dict) and k in props)]:
                value[key] = default(value[key], extra, top=False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [default(item, schema["items"], top=False) for item in value]
    return value


# --- validation -------------------------------------------------------------------------------------


def _number(bound: Any) -> str:
    return str(int(bound)) if isinstance(bound, float) and bound.is_integer() else str(bound)


def _bounds(value: Any, schema: JSON, path: str) -> list[Cause]:
    causes: list[Cause] = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and (value <= low if schema.get("exclusiveMinimum") else value < low):
            word = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
            causes.append(Cause(path, f"Invalid value: {fmt_value(value)}: {path} in body should be {word} "
                                f"{_number(low)}"))
        if high is not None and (value >= high if schema.get("exclusiveMaximum") else value > high):
            word = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
            causes.append(Cause(path, f"Invalid value: {fmt_value(value)}: {path} in body should be {word} "
                                f"{_number(high)}"))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append(Cause(path, f"Too long: may not be more than {schema['maxLength']} bytes",
                                "FieldValueTooLong"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(Cause(path, f"Invalid value: {fmt_value(value)}: {path} in body should be at least "
                                f"{schema['minLength']} chars long"))
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            causes.append(Cause(path, f"Invalid value: {fmt_value(value)}: {path} in body should match "
                                f"'{pattern}'"))
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(Cause(path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                                "FieldValueTooMany"))
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(Cause(path, f"Invalid value: {_shown(value)}: {path} in body should have at least "
                                f"{schema['minItems']} items"))
    return causes


def validate(value: Any, schema: JSON, path: str = "", *, top: bool = True) -> list[Cause]:
    """The schema's findings about ``value`` (already pruned and defaulted), with field paths."""
    if value is None and schema.get("nullable"):
        return []
    if schema.get("x-kubernetes-int-or-string"):
        if not (_is_type(value, "integer") or isinstance(value, str)):
            return [Cause(path, f"Invalid value: {_shown(value)}: {path} in body must be of type "
                          f"int-or-string: \"{_json_type(value)}\"", "FieldValueTypeInvalid")]
        return _bounds(value, schema, path)
    wanted = schema.get("type")
    if isinstance(wanted, str) and not _is_type(value, wanted):
        return [Cause(path, f"Invalid value: {_shown(value)}: {path} in body must be of type {wanted}: "
                      f"\"{_json_type(value)}\"", "FieldValueTypeInvalid")]
    causes: list[Cause] = []
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        causes.append(not_supported(path, value, [str(e) for e in enum]))
    causes += _bounds(value, schema, path)
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for name in schema.get("required") or []:
            if name not in value and not (top and name in _OWN_FIELDS):
                causes.append(required(_child(path, name)))
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if top and key in _OWN_FIELDS:
                continue
            sub = props.get(key) if props else None
            if sub is None and isinstance(extra, dict):
                sub = extra
            if isinstance(sub, dict):
                causes += validate(item, sub, _child(path, key), top=False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            causes += validate(item, schema["items"], f"{path}[{index}]", top=False)
    return causes
