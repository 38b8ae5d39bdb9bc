"""The watch cache of one set of credentials on one cluster: reflectors started on first read, bounded, dropped idle.

- **Started on first use**: a read of a (namespace, kind) nobody reads yet lists it in the reader's
  thread and starts its watch; concurrent first readers wait for that one list.
- **Bounded**: at most ``max_watches`` (namespace, kind) pairs watched and ``max_objects`` objects in
  each; past either, reads go to the API server and say why. A list that fails (RBAC may allow
  ``get`` but not ``list``/``watch``; KServe may not be installed) is not tried again for
  :data:`RETRY_SECONDS`: reads go to the API server meanwhile, as they would without a cache.
- **Dropped when idle**: a pair not read for ``idle_seconds`` has its watch stopped and its objects
  freed, by a janitor thread that runs only while something is watched.
- **Read-your-write**: :meth:`saw` records the resourceVersion of each object written (or read) through
  :meth:`Kube.call`; a later read of that (namespace, kind) waits up to ``write_wait`` seconds for the
  watch to deliver it, else reads the API server and says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from opsgate.vocab.limits import MAX_CACHED_OBJECTS, MAX_WATCHES

from ..errors import ToolError
from ..inline import no_wait
from ..structs.freshness import Freshness
from ..untrusted import name_in_text
from .reflector import WATCH_SECONDS, Reflector
from .resources import Resource
from .store import JSON

if TYPE_CHECKING:
    from ..kube import Kube

#: How long a (namespace, kind) whose list failed is read from the API server before the cache tries again.
RETRY_SECONDS: Final = 30.0
#: How long a read waits for the cache to see this server's own write before reading the API server.
WRITE_WAIT_SECONDS: Final = 2.0
#: How long an object must have gone unchanged in the cache before a write is computed from its cached copy:
#: one still changing (a rollout's status writes) would most likely fail the copy's resourceVersion guard.
WRITE_QUIET_SECONDS: Final = 1.0
#: Remembered writes and refusals, at most (the oldest are forgotten first).
_REMEMBERED: Final = 1024

Key = tuple[str, str]  # (kind key, namespace)
Miss = str  # why a read goes to the API server instead


def _remember(table: dict[Key, Any], key: Key, value: Any) -> None:
    table.pop(key, None)
    table[key] = value
    while len(table) > _REMEMBERED:
        del table[next(iter(table))]


class ReadCache:
    """Reflectors by (kind, namespace), and the writes the reads must see."""

    def __init__(self, kube: Kube, *, idle_seconds: float, max_watches: int = MAX_WATCHES,
                 max_objects: int = MAX_CACHED_OBJECTS, write_wait: float = WRITE_WAIT_SECONDS,
                 watch_seconds: tuple[int, int] = WATCH_SECONDS, write_quiet: float = WRITE_QUIET_SECONDS) -> None:
        self.kube = kube
        self.write_quiet = write_quiet
        self.idle_seconds = idle_seconds
        self.max_watches = max_watches
        self.max_objects = max_objects
        self.write_wait = write_wait
        self.watch_seconds = watch_seconds
        self._lock = threading.Lock()
        self._reflectors: dict[Key, Reflector] = {}
        self._refused: dict[Key, tuple[float, Miss]] = {}
        self._written: dict[Key, str] = {}
        self._janitor: threading.Thread | None = None
        self._closing = threading.Event()

    # ------------------------------------------------------------------ writes and reads

    def saw(self, kind: str, namespace: str, rv: str) -> None:
        """Kube.call wrote (or read) an object of ``kind`` in ``namespace`` at ``rv``: later cached reads there
        must be at least that new. Versions that are integers only go forward."""
        key = (kind.lower(), namespace)
        with self._lock:
            known = self._written.get(key)
            if known is not None and known.isdigit() and rv.isdigit() and int(known) >= int(rv):
                return
            _remember(self._written, key, rv)

    def get(self, resource: Resource, namespace: str, name: str, *,
            peek: bool = False) -> tuple[JSON, Freshness] | Miss:
        """``peek``: only from a watch already live and already caught up with this server's writes there
        (no watch started, no waiting), and an object unchanged for ``write_quiet`` seconds: the read a
        write is computed from (:func:`read_for_write`)."""
        reflector = self._ready(resource, namespace, peek=peek)
        if isinstance(reflector, str):
            return reflector
        if peek and reflector.quiet_for(name) < self.write_quiet:
            return "changed (or listed) in the cache too recently to write from"
        obj, fresh = reflector.get(name)
        if obj is None:
            return "not in the cache"  # the API's own answer: a 404 as the tool has always reported it
        return obj, fresh

    def items(self, resource: Resource, namespace: str) -> tuple[list[JSON], Freshness] | Miss:
        reflector = self._ready(resource, namespace)
        return reflector if isinstance(reflector, str) else reflector.items()

    @property
    def watched(self) -> list[Key]:
        """The (kind, namespace) pairs watched now."""
        with self._lock:
            return list(self._reflectors)

    def _ready(self, resource: Resource, namespace: str, peek: bool = False) -> Reflector | Miss:
        """The live reflector for this pair, caught up with this server's writes there; or why not."""
        key = (resource.key, namespace)
        if peek:
            with self._lock:
                found = self._reflectors.get(key)
                wanted = self._written.get(key)
            if found is None or not found.started.is_set() or not found.live:
                return "not watched now"
            if wanted is not None and not found.store.seen.covers(wanted):
                return "the cache has yet to see this server's last write here"
            found.last_read = time.monotonic()
            return found
        reflector = self._reflector(resource, namespace, key)
        if isinstance(reflector, str):
            return reflector
        if not reflector.started.is_set():
            no_wait()
        if not reflector.started.wait(sum(self.kube.request_timeout)):
            return "the cache's first list has not answered"
        if not reflector.live:  # no waiting: a poll during an outage costs what it cost before the cache
            return f"over the cache's cap: {reflector.failed}" if reflector.failed else (
                "the cache's watch is reconnecting")
        with self._lock:
            wanted = self._written.get(key)
        if wanted is not None and not reflector.wait(lambda: reflector.store.seen.covers(wanted), 0.0):
            no_wait()  # the watch has yet to deliver this server's own write (looked at once, not waited for)
        if wanted is None or reflector.wait(lambda: reflector.store.seen.covers(wanted), self.write_wait):
            return reflector
        with self._lock:  # this read goes to the API, which has it; the next ones need not wait for it again
            if self._written.get(key) == wanted:
                del self._written[key]
        # The version is the cluster's text: a name when it is one, else quoted.
        return (f"the cache had not seen this server's write (resourceVersion {name_in_text(wanted)}) "
                f"after {self.write_wait:g} s")

    def _reflector(self, resource: Resource, namespace: str, key: Key) -> Reflector | Miss:
        now = time.monotonic()
        with self._lock:
            reflector = self._reflectors.get(key)
            if reflector is not None:
                reflector.last_read = now
                return reflector
            refused = self._refused.get(key)
            if refused is not None and refused[0] > now:
                return refused[1]
            if len(self._reflectors) >= self.max_watches:
                return f"over the cache's cap: {self.max_watches} namespace/kind watches already"
            no_wait()  # a new watch starts with a list, in the reader's thread
            reflector = Reflector(self.kube, resource, namespace, self.max_objects, self._exited, self.watch_seconds)
            self._reflectors[key] = reflector
            if self._janitor is None:
                self._janitor = threading.Thread(target=self._sweep, args=(self._closing,), daemon=True,
                                                 name="opsgate-watch-janitor")
                self._janitor.start()
        try:
            reflector.start()
        except ToolError as exc:
            with self._lock:
                if self._reflectors.get(key) is reflector:
                    del self._reflectors[key]
                why = f"the cache could not list {resource.kind}s here ({exc.rule or exc.code})"
                _remember(self._refused, key, (time.monotonic() + RETRY_SECONDS, why))
            return why
        if reflector.failed:  # the first list already held more than the cap
            self._exited(reflector)
            return f"over the cache's cap: {reflector.failed}"
        return reflector

    # ------------------------------------------------------------------ lifecycle

    def _exited(self, reflector: Reflector) -> None:
        """A reflector's thread ended (stopped, or over the cap): forget it, and remember a cap for a while."""
        key = (reflector.resource.key, reflector.namespace)
        with self._lock:
            if self._reflectors.get(key) is reflector:
                del self._reflectors[key]
            if reflector.failed:
                why = f"over the cache's cap: {reflector.failed}"
                _remember(self._refused, key, (time.monotonic() + max(self.idle_seconds, RETRY_SECONDS), why))

    def _sweep(self, closing: threading.Event) -> None:
        """Stop watches nobody read for ``idle_seconds``; end when nothing is watched (started again with the next)."""
        period = max(0.05, min(self.idle_seconds / 4, 5.0))
        while not closing.wait(period):
            now = time.monotonic()
            with self._lock:
                idle = [r for r in self._reflectors.values() if now - r.last_read > self.idle_seconds]
                for r in idle:
                    del self._reflectors[(r.resource.key, r.namespace)]
                done = not self._reflectors
                if done:
                    self._janitor = None
            for r in idle:
                r.stop()
            if done:
                return

    def close(self) -> None:
        """Stop every watch now and free what they held (the server stopping); the next read starts afresh."""
        with self._lock:
            reflectors = list(self._reflectors.values())
            self._reflectors.clear()
            self._closing.set()
            self._closing = threading.Event()
            self._janitor = None
        for r in reflectors:
            r.stop()
        for r in reflectors:
            r.join(1.0)


