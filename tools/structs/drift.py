"""Drift: where the live objects differ from what Git renders, field by field, and who changed each field. Pure.

Only the fields Git sets are compared: the API server and the controllers add defaults, status,
``metadata.uid``/``resourceVersion``/``generation``/``managedFields`` and annotations of their own,
none of which Git can know. Lists that the API merges by a key (containers and env by ``name``,
ports by ``containerPort``: the strategic merge keys of :mod:`.changes`) are compared entry by
entry; other lists as a whole. A resource quantity is compared by value ("0.5" is "500m").

Who changed a field is read from ``metadata.managedFields``: the managers whose ``fieldsV1`` hold
the field's path, the most recent first (``kubectl scale`` is ``kubectl``, on subresource ``scale``;
``kubectl set image`` is ``kubectl-set``; opsgate's own writes are ``opsgate``). Env values are
never shown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from .changes import MERGE_KEYS
from .diff import HIDDEN, HIDDEN_CHANGED
from .objects import CHANGE_CAUSE_ANNOTATION, meta, opsgate_call_of
from .ownership import Owner, ownership
from .quantities import parse_quantity

__all__ = ["FieldDrift", "ObjectDrift", "compare", "field_managers", "git_fields", "render_segments"]

Segment = str | tuple[str, Any]  # a map key, or a list entry named by its merge key and value
Path = tuple[Segment, ...]

_PLAIN: Final = re.compile(r"[A-Za-z0-9_-]+")
_METADATA_KEPT: Final = ("labels", "annotations")
FIELDS_MAX: Final = 50  # fields reported per object


class FieldDrift(BaseModel):
    """One field whose live value is not the one Git sets."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description='e.g. spec.template.spec.containers[name=web].image')
    git: Any = Field(default=None, description="What Git sets.")
    live: Any = Field(default=None, description="What the cluster holds; null: absent.")
    changed_by: list[str] = Field(default_factory=list, description="Field managers of it, latest first.")
    changed_at: str | None = Field(default=None, description="When the latest of them wrote to the object.")


