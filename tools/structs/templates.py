"""Pod template equality as the Deployment controller sees it: hash label stripped, quantities normalized."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .objects import HASH_LABEL, JSON, meta
from .quantities import parse_quantity


def strip_hash(template: Mapping[str, Any] | None) -> JSON:
    """A deep copy of the template without the ``pod-template-hash`` label (and no emptied label map)."""
    out: JSON = copy.deepcopy(dict(template or {}))
    labels = meta(out).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
        if not labels:
            del out["metadata"]["labels"]
    return out


def _quantities(amounts: Mapping[str, Any]) -> JSON:
    out: JSON = {}
    for k, v in amounts.items():
        try:
            out[k] = parse_quantity(v) if isinstance(v, str) else v
        except ValueError:
            out[k] = v
    return out


def normalize(value: Any, key: str | None = None) -> Any:
    """Drop map entries that are null, {} or [] and compare quantities by value ("1000m" == "1"),
    as Go's ``Semantic.DeepEqual`` does."""
    if isinstance(value, dict):
        if key in ("limits", "requests") and all(isinstance(v, str) for v in value.values()):
            value = _quantities(value)
        out = {}
        for k, v in value.items():
            n = normalize(v, k)
            if n is None or n == {} or n == []:
                continue
            out[k] = n
        return out
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def templates_equal(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """kubectl's ``EqualIgnoreHash``: pod templates equal apart from ``pod-template-hash``."""
    return bool(normalize(strip_hash(a)) == normalize(strip_hash(b)))