def read_one(kube: Kube, resource: Resource, namespace: str, name: str,
             direct: Callable[[], JSON]) -> tuple[JSON, Freshness]:
    """One object from the watch cache when it is on and current, else ``direct()`` (the API server)."""
    cache = kube.read_cache
    hit = "" if cache is None else cache.get(resource, namespace, name)
    if not isinstance(hit, str):
        return hit
    no_wait()
    obj = direct()
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return obj, Freshness(via="api", resource_version=str(rv) if rv else None, note=hit or None)


def read_for_write(kube: Kube, resource: Resource, namespace: str, name: str,
                   direct: Callable[[], JSON]) -> tuple[JSON, bool]:
    """The object a write is computed from, and whether it came from the watch cache.

    From the cache only when its watch is live and has delivered this server's own writes there, and the
    object has not changed for :data:`WRITE_QUIET_SECONDS` (nothing is started or waited for: otherwise
    ``direct()``, the API server). A cached copy can be behind the cluster by the watch's latency, so the
    caller guards its write with that copy's resourceVersion (client-go's lister-then-update): a copy that
    is behind costs one conflict and a read of the API server, never a write computed from an old object."""
    cache = kube.read_cache
    hit = None if cache is None else cache.get(resource, namespace, name, peek=True)
    if hit is None or isinstance(hit, str):
        return direct(), False
    return hit[0], True


def read_all(kube: Kube, resource: Resource, namespace: str,
             direct: Callable[[], list[JSON]]) -> tuple[list[JSON], Freshness]:
    """Every object of a kind in a namespace, from the watch cache when it is on and current, else ``direct()``."""
    cache = kube.read_cache
    hit = "" if cache is None else cache.items(resource, namespace)
    if not isinstance(hit, str):
        return hit
    no_wait()
    return direct(), Freshness(via="api", note=hit or None)
