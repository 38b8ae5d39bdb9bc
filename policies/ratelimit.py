"""A token bucket per principal: the ``rate_limit_per_minute`` bound (changing calls) and
``read_rate_limit_per_minute`` (reads that reach the cluster or a model server).

Why a bucket: an agent retrying in a loop is the failure this answers, so a
principal may spend its minute's budget in a burst and then gets one more call
every ``60 / rate`` seconds; a refusal says exactly when to come back.

Pure and clock-free: the caller passes ``now`` (``time.monotonic()`` in the
gate, a number in tests). Thread-safe behind one lock. Memory is bounded: a
bucket idle for a minute is full again, the same as no bucket, so it is
dropped; past ``max_principals`` live buckets a new principal is refused until
one goes idle (fail closed: a throttle must never be reset by being flooded).
Writes and reads each have their own limiter on the gate, so spending one
budget never eats the other.

Replicas of the team server share their budgets: :class:`SharedRateLimiter` keeps the same buckets
(the same pure step, :func:`take_token`) in a :class:`BucketStore` that all of them reach, which makes
each step atomic and supplies the clock (the store's: monotonic clocks of different processes cannot
be compared). The PostgreSQL store is ``opsgate.audit.pgbuckets``; this module knows only the protocol.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Literal, Protocol, TypeVar

from .bounds import SubjectBounds

__all__ = [
    "WINDOW_SECONDS", "BucketStore", "RateLimitBound", "RateLimiter", "SharedRateLimiter", "rate_limit_reason",
    "take_token",
]

RateLimitBound = Literal["rate_limit_per_minute", "read_rate_limit_per_minute"]
"""The bounds a limiter can enforce: changing calls, or reads that leave the server."""

_COUNTED: Final[dict[RateLimitBound, str]] = {
    "rate_limit_per_minute": "changing calls",
    "read_rate_limit_per_minute": "reads of the cluster or a model server",
}

WINDOW_SECONDS: Final = 60.0
"""A bucket holds one minute's budget and refills it in one minute."""


Bucket = tuple[float, float]
"""(tokens, time of last update)."""

_T = TypeVar("_T")


def take_token(state: Bucket | None, rate_per_minute: float, now: float) -> tuple[Bucket, float | None]:
    """One attempt on a bucket (None: a new, full one): its new state, and None when a token was taken, else the
    seconds until one is free. Capacity = rate per minute, refill = rate / 60 per second."""
    if not rate_per_minute > 0 or math.isinf(rate_per_minute):
        raise ValueError(f"rate_per_minute must be a positive number, got {rate_per_minute!r}")
    capacity = float(rate_per_minute)
    refill = capacity / WINDOW_SECONDS
    if state is None:
        tokens, stamp = capacity, now
    else:
        held, seen = state
        # A clock that went backwards adds nothing, and the bucket keeps
        # its later time, so going forward again adds nothing either.
        stamp = max(seen, now)
        tokens = min(capacity, held + (stamp - seen) * refill)
    taken = tokens >= 1.0
    return (tokens - 1.0 if taken else tokens, stamp), None if taken else (1.0 - tokens) / refill


class _Limiter:
    """What the gate asks of a limiter: ``check``, over ``try_acquire``."""

    def try_acquire(self, principal: str, rate_per_minute: float, now: float) -> float | None:
        raise NotImplementedError

    def check(
        self, principal: str, subject: str, bounds: SubjectBounds | None, now: float,
        bound: RateLimitBound = "rate_limit_per_minute",
    ) -> str | None:
        """For the gate: None when the call may go ahead, else the refusal reason (with when to retry).

        After the policy and the other bounds allowed the call, so refused
        calls spend no tokens. ``subject`` is the subject whose rule allowed
        the call (whose bounds these are); ``bound`` is which of its rates
        this limiter counts (one limiter per bound, so budgets stay apart).
        """
        rate = None if bounds is None else getattr(bounds, bound)
        if rate is None:
            return None
        wait = self.try_acquire(principal, rate, now)
        return None if wait is None else rate_limit_reason(principal, subject, rate, wait, bound)


