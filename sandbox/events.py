"""Event aggregation as client-go's event recorder does it (``tools/record/events_cache.go``), pure.

Controllers write through an ``EventCorrelator``, so the sandbox keeps what a
real cluster keeps instead of one Event per call:

- Identical events (same source, involved object, type, reason and message)
  within the cache's life are one Event: ``count`` goes up, ``lastTimestamp``
  moves, ``firstTimestamp`` and the name stay (``eventObserve``).
- Similar events (same source, involved object, type and reason, any message):
  once ``max_events`` (10) distinct messages were seen within ``max_interval``
  (600 s) of each other, the next ones are folded into one Event whose message
  is ``(combined from similar events): <latest message>`` (``EventAggregate``),
  so a Deployment scaled 50 times has about ten Events, not fifty.

The correlator only decides; the controller writes (create, or update of the
named Event, falling back to create if that one was dropped meanwhile).
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

MAX_SIMILAR_EVENTS = 10
MAX_INTERVAL_SECONDS = 600.0
CACHE_SIZE = 4096  # client-go's maxLruCacheEntries
COMBINED_PREFIX = "(combined from similar events): "


def rfc3339(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _involved(event: JSON) -> JSON:
    value = event.get("involvedObject")
    return value if isinstance(value, dict) else {}


def _source(event: JSON) -> JSON:
    value = event.get("source")
    return value if isinstance(value, dict) else {}


def aggregate_key(event: JSON) -> str:
    """``EventAggregatorByReasonFunc``: everything but the message."""
    obj, src = _involved(event), _source(event)
    parts = [src.get("component"), src.get("host"), obj.get("kind"), obj.get("namespace"), obj.get("name"),
             obj.get("uid"), obj.get("apiVersion"), event.get("type"), event.get("reason"),
             event.get("reportingComponent"), event.get("reportingInstance")]
    return "\x00".join(str(p or "") for p in parts)


def event_key(event: JSON) -> str:
    """``getEventKey``: what makes two events the same one (the message included)."""
    obj, src = _involved(event), _source(event)
    parts = [src.get("component"), src.get("host"), obj.get("kind"), obj.get("namespace"), obj.get("name"),
             obj.get("fieldPath"), obj.get("uid"), obj.get("apiVersion"), event.get("type"), event.get("reason"),
             event.get("message")]
    return "\x00".join(str(p or "") for p in parts)


@dataclass
class _Aggregate:
    messages: set[str] = field(default_factory=set)
    last: float = 0.0


@dataclass(frozen=True)
class _Observed:
    name: str
    count: int
    first_timestamp: str


@dataclass(frozen=True)
class Correlated:
    """What to write: ``event`` (complete), and whether it replaces the stored Event of the same name."""

    event: JSON
    update: bool


class EventCorrelator:
    """One recorder's caches (client-go keeps one per broadcaster; here one per controller)."""

    def __init__(self, max_events: int = MAX_SIMILAR_EVENTS, max_interval: float = MAX_INTERVAL_SECONDS) -> None:
        self.max_events = max_events
        self.max_interval = max_interval
        self._aggregates: OrderedDict[str, _Aggregate] = OrderedDict()
        self._observed: OrderedDict[str, _Observed] = OrderedDict()

    @staticmethod
    def _put(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)

    def correlate(self, event: JSON, now: float) -> Correlated:
        """Aggregate, then deduplicate ``event`` (a new Event as a controller would write it)."""
        event = copy.deepcopy(event)
        stamp = rfc3339(now)
        key = event_key(event)
        agg_key = aggregate_key(event)
        record = self._aggregates.get(agg_key)
        if record is None or now - record.last > self.max_interval:
            record = _Aggregate()
        record.messages.add(str(event.get("message", "")))
        record.last = now
        self._put(self._aggregates, agg_key, record)
        if len(record.messages) >= self.max_events:
            record.messages.pop()  # do not grow the set past the threshold (client-go's PopAny)
            event["message"] = COMBINED_PREFIX + str(event.get("message", ""))
            key = agg_key
        previous = self._observed.get(key)
        if previous is None:
            event["count"] = 1
            event["firstTimestamp"] = stamp
            event["lastTimestamp"] = stamp
            self._put(self._observed, key, _Observed(str(event["metadata"]["name"]), 1, stamp))
            return Correlated(event, update=False)
        count = previous.count + 1
        event["metadata"]["name"] = previous.name
        event["count"] = count
        event["firstTimestamp"] = previous.first_timestamp
        event["lastTimestamp"] = stamp
        self._put(self._observed, key, _Observed(previous.name, count, previous.first_timestamp))
        return Correlated(event, update=True)

    def forget(self, event: JSON) -> None:
        """The stored Event is gone (expired or dropped): the next one like it is created afresh."""
        for key in (event_key(event), aggregate_key(event)):
            observed = self._observed.get(key)
            if observed is not None and observed.name == (event.get("metadata") or {}).get("name"):
                del self._observed[key]
