"""The objects of one (namespace, kind) as its list and watch events left them. No I/O.

Objects are stored as the API sent them, minus the ``fieldsV1`` of ``metadata.managedFields`` (as
client-go's usual transform drops them: the biggest part of an object; the managers' names stay, the
GitOps owner is read from them), and handed to readers
as they are: readers never change them (every tool decision is a pure function of its input),
and an event replaces an object whole instead of editing it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from .versions import Seen

JSON = dict[str, Any]
Applied = Literal["applied", "relist", "over-cap"]


def _trim(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("managedFields"), list):
        # Who manages it stays (the GitOps owner is read from it); which fields each one owns goes.
        meta["managedFields"] = [{k: e[k] for k in ("manager", "operation") if k in e}
                                 for e in meta["managedFields"] if isinstance(e, dict)]
    return obj


def _name(obj: JSON) -> str | None:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None


def _rv(obj: JSON) -> str | None:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return str(rv) if rv else None


class ObjectStore:
    """Name -> object, the versions applied, and a cap on how many objects it may hold."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.objects: dict[str, JSON] = {}
        self.changed: dict[str, float] = {}  # name -> when (a monotonic clock's reading) a list or event last set it
        self.seen = Seen()

    def replace(self, items: Iterable[JSON], list_rv: str | None, now: float) -> bool:
        """A list's answer replaces everything; False (and nothing kept) when it holds more than the cap.
        Every object counts as changed ``now``: what happened to it before the list is not known."""
        objects: dict[str, JSON] = {}
        for item in items:
            name = _name(item)
            if name is not None:
                objects[name] = _trim(item)
                if len(objects) > self.cap:
                    self.objects, self.changed = {}, {}
                    return False
        self.objects = objects
        self.changed = dict.fromkeys(objects, now)
        self.seen.reset(list_rv)
        for obj in objects.values():
            self.seen.recent.append(_rv(obj) or "")
        return True

    def apply(self, event: JSON, now: float) -> Applied:
        """One watch event, arrived ``now``. ``relist``: an ERROR (410 Gone: the version we watch from is
        compacted away)."""
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict) or kind == "ERROR":
            return "relist"
        rv = _rv(obj)
        name = _name(obj)
        if kind in ("ADDED", "MODIFIED") and name is not None:
            if name not in self.objects and len(self.objects) >= self.cap:
                return "over-cap"
            self.objects[name] = _trim(obj)
            self.changed[name] = now
        elif kind == "DELETED" and name is not None:
            self.objects.pop(name, None)
            self.changed.pop(name, None)
        elif kind != "BOOKMARK":
            return "relist"  # an event type we do not know: start over from a list rather than guess
        self.seen.add(rv)
        return "applied"