class ObjectDrift(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    name: str
    state: Literal["drifted", "missing", "in-sync"] = Field(description="missing: in Git, not in the cluster")
    fields: list[FieldDrift] = Field(default_factory=list)
    owner: Owner | None = None
    change_cause: str | None = Field(default=None, description="The live object's kubernetes.io/change-cause.")
    opsgate_call_id: str | None = Field(default=None, description="When that names an opsgate call: its audit "
                                        "call id (opsgate audit show LOG ID).")


def render_segments(path: Sequence[Segment]) -> str:
    """``spec.template.spec.containers[name=web].image``; keys that are not plain words quoted."""
    text = ""
    for part in path:
        if isinstance(part, tuple):
            text += f"[{part[0]}={part[1]}]"
        elif _PLAIN.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += json.dumps([part])
    return text


def _walk(value: Any, path: Path, field: str | None) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _walk(inner, (*path, str(key)), str(key))
        return
    key = MERGE_KEYS.get(field or "")
    if isinstance(value, list) and key and value and all(isinstance(i, dict) and key in i for i in value):
        for item in value:
            entry = (*path, (key, item[key]))
            for inner_key, inner in item.items():
                if inner_key != key:
                    yield from _walk(inner, (*entry, inner_key), inner_key)
        return
    yield path, value


def git_fields(obj: Mapping[str, Any]) -> dict[Path, Any]:
    """Every leaf field Git sets on ``obj``: its spec, labels and annotations (not its name or namespace)."""
    out: dict[Path, Any] = {}
    m = meta(obj)
    for key in _METADATA_KEPT:
        if isinstance(m.get(key), dict):
            out.update(_walk(m[key], ("metadata", key), key))
    for key, value in obj.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            out.update(_walk(value, (key,), key))
    return out


_MISSING: Final = object()


def value_at(obj: Any, path: Path) -> Any:
    """The value at ``path`` in ``obj``, or a marker when it is absent."""
    cur = obj
    for part in path:
        if isinstance(part, tuple):
            key, wanted = part
            found = [i for i in cur if isinstance(i, dict) and i.get(key) == wanted] if isinstance(cur, list) else []
            if not found:
                return _MISSING
            cur = found[0]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


def _same(path: Path, git: Any, live: Any) -> bool:
    if git == live:
        return True
    if "resources" in path and isinstance(git, str | int | float) and isinstance(live, str | int | float):
        try:
            return parse_quantity(str(git)) == parse_quantity(str(live))
        except ValueError:
            return False
    if isinstance(git, str) != isinstance(live, str) and all(isinstance(v, str | int | float) for v in (git, live)):
        try:
            return Decimal(str(git)) == Decimal(str(live))  # YAML 80 and "80"
        except ArithmeticError:
            return False
    return False


def _fields_node(fields: Any, part: Segment) -> Any:
    """The ``fieldsV1`` node under ``part``: ``f:<key>``, or the ``k:{...}`` entry whose key holds the value."""
    if not isinstance(fields, dict):
        return None
    if not isinstance(part, tuple):
        return fields.get(f"f:{part}")
    key, wanted = part
    for name, node in fields.items():
        if name.startswith("k:"):
            try:
                ident = json.loads(name[2:])
            except ValueError:
                continue
            if isinstance(ident, dict) and ident.get(key) == wanted:
                return node
    return None


def field_managers(obj: Mapping[str, Any], path: Path) -> tuple[list[str], str | None]:
    """The managers that own ``path`` (status writes aside), latest first, and when the latest wrote."""
    owners: list[tuple[str, str]] = []
    for entry in meta(obj).get("managedFields") or ():
        if not isinstance(entry, dict) or entry.get("subresource") == "status":
            continue
        node: Any = entry.get("fieldsV1")
        for part in path:
            node = _fields_node(node, part)
            if node is None:
                break
        else:
            owners.append((str(entry.get("time") or ""), str(entry.get("manager") or "?")))
    owners.sort(reverse=True)
    names = list(dict.fromkeys(name for _, name in owners))
    return names, (owners[0][0] or None) if owners else None


def _shown(path: Path, git: Any, live: Any) -> tuple[Any, Any]:
    """Env values hidden: an env entry's ``value`` shows only that it differs."""
    if len(path) >= 2 and isinstance(path[-2], tuple) and "env" in path and path[-1] == "value":
        return HIDDEN, (None if live is _MISSING else HIDDEN_CHANGED)
    return git, None if live is _MISSING else live


def object_drift(git: Mapping[str, Any], live: Mapping[str, Any] | None) -> ObjectDrift:
    """How ``live`` differs from ``git`` (one object)."""
    kind, name = str(git.get("kind")), str(meta(git).get("name"))
    if live is None:
        return ObjectDrift(kind=kind, name=name, state="missing")
    fields: list[FieldDrift] = []
    for path, wanted in git_fields(git).items():
        have = value_at(live, path)
        if have is not _MISSING and _same(path, wanted, have):
            continue
        shown_git, shown_live = _shown(path, wanted, have)
        managers, when = field_managers(live, path)
        fields.append(FieldDrift(path=render_segments(path), git=shown_git, live=shown_live, changed_by=managers,
                                 changed_at=when))
    cause = (meta(live).get("annotations") or {}).get(CHANGE_CAUSE_ANNOTATION)
    cause = cause if isinstance(cause, str) else None
    return ObjectDrift(kind=kind, name=name, state="drifted" if fields else "in-sync", fields=fields[:FIELDS_MAX],
                       owner=ownership(live), change_cause=cause, opsgate_call_id=opsgate_call_of(cause))


def compare(rendered: Sequence[Mapping[str, Any]], live: Sequence[Mapping[str, Any]], namespace: str,
            kinds: Sequence[str], app: str | None = None) -> tuple[list[ObjectDrift], list[str]]:
    """Each object Git renders for ``namespace`` (of ``kinds``) against the live one, and the live objects Git
    does not render (``Kind/name``). With ``app`` (an Argo CD Application, a Flux Kustomization or HelmRelease),
    only its objects: those whose live object it owns, and those missing from the cluster."""

    def key(obj: Mapping[str, Any]) -> tuple[str, str]:
        return str(obj.get("kind")), str(meta(obj).get("name"))

    def in_scope(obj: Mapping[str, Any] | None) -> bool:
        owner = ownership(obj) if obj is not None else None
        return app is None or obj is None or (owner is not None and owner.name == app)

    by_key = {key(o): o for o in live if o.get("kind") in kinds}
    wanted = [g for g in rendered if g.get("kind") in kinds and meta(g).get("name")
              and (meta(g).get("namespace") or namespace) == namespace and in_scope(by_key.get(key(g)))]
    results = [object_drift(g, by_key.get(key(g))) for g in wanted]
    rendered_keys = {key(g) for g in rendered}
    only_live = sorted(f"{k}/{n}" for (k, n), o in by_key.items()
                       if (k, n) not in rendered_keys and (app is None or in_scope(o)))
    return results, only_live
