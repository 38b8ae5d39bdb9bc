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
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Final, Literal

from .bounds import SubjectBounds

__all__ = ["WINDOW_SECONDS", "RateLimitBound", "RateLimiter", "rate_limit_reason"]

RateLimitBound = Literal["rate_limit_per_minute", "read_rate_limit_per_minute"]
"""The bounds a limiter can enforce: changing calls, or reads that leave the server."""

_COUNTED: Final[dict[RateLimitBound, str]] = {
    "rate_limit_per_minute": "changing calls",
    "read_rate_limit_per_minute": "reads of the cluster or a model server",
}

WINDOW_SECONDS: Final = 60.0
"""A bucket holds one minute's budget and refills it in one minute."""


class RateLimiter:
    """Token buckets keyed by principal; capacity = rate per minute, refill = rate / 60 per second."""

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
        if not rate_per_minute > 0 or math.isinf(rate_per_minute):
            raise ValueError(f"rate_per_minute must be a positive number, got {rate_per_minute!r}")
        capacity = float(rate_per_minute)
        refill = capacity / WINDOW_SECONDS
        with self._lock:
            self._evict_idle(now)
            state = self._buckets.get(principal)
            if state is None:
                if len(self._buckets) >= self._max:
                    _, oldest_seen = next(iter(self._buckets.values()))
                    return max(WINDOW_SECONDS - (now - oldest_seen), 1e-3)
                tokens, stamp = capacity, now
            else:
                held, seen = state
                # A clock that went backwards adds nothing, and the bucket keeps
                # its later time, so going forward again adds nothing either.
                stamp = max(seen, now)
                tokens = min(capacity, held + (stamp - seen) * refill)
            taken = tokens >= 1.0
            self._buckets[principal] = (tokens - 1.0 if taken else tokens, stamp)
            self._buckets.move_to_end(principal)
            return None if taken else (1.0 - tokens) / refill

    def _evict_idle(self, now: float) -> None:
        """Drop buckets untouched for a whole window: they are full, as a new one would be."""
        buckets = self._buckets
        while buckets:
            principal, (_, seen) = next(iter(buckets.items()))
            if now - seen < WINDOW_SECONDS:
                break
            del buckets[principal]

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
