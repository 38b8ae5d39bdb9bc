"""Server-side apply and ``managedFields`` (pure functions over JSON values).

Follows the API server's field manager (k8s.io/apiserver ``fieldmanager``) and
kubernetes-sigs/structured-merge-diff (``merge.Updater``), which it wraps:

- A *field set* is the set of paths a manager owns. A path is a tuple of
  elements written as in ``fieldsV1``: ``f:<field>``, ``k:<key JSON>`` (an item
  of an associative list, e.g. ``k:{"name":"nginx"}``), ``v:<value JSON>`` (an
  item of a set list). Leaves are members; so are list items, empty maps and
  nulls, and whole atomic lists and maps (``selector``, ``args``...).
- **Apply** (``application/apply-patch+yaml``): the applied configuration is
  merged into the live object (maps by key, associative lists by their keys,
  set lists as sets, everything else replaced). Fields another manager owns
  whose *value changes* are conflicts: 409 unless ``force``, which moves them
  to the applier. The applier then owns exactly the fields of its
  configuration; fields it applied last time and left out now are removed
  from the object unless another manager owns them (or something under them).
- **Update** (create, PUT, the other patches, ``scale``): the manager takes the
  fields that were added or changed, others lose them (updates never
  conflict), and every manager loses the fields that were removed.

Which lists are associative (and by which keys), sets or atomic, and which
maps are atomic, is a ``Schema``: for custom resources their CRD's
``openAPIV3Schema`` (``OpenAPISchema``: KServe's InferenceService, whose
``containers`` are atomic lists), for the built-in kinds a table by field
name (``LIST_MAP_KEYS``, ``SET_LISTS``, ``ATOMIC``) rather than each kind's
full OpenAPI. Not done: version conversion (one version per kind is
served), union (``oneOf``) normalisation, the cap of ten Update managers
merged into ``ancient-changes``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

JSON = dict[str, Any]
Path = tuple[str, ...]
FieldSet = frozenset[Path]

APPLY: Final = "Apply"
UPDATE: Final = "Update"

#: Associative lists (``x-kubernetes-list-type: map``) by field name -> their key fields, with the
#: keys' defaults (a port without ``protocol`` is the TCP one). ``ports`` depends on where it is.
LIST_MAP_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "volumes": ("name",),
    "imagePullSecrets": ("name",),
    "hostAliases": ("ip",),
    "resourceClaims": ("name",),
    "schedulingGates": ("name",),
    "resizePolicy": ("resourceName",),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
}
CONTAINER_PORT_KEYS: Final = ("containerPort", "protocol")
SERVICE_PORT_KEYS: Final = ("port", "protocol")
KEY_DEFAULTS: Final[Mapping[str, Any]] = {"protocol": "TCP"}
_CONTAINER_LISTS: Final = frozenset({"containers", "initContainers", "ephemeralContainers"})

#: Lists of scalars merged as sets (``x-kubernetes-list-type: set``).
SET_LISTS: Final = frozenset({"finalizers"})

#: Maps owned and replaced whole (``x-kubernetes-map-type: atomic`` / ``structType=atomic``).
ATOMIC: Final = frozenset(
    {"selector", "fieldRef", "resourceFieldRef", "secretKeyRef", "configMapKeyRef", "labelSelector",
     "namespaceSelector", "nodeSelectorTerms", "matchExpressions"}
)

#: Paths no manager owns: the server's own metadata (``stripmeta`` in the field manager).
IGNORED: Final[FieldSet] = frozenset(
    {("f:apiVersion",), ("f:kind",)}
    | {("f:metadata", f"f:{name}") for name in (
        "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "selfLink",
        "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds")}
)

_MISSING: Final = object()


class ApplyConflict(Exception):
    """Fields of other managers an apply would change: ``conflicts`` is (manager entry, path) pairs."""

    def __init__(self, conflicts: list[tuple[Manager, Path]]) -> None:
        self.conflicts = conflicts
        super().__init__(conflict_message(conflicts))


# --- schema -------------------------------------------------------------------------------------


class Schema:
    """How the list or map at a path (its field names from the root; list items add none) merges.

    This default is the built-in types' table by field name (``LIST_MAP_KEYS``, ``SET_LISTS``, ``ATOMIC``).
    """

    def list_kind(self, fields: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """("map", keys), ("set", ()) or ("atomic", ())."""
        name = fields[-1] if fields else ""
        if name == "ports":
            inside_container = len(fields) >= 2 and fields[-2] in _CONTAINER_LISTS
            return "map", CONTAINER_PORT_KEYS if inside_container else SERVICE_PORT_KEYS
        if name in LIST_MAP_KEYS:
            return "map", LIST_MAP_KEYS[name]
        if name in SET_LISTS:
            return "set", ()
        return "atomic", ()

    def atomic_map(self, fields: tuple[str, ...]) -> bool:
        return bool(fields) and fields[-1] in ATOMIC


class OpenAPISchema(Schema):
    """A custom resource's ``openAPIV3Schema``: ``x-kubernetes-list-type``/``-list-map-keys``/``-map-type``
    decide; a list without ``x-kubernetes-list-type`` (or outside the schema) is atomic, as the API server
    treats a CRD's lists. ``metadata`` is the built-in ObjectMeta, so it falls back to the table."""

    def __init__(self, root: JSON) -> None:
        self.root = root
        self._cache: dict[tuple[str, ...], JSON | None] = {}

    def _node(self, fields: tuple[str, ...]) -> JSON | None:
        if fields not in self._cache:
            node: Any = self.root
            for name in fields:
                if isinstance(node, dict) and node.get("type") == "array":
                    node = node.get("items")
                if not isinstance(node, dict):
                    node = None
                    break
                props = node.get("properties")
                extra = node.get("additionalProperties")
                node = props.get(name) if isinstance(props, dict) and name in props else (
                    extra if isinstance(extra, dict) else None)
            self._cache[fields] = node if isinstance(node, dict) else None
        return self._cache[fields]

    def list_kind(self, fields: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        if fields[:1] == ("metadata",):
            return super().list_kind(fields)
        node = self._node(fields) or {}
        list_type = node.get("x-kubernetes-list-type")
        if list_type == "map":
            return "map", tuple(str(k) for k in node.get("x-kubernetes-list-map-keys") or ())
        if list_type == "set":
            return "set", ()
        return "atomic", ()

    def atomic_map(self, fields: tuple[str, ...]) -> bool:
        if fields[:1] == ("metadata",):
            return super().atomic_map(fields)
        node = self._node(fields) or {}
        return node.get("x-kubernetes-map-type") == "atomic"


NAMES: Final = Schema()


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _item_element(kind: str, keys: tuple[str, ...], item: Any, index: int) -> str:
    """The path element of a list item: ``k:{...}`` by its keys, ``v:...`` by value, ``i:N`` otherwise."""
    if kind == "map" and isinstance(item, dict):
        present = {k: item.get(k, KEY_DEFAULTS.get(k)) for k in keys}
        return "k:" + _compact({k: v for k, v in present.items() if v is not None})
    if kind == "set":
        return "v:" + _compact(item)
    return f"i:{index}"


# --- field sets ---------------------------------------------------------------------------------


def _walk(schema: Schema, value: Any, path: Path, fields: tuple[str, ...]) -> Iterator[Path]:
    if isinstance(value, dict):
        if schema.atomic_map(fields):
            yield path
            return
        for key, child in value.items():
            child_path = (*path, f"f:{key}")
            yield from _walk(schema, child, child_path, (*fields, key))
            if child is None or child == {}:
                yield child_path
        return
    if isinstance(value, list):
        kind, keys = schema.list_kind(fields)
        if kind == "atomic":
            yield path
            return
        for index, item in enumerate(value):
            item_path = (*path, _item_element(kind, keys, item, index))
            yield item_path
            if kind == "map":
                yield from _walk(schema, item, item_path, fields)
        return
    yield path


def _ignored(path: Path, ignored: FieldSet) -> bool:
    return any(path[: len(prefix)] == prefix for prefix in ignored)


def field_set(obj: JSON, ignored: FieldSet = IGNORED, schema: Schema | None = None) -> FieldSet:
    """The fields an applied configuration sets (``TypedValue.ToFieldSet``), without the ignored ones."""
    return frozenset(p for p in _walk(schema or NAMES, obj, (), ()) if p and not _ignored(p, ignored))


def to_fields_v1(paths: Iterable[Path]) -> JSON:
    """A field set in the ``fieldsV1`` notation: members with children carry a ``.`` entry."""
    members = set(paths)
    tree: JSON = {}
    for path in sorted(members):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    def mark(node: JSON, prefix: Path) -> None:
        for element, child in node.items():
            here = (*prefix, element)
            mark(child, here)
            if child and here in members:
                child["."] = {}
    mark(tree, ())
    return _sorted_tree(tree)


def _sorted_tree(node: JSON) -> JSON:
    """Children in the order the API server writes them: ``.`` first, then by element."""
    return {k: _sorted_tree(node[k]) for k in sorted(node, key=lambda k: (k != ".", k))}


def from_fields_v1(tree: Any, prefix: Path = ()) -> FieldSet:
    """The paths of a ``fieldsV1`` value; malformed parts are skipped."""
    out: set[Path] = set()
    if not isinstance(tree, dict):
        return frozenset()
    for element, child in tree.items():
        if element == ".":
            if prefix:
                out.add(prefix)
            continue
        here = (*prefix, str(element))
        if not isinstance(child, dict) or not child:
            out.add(here)
        else:
            out |= from_fields_v1(child, here)
    return frozenset(out)


def path_string(path: Path) -> str:
    """A path as conflict messages print it: ``.spec.template.spec.containers[name="nginx"].image``."""
    parts = []
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            parts.append("." + rest)
        elif kind == "k":
            try:
                keys = json.loads(rest)
            except ValueError:
                keys = {}
            parts.append("[" + ",".join(f"{k}={_compact(v)}" for k, v in sorted(keys.items())) + "]")
        elif kind == "v":
            parts.append(f"[={rest}]")
        else:
            parts.append(f"[{rest}]")
    return "".join(parts)


# --- compare and merge --------------------------------------------------------------------------


@dataclass
class Comparison:
    added: set[Path] = field(default_factory=set)
    modified: set[Path] = field(default_factory=set)
    removed: set[Path] = field(default_factory=set)

    def changed(self) -> set[Path]:
        return self.added | self.modified


def _keyed(value: list[Any], kind: str, keys: tuple[str, ...]) -> dict[str, Any]:
    return {_item_element(kind, keys, item, i): item for i, item in enumerate(value)}


def _compare(schema: Schema, lhs: Any, rhs: Any, path: Path, fields: tuple[str, ...], out: Comparison) -> None:
    if lhs is _MISSING and rhs is _MISSING:
        return
    maps = [v for v in (lhs, rhs) if v is not _MISSING]
    if all(isinstance(v, dict) for v in maps) and not schema.atomic_map(fields) and any(maps):
        left = lhs if isinstance(lhs, dict) else {}
        right = rhs if isinstance(rhs, dict) else {}
        for key in {**left, **right}:
            _compare(schema, left.get(key, _MISSING), right.get(key, _MISSING), (*path, f"f:{key}"), (*fields, key),
                     out)
        _structure(lhs, rhs, path, out)
        return
    lists = [v for v in (lhs, rhs) if v is not _MISSING]
    kind, keys = schema.list_kind(fields)
    if all(isinstance(v, list) for v in lists) and kind != "atomic" and any(lists):
        left_items = _keyed(lhs, kind, keys) if isinstance(lhs, list) else {}
        right_items = _keyed(rhs, kind, keys) if isinstance(rhs, list) else {}
        for element in {**left_items, **right_items}:
            item_path = (*path, element)
            if kind == "set":
                _leaf(left_items.get(element, _MISSING), right_items.get(element, _MISSING), item_path, out)
            else:
                _compare(schema, left_items.get(element, _MISSING), right_items.get(element, _MISSING), item_path,
                         fields, out)
        _structure(lhs, rhs, path, out)
        return
    if lhs is not _MISSING and rhs is not _MISSING and type(lhs) is not type(rhs) and (
        isinstance(lhs, dict | list) or isinstance(rhs, dict | list)
    ):
        _compare(schema, lhs, _MISSING, path, fields, out)
        _compare(schema, _MISSING, rhs, path, fields, out)
        return
    _leaf(lhs, rhs, path, out)


def _structure(lhs: Any, rhs: Any, path: Path, out: Comparison) -> None:
    """A map or list that appeared or went away is itself added or removed (not the root)."""
    if not path:
        return
    if lhs is _MISSING:
        out.added.add(path)
    elif rhs is _MISSING:
        out.removed.add(path)


def _leaf(lhs: Any, rhs: Any, path: Path, out: Comparison) -> None:
    if not path:
        return
    if lhs is _MISSING:
        out.added.add(path)
    elif rhs is _MISSING:
        out.removed.add(path)
    elif lhs != rhs:
        out.modified.add(path)


def compare(old: JSON, new: JSON, ignored: FieldSet = IGNORED, schema: Schema | None = None) -> Comparison:
    """What changed from ``old`` to ``new``, path by path (``TypedValue.Compare``)."""
    out = Comparison()
    _compare(schema or NAMES, old, new, (), (), out)
    for paths in (out.added, out.modified, out.removed):
        paths.difference_update({p for p in paths if _ignored(p, ignored)})
    return out


def merge(live: Any, config: Any, schema: Schema | None = None, fields: tuple[str, ...] = ()) -> Any:
    """``live`` with ``config`` merged in (``TypedValue.Merge``): maps by key, associative lists by their
    keys (live order, new items appended), set lists as sets, atomic values and scalars replaced."""
    schema = schema or NAMES
    if isinstance(config, dict) and isinstance(live, dict) and not schema.atomic_map(fields):
        out = copy.deepcopy(live)
        for key, value in config.items():
            out[key] = merge(live.get(key, _MISSING), value, schema, (*fields, key))
        return out
    kind, keys = schema.list_kind(fields)
    if isinstance(config, list) and isinstance(live, list) and kind != "atomic":
        result = copy.deepcopy(live)
        index = {element: i for i, element in enumerate(_keyed(result, kind, keys))}
        for i, item in enumerate(config):
            element = _item_element(kind, keys, item, i)
            if element in index:
                result[index[element]] = merge(result[index[element]], item, schema, fields)
            else:
                index[element] = len(result)
                result.append(copy.deepcopy(item))
        return result
    return copy.deepcopy(config)


def _remove_path(schema: Schema, obj: Any, path: Path, fields: tuple[str, ...] = ()) -> None:
    """Remove the value at ``path`` in place, if it is there."""
    if not path:
        return
    element, rest = path[0], path[1:]
    kind_tag, _, name = element.partition(":")
    if kind_tag == "f" and isinstance(obj, dict) and name in obj:
        if rest:
            _remove_path(schema, obj[name], rest, (*fields, name))
        else:
            del obj[name]
        return
    if isinstance(obj, list):
        kind, keys = schema.list_kind(fields)
        for i, item in enumerate(obj):
            if _item_element(kind, keys, item, i) == element:
                if rest:
                    _remove_path(schema, item, rest, fields)
                else:
                    obj.pop(i)
                return


def _owned_under(path: Path, owned: Iterable[Path]) -> bool:
    return any(p[: len(path)] == path for p in owned)


def _value_at(schema: Schema, obj: Any, path: Path, fields: tuple[str, ...] = ()) -> Any:
    """The value at ``path``, or ``_MISSING``."""
    if not path:
        return obj
    element, rest = path[0], path[1:]
    kind_tag, _, name = element.partition(":")
    if kind_tag == "f" and isinstance(obj, dict) and name in obj:
        return _value_at(schema, obj[name], rest, (*fields, name))
    if isinstance(obj, list):
        kind, keys = schema.list_kind(fields)
        for i, item in enumerate(obj):
            if _item_element(kind, keys, item, i) == element:
                return _value_at(schema, item, rest, fields)
    return _MISSING


def _key_of_kept_item(path: Path, kept: FieldSet) -> bool:
    """A key field (``name`` of a container...) of a list item that stays: removing it would break the item."""
    if len(path) < 2 or not path[-2].startswith("k:") or not path[-1].startswith("f:"):
        return False
    try:
        keys = json.loads(path[-2][2:])
    except ValueError:
        return False
    return isinstance(keys, dict) and path[-1][2:] in keys and _owned_under(path[:-1], kept)


def prune(merged: JSON, last: FieldSet, applied: FieldSet, others: FieldSet, schema: Schema | None = None) -> JSON:
    """Remove what the applier set last time and no longer applies, unless it (or something under it)
    is owned by another manager or still applied; then the maps and lists those removals left empty,
    when no one owns them (``EnsureNamedFieldsAreMembers`` and ``addBackDanglingItems``: fields no
    manager tracks, such as defaults, stay)."""
    schema = schema or NAMES
    kept = applied | others
    out = copy.deepcopy(merged)
    removed: list[Path] = []
    for path in sorted(last - applied, key=len):  # an item before its fields: its key finds it
        if any(path[: len(r)] == r for r in removed):
            continue
        if not _owned_under(path, kept) and not _key_of_kept_item(path, kept):
            _remove_path(schema, out, path)
            removed.append(path)
    husks = {path[:end] for path in removed for end in range(1, len(path))}
    for path in sorted(husks, key=len, reverse=True):
        if path in kept:
            continue
        value = _value_at(schema, out, path)
        if isinstance(value, dict | list) and not value:
            _remove_path(schema, out, path)
    return out


# --- managers -----------------------------------------------------------------------------------


@dataclass
class Manager:
    """One ``managedFields`` entry, with its fields as a set."""

    manager: str
    operation: str
    api_version: str
    fields: FieldSet
    time: str | None = None
    subresource: str = ""

    @property
    def ident(self) -> tuple[str, str, str, str]:
        """Who this entry is (``BuildManagerIdentifier``): appliers are one entry whatever the version."""
        version = "" if self.operation == APPLY else self.api_version
        return self.manager, self.operation, version, self.subresource

    def describe(self) -> str:
        """The manager as conflict messages print it (``printManager``)."""
        text = _compact(self.manager)
        if self.subresource:
            text += f" with subresource {_compact(self.subresource)}"
        if self.operation == UPDATE:
            text += f" using {self.api_version}"
        return text

    def to_json(self) -> JSON:
        entry: JSON = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version}
        if self.time is not None:
            entry["time"] = self.time
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = to_fields_v1(self.fields)
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def decode_managers(entries: Any) -> list[Manager]:
    """``metadata.managedFields`` as ``Manager`` records; entries that are not objects are skipped."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or (not entry.get("manager") and not entry.get("fieldsV1")):
            continue
        out.append(Manager(
            manager=str(entry.get("manager") or ""),
            operation=str(entry.get("operation") or UPDATE),
            api_version=str(entry.get("apiVersion") or ""),
            fields=from_fields_v1(entry.get("fieldsV1")),
            time=entry.get("time") if isinstance(entry.get("time"), str) else None,
            subresource=str(entry.get("subresource") or ""),
        ))
    return out


def encode_managers(managers: Iterable[Manager]) -> list[JSON]:
    """Entries in the API server's order: Apply before Update, then by time, manager, version, subresource."""
    kept = [m for m in managers if m.fields]
    kept.sort(key=lambda m: (m.operation, m.time or "", m.manager, m.api_version, m.subresource))
    return [m.to_json() for m in kept]


