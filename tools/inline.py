"""Running a read tool on the event loop when it can answer from memory (the watch cache) at once.

A worker-thread hop costs about 50 us a call, and much more on a busy machine (the woken thread and the
loop trade the GIL); a read served from the watch cache is cheaper than the hop. So the catalog first
runs such a read under :func:`cache_only`: every place where the read would wait instead raises
:class:`WouldWait` (a request to the API server in ``Kube.call``, a client not built yet, a watch's first
list, a watch catching up with this server's own write), and the catalog runs it again in a worker
thread, as it always did. Reads change nothing, so a read stopped half way leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import anyio

T = TypeVar("T")

_CACHE_ONLY: ContextVar[bool] = ContextVar("opsgate_cache_only", default=False)


class WouldWait(Exception):
    """Under :func:`cache_only`: this read would wait (for the API server, a first list, a watch)."""


@contextmanager
def cache_only() -> Iterator[None]:
    """Within: :func:`no_wait` raises WouldWait, so the read answers from memory or stops at once."""
    token = _CACHE_ONLY.set(True)
    try:
        yield
    finally:
        _CACHE_ONLY.reset(token)


def no_wait() -> None:
    """Called where a read is about to wait: raises WouldWait under :func:`cache_only`, else nothing."""
    if _CACHE_ONLY.get():
        raise WouldWait


async def at_once_or_in_thread(fn: Callable[..., T], *args: object, limiter: anyio.CapacityLimiter | None = None) -> T:
    """``fn(*args)`` on the loop under :func:`cache_only`; where it would wait, again in a worker thread (``fn``
    changes nothing before it would wait: a read)."""
    try:
        with cache_only():
            return fn(*args)
    except WouldWait:
        pass
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
