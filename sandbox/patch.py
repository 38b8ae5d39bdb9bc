"""The three patch formats clients send (pure functions over JSON values).

- JSON merge patch (RFC 7386): ``kubectl scale`` on ``/scale``, custom objects.
- Strategic merge patch: the Python client's ``patch_*`` with a dict body,
  ``kubectl patch`` by default. Like the real one, lists named in the type's
  merge-key table (containers and env by ``name``, container ports by
  ``containerPort``, conditions by ``type``...) are merged element by element,
  other lists are replaced; the directives ``$patch`` (replace/delete/merge),
  ``$retainKeys``, ``$deleteFromPrimitiveList/<f>`` and ``$setElementOrder/<f>``
  are honoured. The merge keys are looked up by field name, not by full schema.
- JSON patch (RFC 6902): the Python client with a list body, ``kubectl
  rollout undo``.

Errors are ``ApiError``: 400 for a malformed patch document, 422 for a patch
that does not apply (a failed ``test``, a missing path), as the API server does:
a bare 422 whose message does not say which operation failed.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

from .errors import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def patch_failed(message: str) -> ApiError:
    """A JSON patch that does not apply (a failed ``test``, a missing path), answered as kube-apiserver does.

    Its patch handler wraps any apply error in ``NewGenericServerResponse(422, ...)`` without causes:
    reason Invalid, one generic sentence, the patch library's own text (``message`` here) dropped.
    So a client cannot tell a failed ``test`` from other 422s by the answer alone.
    """
    del message  # kept at the call sites for readers; the real server does not send it
    return ApiError(422, "Invalid", "the server rejected our request due to an error in our request")


# --- RFC 7386 -----------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge patch ----------------------------------------------------------------------

_DELETE_FROM = "$deleteFromPrimitiveList/"
_SET_ORDER = "$setElementOrder/"


def strategic_merge(
    original: Any,
    patch: Any,
    merge_keys: Mapping[str, str],
    primitive_sets: Collection[str] = (),
) -> Any:
    """Apply a strategic merge patch to ``original`` (a JSON object)."""
    if not isinstance(patch, dict):
        raise bad_request("strategic merge patch must be a JSON object")
    result = _merge_map(original if isinstance(original, dict) else {}, patch, merge_keys, primitive_sets)
    return {} if result is None else result


def _merge_map(
    original: dict[str, Any],
    patch: dict[str, Any],
    keys: Mapping[str, str],
    sets: Collection[str],
) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return _merge_map({}, {k: v for k, v in patch.items() if k != "$patch"}, keys, sets)
    if directive not in (None, "merge"):
        raise bad_request(f"Unknown patch type: {directive}")
    result = copy.deepcopy(original)
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith(_SET_ORDER):
            if isinstance(value, list):
                orders[key[len(_SET_ORDER):]] = value
            continue
        if key.startswith(_DELETE_FROM):
            field = key[len(_DELETE_FROM):]
            current = result.get(field)
            if isinstance(current, list) and isinstance(value, list):
                result[field] = [item for item in current if item not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = _merge_map(
                result[key] if isinstance(result.get(key), dict) else {}, value, keys, sets
            )
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value, keys, sets)
        else:
            result[key] = copy.deepcopy(value)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _apply_order(result[field], order, keys.get(field))
    return result


def _merge_list(
    field: str,
    original: Any,
    patch: list[Any],
    keys: Mapping[str, str],
    sets: Collection[str],
) -> list[Any]:
    replace = any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch)
    items = [item for item in patch if not (isinstance(item, dict) and item.get("$patch") == "replace")]
    current = copy.deepcopy(original) if isinstance(original, list) and not replace else []
    merge_key = keys.get(field)
    if merge_key is not None and all(isinstance(item, dict) for item in items):
        for item in items:
            if merge_key not in item:
                raise bad_request(f"map: {item} does not contain declared merge key: {merge_key}")
            index = next(
                (i for i, cur in enumerate(current) if isinstance(cur, dict) and cur.get(merge_key) == item[merge_key]),
                None,
            )
            if item.get("$patch") == "delete":
                if index is not None:
                    current.pop(index)
                continue
            if index is None:
                current.append(_merge_map({}, item, keys, sets) or {})
            else:
                current[index] = _merge_map(current[index], item, keys, sets) or {}
        return current
    if field in sets and not replace:
        for item in items:
            if item not in current:
                current.append(copy.deepcopy(item))
        return current
    return [
        (_merge_map({}, item, keys, sets) or {}) if isinstance(item, dict) else copy.deepcopy(item) for item in items
    ]


def _apply_order(items: list[Any], order: list[Any], merge_key: str | None) -> list[Any]:
    """Order items as ``$setElementOrder`` says; items it does not name keep their place at the end."""

    def ident(item: Any) -> Any:
        return item.get(merge_key) if merge_key and isinstance(item, dict) else item

    wanted = [ident(o) for o in order]
    ranked = sorted(
        enumerate(items),
        key=lambda pair: (wanted.index(ident(pair[1])) if ident(pair[1]) in wanted else len(wanted), pair[0]),
    )
    return [item for _, item in ranked]


# --- RFC 6902 -----------------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise bad_request(f"invalid JSON pointer: {path!r}")
    if path == "":
        return []
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise patch_failed(f"invalid array index {token!r} in {path}")
    idx = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if idx > limit:
        raise patch_failed(f"array index {idx} out of bounds in {path}")
    return idx


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for token in parts[:-1]:
        if isinstance(cur, dict):
            if token not in cur:
                raise patch_failed(f"doc is missing path: {path!r}: missing value")
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(cur, token, path, allow_end=False)]
        else:
            raise patch_failed(f"doc is missing path: {path!r}: missing value")
    return cur


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    token = parts[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise patch_failed(f"doc is missing path: {path!r}: missing value")
        return parent[token]
    if isinstance(parent, list):
        return parent[_index(parent, token, path, allow_end=False)]
    raise patch_failed(f"doc is missing path: {path!r}: missing value")


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    token = parts[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, path, allow_end=True), value)
    else:
        raise patch_failed(f"doc is missing path: {path!r}: missing value")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise patch_failed("cannot remove the whole document")
    parent = _parent(doc, parts, path)
    token = parts[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise patch_failed(f"unable to remove nonexistent key: {token}: missing value")
        del parent[token]
    elif isinstance(parent, list):
        parent.pop(_index(parent, token, path, allow_end=False))
    else:
        raise patch_failed(f"doc is missing path: {path!r}: missing value")
    return doc


def json_patch(document: Any, operations: Any) -> Any:
    """Apply RFC 6902 operations in order to a copy of ``document``; all or nothing."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a JSON array of operations")
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise bad_request(f"invalid JSON patch operation: {op!r}")
        kind = op["op"]
        path = op.get("path")
        if not isinstance(path, str):
            raise bad_request(f"operation {kind!r} is missing a path")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise bad_request(f"operation {kind!r} on {path} is missing a value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            if _pointer(path):
                doc = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise bad_request(f"operation {kind!r} on {path} is missing 'from'")
            value = copy.deepcopy(_get(doc, source))
            if kind == "move":
                if path.startswith(source + "/"):
                    raise patch_failed(f"cannot move {source} into its own child {path}")
                doc = _remove(doc, source)
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise patch_failed(f"testing value {path} failed: test failed")
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return doc
