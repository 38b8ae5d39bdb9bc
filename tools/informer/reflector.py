"""One (namespace, kind) kept current: a list, then a watch from the list's resourceVersion, in a daemon thread.

client-go's reflector, reduced to what the read tools need:

- the first list runs in the thread of the read that needs it (its answer serves that read); the
  watch then runs in its own daemon thread, from the list's resourceVersion, with bookmarks asked for
  (``allowWatchBookmarks``) and a server-side timeout of 5-10 minutes (client-go's), after which it
  simply watches again from where it was; a BOOKMARK (about every minute, and 2 s before that timeout)
  moves the store's resourceVersion and the read's age on when nothing in the namespace changes;
- a dropped or failed watch is watched again from the last version applied (the API server replays
  what was missed); a ``410 Gone`` (that version was compacted away) or any ``ERROR`` event lists
  again; retries back off, jittered, up to 5 s;
- while no watch is connected the reflector is not ``live`` and the cache sends reads to the API
  server instead: a read is never served from a cache that cannot know it is behind;
- :meth:`stop` shuts the open response's socket (urllib3's ``shutdown``), which ends the thread's
  blocking read at once: server stop and idle drop never wait for the watch's timeout.

Every request goes through :meth:`Kube.call` (``stream=True`` for the watch): the same TLS,
credentials, headers and error mapping as the tools' own reads.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import orjson

from ..errors import ToolError
from ..structs.freshness import Freshness
from .resources import Resource
from .store import JSON, ObjectStore

if TYPE_CHECKING:
    from ..kube import Kube

log = logging.getLogger(__name__)

#: Server-side watch timeout, seconds: a random one in this range per watch, as client-go picks.
WATCH_SECONDS: Final = (300, 600)
_LIST_CHUNK: Final = 500
_MAX_PAUSE_S: Final = 5.0
#: One watch event (one line of the stream) at most: the API server refuses objects past ~3 MiB, so a longer
#: line is a broken or hostile stream; the watch is dropped (reads go to the API) instead of holding it.
MAX_EVENT_BYTES: Final = 16 << 20


class Reflector:
    """The store of one (namespace, kind) and the thread that keeps it current."""

    def __init__(self, kube: Kube, resource: Resource, namespace: str, cap: int,
                 on_exit: Callable[[Reflector], None], watch_seconds: tuple[int, int] = WATCH_SECONDS) -> None:
        self.kube = kube
        self.resource = resource
        self.namespace = namespace
        self.store = ObjectStore(cap)
        self.cond = threading.Condition()
        self.live = False
        self.failed: str | None = None  # why it stopped for good (over the cap), for the cache's note
        self.heard = 0.0  # monotonic time the API server last told it something (list, event, connect)
        self.last_read = time.monotonic()
        self.started = threading.Event()  # the first list is done, well or not
        self._on_exit = on_exit
        self._watch_seconds = watch_seconds
        self._stopped = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None

    @property
    def what(self) -> str:
        return f"{self.resource.kind}s in {self.namespace}"

    # ------------------------------------------------------------------ reads

    def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait (bounded) until the reflector is live and ``ready()`` holds; checked at every event."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (self.live and ready()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped.is_set():
                    return False
                self.cond.wait(remaining)
            return True

    def freshness(self, rv: str | None = None) -> Freshness:
        """Call holding ``cond``."""
        return Freshness(via="cache", resource_version=rv or self.store.seen.latest,
                         age_seconds=round(time.monotonic() - self.heard, 3))

    def get(self, name: str) -> tuple[JSON | None, Freshness]:
        with self.cond:
            obj = self.store.objects.get(name)
            meta = obj.get("metadata") if obj is not None else None
            rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
            return obj, self.freshness(str(rv) if rv else None)

    def quiet_for(self, name: str) -> float:
        """Seconds since the list or an event last set ``name`` (0 when it is not held)."""
        with self.cond:
            changed = self.store.changed.get(name)
        return 0.0 if changed is None else time.monotonic() - changed

    def items(self) -> tuple[list[JSON], Freshness]:
        with self.cond:
            return list(self.store.objects.values()), self.freshness()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """The first list, in the caller's thread; then the watch thread. A ToolError if the list fails."""
        try:
            if self._relist():
                # The watch runs in the context of the read that started it: the impersonated identity (a
                # contextvar) is the cache key's, so the watch sees exactly what that caller may see.
                context = contextvars.copy_context()
                self._thread = threading.Thread(target=context.run, args=(self._run,), daemon=True,
                                                name=f"opsgate-watch-{self.resource.key}-{self.namespace}")
                self._thread.start()
        finally:
            self.started.set()

    def stop(self) -> None:
        """End the watch now (idle, over the cap, or the server stopping); the thread exits on its own."""
        self._stopped.set()
        with self.cond:
            self.live = False
            response, self._response = self._response, None
            self.cond.notify_all()
        if response is not None:
            with contextlib.suppress(Exception):  # already closed: nothing to wake
                response.shutdown()  # wakes the watch thread's blocking read

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread

    def _list(self) -> tuple[list[JSON], str | None]:
        fn, args = self.resource.lister(self.kube, self.namespace)
        items: list[JSON] = []
        token: str | None = None
        list_rv: str | None = None
        while True:
            chunk = self.kube.call(fn, *args, what=f"list {self.what} (watch cache)", limit=_LIST_CHUNK,
                                   _continue=token)
            meta = chunk.get("metadata") or {}
            list_rv = list_rv or (str(meta["resourceVersion"]) if meta.get("resourceVersion") else None)
            # A list's items carry no kind or apiVersion (watch events' objects do): the readers may look.
            head = {"kind": self.resource.kind, "apiVersion": chunk.get("apiVersion")}
            items.extend({**head, **i} for i in chunk.get("items") or [] if isinstance(i, dict))
            if len(items) > self.store.cap:
                break  # no need to fetch the rest: replace() refuses it
            token = meta.get("continue") or None
            if not token:
                break
        return items, list_rv

    def _relist(self) -> bool:
        items, list_rv = self._list()
        with self.cond:
            if not self.store.replace(items, list_rv, time.monotonic()):
                self.failed = f"more than {self.store.cap} {self.what}"
                self.live = False
                return False
            self.live = not self._stopped.is_set()
            self.heard = time.monotonic()
            self.cond.notify_all()
        return True

    def _run(self) -> None:
        pause = 0.0
        relist = False
        try:
            while not self._stopped.is_set():
                try:
                    if relist:
                        if not self._relist():
                            return
                        relist = False
                    outcome = self._watch()
                    pause = 0.0
                except Exception as exc:  # a watch thread must not die: reads go to the API server meanwhile
                    if self._stopped.is_set():
                        return
                    with self.cond:
                        self.live = False
                        self.cond.notify_all()
                    relist = relist or (isinstance(exc, ToolError) and exc.status == 410)
                    pause = min(max(pause * 2, 0.05), _MAX_PAUSE_S)
                    log.info("watch_lost", extra={"watch": self.what, "error": str(exc)[:200], "retry_s": pause})
                    if self._stopped.wait(pause * (0.5 + random.random() / 2)):
                        return
                    continue
                if outcome == "over-cap":
                    with self.cond:
                        self.failed = f"more than {self.store.cap} {self.what}"
                    return
                if outcome == "relist":
                    relist = True
                    with self.cond:
                        self.live = False
                        self.cond.notify_all()
        finally:
            with self.cond:
                self.live = False
                self.cond.notify_all()
            self._on_exit(self)

    def _watch(self) -> str:
        """One watch request, applied event by event: ``ended`` (its timeout), ``relist`` or ``over-cap``."""
        fn, args = self.resource.lister(self.kube, self.namespace)
        seconds = random.randint(*self._watch_seconds)
        with self.cond:
            since = self.store.seen.latest
        response = self.kube.call(
            fn, *args, what=f"watch {self.what} (watch cache)", stream=True, watch=True,
            resource_version=since, allow_watch_bookmarks=True, timeout_seconds=seconds,
            _request_timeout=(self.kube.request_timeout[0], seconds + 30),
        )
        with self.cond:
            if self._stopped.is_set():
                response.close()
                return "ended"
            self._response = response
            self.live = True
            self.heard = time.monotonic()
            self.cond.notify_all()
        try:
            pending = bytearray()
            for chunk in response.stream(1 << 16):
                pending += chunk
                cut = chunk.rfind(b"\n")
                if cut < 0:  # a line still coming: only this chunk is searched, so a long line is not quadratic
                    if len(pending) > MAX_EVENT_BYTES:
                        raise ValueError(f"a watch event longer than {MAX_EVENT_BYTES} bytes")
                    continue
                end = len(pending) - len(chunk) + cut
                lines = pending[:end].split(b"\n")
                del pending[:end + 1]
                if len(pending) > MAX_EVENT_BYTES or any(len(line) > MAX_EVENT_BYTES for line in lines):
                    raise ValueError(f"a watch event longer than {MAX_EVENT_BYTES} bytes")
                for line in lines:
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    with self.cond:
                        outcome = self.store.apply(event if isinstance(event, dict) else {}, time.monotonic())
                        self.heard = time.monotonic()
                        self.cond.notify_all()
                    if outcome != "applied":
                        return outcome
            return "ended"
        finally:
            with self.cond:
                if self._response is response:
                    self._response = None
            response.close()
            response.release_conn()