class RateLimiter(_Limiter):
    """Token buckets keyed by principal, in this process; capacity = rate per minute, refill = rate / 60 per second."""

    def __init__(self, *, max_principals: int = 10_000) -> None:
        if max_principals < 1:
            raise ValueError("max_principals must be at least 1")
        self._max = max_principals
        self._lock = threading.Lock()
        # principal -> (tokens, time of last update); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def try_acquire(self, principal: str, rate_per_minute: float, now: float) -> float | None:
        """Take one token: None when the call may go ahead, else the seconds until a token is free.

        The rate is passed on every call (bounds may change on reload); a
        bucket never holds more than the current rate's capacity.
        """
        with self._lock:
            self._evict_idle(now)
            state = self._buckets.get(principal)
            if state is None and len(self._buckets) >= self._max:
                take_token(None, rate_per_minute, now)  # the same ValueError for a bad rate
                _, oldest_seen = next(iter(self._buckets.values()))
                return max(WINDOW_SECONDS - (now - oldest_seen), 1e-3)
            self._buckets[principal], wait = take_token(state, rate_per_minute, now)
            self._buckets.move_to_end(principal)
            return wait

    def _evict_idle(self, now: float) -> None:
        """Drop buckets untouched for a whole window: they are full, as a new one would be."""
        buckets = self._buckets
        while buckets:
            principal, (_, seen) = next(iter(buckets.items()))
            if now - seen < WINDOW_SECONDS:
                break
            del buckets[principal]



class BucketStore(Protocol):
    """Buckets shared by every replica: one atomic read-modify-write of a bucket, on the store's clock."""

    def update(self, key: str, step: Callable[[Bucket | None, float], tuple[Bucket, _T]]) -> _T:
        """Call ``step(bucket or None, now)`` with the bucket under ``key`` locked, store the bucket it returns,
        and return the rest. ``now``: the store's clock in seconds (one clock for all replicas)."""
        ...


class SharedRateLimiter(_Limiter):
    """The same buckets in a :class:`BucketStore`; ``name`` keeps this limiter's budgets apart from others'.

    Fails closed: a store that cannot answer refuses the call (with a retry hint), never lets it through.
    ``now`` is not used: the store's clock is the one every replica shares.
    """

    def __init__(self, store: BucketStore, name: str) -> None:
        self._store = store
        self._name = name

    def try_acquire(self, principal: str, rate_per_minute: float, now: float) -> float | None:
        take_token(None, rate_per_minute, 0.0)  # a bad rate is the caller's error, raised before the store is asked
        return self._store.update(f"{self._name}:{principal}",
                                  lambda state, clock: take_token(state, rate_per_minute, clock))

    def check(
        self, principal: str, subject: str, bounds: SubjectBounds | None, now: float,
        bound: RateLimitBound = "rate_limit_per_minute",
    ) -> str | None:
        try:
            return super().check(principal, subject, bounds, now, bound)
        except ValueError:
            raise
        except Exception as exc:  # the shared store did not answer: no count can be kept, so refuse
            return (f"rate limit: the shared store of {bound} budgets did not answer ({type(exc).__name__}); "
                    "refused, since no count could be kept; retry in 5 s")


def rate_limit_reason(
    principal: str, subject: str, rate_per_minute: float, retry_after: float,
    bound: RateLimitBound = "rate_limit_per_minute",
) -> str:
    """One sentence an assistant can act on: the budget, whose it is, and when to retry."""
    seconds = max(retry_after, 0.1)
    shown = f"{seconds:.1f}" if seconds < 10 else f"{math.ceil(seconds)}"
    return (
        f"rate limit: {principal} may make at most {rate_per_minute:g} {_COUNTED[bound]} per minute "
        f"({bound} of {subject}); retry in {shown} s"
    )