def conflict_message(conflicts: list[tuple[Manager, Path]]) -> str:
    """``Apply failed with N conflict(s): ...`` worded as the API server's ``getConflictMessage``."""
    if len(conflicts) == 1:
        who, path = conflicts[0]
        return f"Apply failed with 1 conflict: conflict with {who.describe()}: {path_string(path)}"
    by_manager: dict[str, list[Path]] = {}
    for who, path in conflicts:
        by_manager.setdefault(who.describe(), []).append(path)
    lines = []
    for name in sorted(by_manager):
        lines.append(f"conflicts with {name}:")
        lines += [f"- {path_string(p)}" for p in by_manager[name]]
    return f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)


def _touch(before: Mapping[tuple[str, str, str, str], FieldSet], entry: Manager, now: str) -> None:
    """A manager's time moves when its fields change (or it is new)."""
    if before.get(entry.ident) != entry.fields:
        entry.time = now


def record_update(
    old: JSON | None, new: JSON, managers: list[Manager], who: Manager, now: str, ignored: FieldSet = IGNORED,
    schema: Schema | None = None,
) -> list[Manager]:
    """The managers after an Update by ``who`` from ``old`` (None: a create) to ``new``."""
    before = {m.ident: m.fields for m in managers}
    diff = compare(old if old is not None else {}, new, ignored, schema)
    changed, removed = diff.changed(), frozenset(diff.removed)
    out: list[Manager] = []
    mine = Manager(who.manager, UPDATE, who.api_version, frozenset(), None, who.subresource)
    for entry in managers:
        if entry.ident == mine.ident:
            mine.fields, mine.time = entry.fields, entry.time
            continue
        out.append(Manager(entry.manager, entry.operation, entry.api_version,
                           entry.fields - changed - removed, entry.time, entry.subresource))
    mine.fields = (mine.fields - removed) | changed
    _touch(before, mine, now)
    out.append(mine)
    return [m for m in out if m.fields]


