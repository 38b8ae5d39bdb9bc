"""resourceVersions: when has a cache seen a write? Pure.

The API promises only that a resourceVersion is opaque, but etcd's are one growing integer per
cluster, and Kubernetes 1.31+ says so (KEP-5504, comparable resource versions). So: compared as
integers when both parse as integers, else a cache has seen a write only once it has seen that exact
version (:class:`Seen` keeps the last few it applied).
"""

from __future__ import annotations

from collections import deque
from typing import Final

#: Versions a store remembers for the equality fallback: the last events it applied.
RECENT: Final = 256


def as_int(rv: str | None) -> int | None:
    return int(rv) if rv is not None and rv.isdigit() else None


class Seen:
    """The newest resourceVersion a store applied, and the last few it applied (for versions that are not integers)."""

    __slots__ = ("latest", "recent")

    def __init__(self) -> None:
        self.latest: str | None = None
        self.recent: deque[str] = deque(maxlen=RECENT)

    def add(self, rv: str | None) -> None:
        if not rv:
            return
        self.recent.append(rv)
        new, old = as_int(rv), as_int(self.latest)
        if self.latest is None or new is None or old is None or new >= old:
            self.latest = rv

    def reset(self, rv: str | None) -> None:
        self.recent.clear()
        self.latest = None
        self.add(rv)

    def covers(self, wanted: str) -> bool:
        """Whether a write at ``wanted`` is in what this store has applied."""
        want, have = as_int(wanted), as_int(self.latest)
        if want is not None and have is not None:
            return have >= want
        return wanted in self.recent
