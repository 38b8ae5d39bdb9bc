"""The ``meta.k8s.io/v1`` Table form that ``kubectl get`` asks for (pure).

With it kubectl prints READY, UP-TO-DATE, AVAILABLE... like on a real
cluster; without it only NAME and AGE. Ages are rendered server-side with the
same rounding as ``k8s.io/apimachinery/pkg/util/duration.HumanDuration``.
"""

from __future__ import annotations

import calendar
import time
from typing import Any

from .resources import Column, ResourceType

JSON = dict[str, Any]

TABLE_CONTENT_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def human_duration(seconds: float) -> str:
    """``HumanDuration``: 45s, 3m20s, 15m, 5h10m, 3d4h, 2y..."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def parse_rfc3339(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def since(stamp: Any) -> str:
    """``translateTimestampSince``: how long ago, or ``<unknown>``."""
    when = parse_rfc3339(stamp)
    return "<unknown>" if when is None else human_duration(time.time() - when)


def age(obj: JSON) -> str:
    return since((obj.get("metadata") or {}).get("creationTimestamp"))


NAME_COLUMN = Column(
    "Name",
    "string",
    lambda o: (o.get("metadata") or {}).get("name", ""),
    "Name must be unique within a namespace.",
    format="name",
)
AGE_COLUMN = Column(
    "Age", "string", age, "CreationTimestamp is a timestamp representing the server time when this object was created."
)


def _row_object(obj: JSON, include_object: str) -> JSON | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def to_table(
    rt: ResourceType,
    objects: list[JSON],
    *,
    resource_version: str,
    continue_token: str = "",
    include_object: str = "Metadata",
    with_definitions: bool = True,
) -> JSON:
    """A Table with one row per object; ``include_object`` is Metadata (default), Object or None."""
    columns = [*([NAME_COLUMN] if rt.name_column else []), *(rt.columns or (AGE_COLUMN,))]
    rows = []
    for obj in objects:
        cells = []
        for col in columns:
            try:
                cells.append(col.cell(obj))
            except (KeyError, TypeError, ValueError, AttributeError):
                cells.append("<unknown>" if col.type == "string" else 0)
        row: JSON = {"cells": cells}
        row_obj = _row_object(obj, include_object)
        if row_obj is not None:
            row["object"] = row_obj
        rows.append(row)
    meta: JSON = {"resourceVersion": resource_version}
    if continue_token:
        meta["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": [c.definition() for c in columns] if with_definitions else [],
        "rows": rows,
    }