def apply(
    live: JSON | None,
    config: JSON,
    managers: list[Manager],
    who: Manager,
    now: str,
    *,
    force: bool,
    ignored: FieldSet = IGNORED,
    schema: Schema | None = None,
) -> tuple[JSON, list[Manager]]:
    """Apply ``config`` as ``who`` (an Apply entry) to ``live`` (None: the object is created).

    Returns the new object (without ``managedFields``) and the managers; ``ApplyConflict`` when other
    managers own fields whose values would change and ``force`` is false.
    """
    base = live if live is not None else {}
    before = {m.ident: m.fields for m in managers}
    merged = merge(base, config, schema)
    applied = field_set(config, ignored, schema)
    diff = compare(base, merged, ignored, schema)
    changed = diff.changed()
    conflicts = [
        (entry, path)
        for entry in managers
        if entry.ident != who.ident
        for path in sorted(entry.fields & changed)
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    last: FieldSet = frozenset()
    others: list[Manager] = []
    for entry in managers:
        if entry.ident == who.ident:
            last = entry.fields
            continue
        others.append(Manager(entry.manager, entry.operation, entry.api_version,
                              entry.fields - changed - frozenset(diff.removed), entry.time, entry.subresource))
    owned_by_others = frozenset().union(*(m.fields for m in others))
    result = prune(merged, last, applied, owned_by_others, schema)
    removed = frozenset(compare(base, result, ignored, schema).removed)
    mine = Manager(who.manager, APPLY, who.api_version, applied, _time_of(managers, who), who.subresource)
    _touch(before, mine, now)
    out = [Manager(m.manager, m.operation, m.api_version, m.fields - removed, m.time, m.subresource) for m in others]
    out.append(mine)
    return result, [m for m in out if m.fields]


def _time_of(managers: list[Manager], who: Manager) -> str | None:
    return next((m.time for m in managers if m.ident == who.ident), None)
