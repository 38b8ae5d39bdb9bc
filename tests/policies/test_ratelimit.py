"""The token bucket behind ``rate_limit_per_minute``: a fake clock throughout."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsgate.policies.bounds import SubjectBounds
from opsgate.policies.ratelimit import WINDOW_SECONDS, RateLimitBound, RateLimiter, rate_limit_reason


def test_refuses_past_the_budget_and_allows_after_the_window() -> None:
    limiter = RateLimiter()
    for _ in range(5):
        assert limiter.try_acquire("alice", 5, now=100.0) is None
    wait = limiter.try_acquire("alice", 5, now=100.0)
    assert wait == pytest.approx(12.0)  # one token every 60 / 5 seconds
    assert limiter.try_acquire("alice", 5, now=111.9) == pytest.approx(0.1)
    assert limiter.try_acquire("alice", 5, now=112.0) is None  # the next token
    assert limiter.try_acquire("alice", 5, now=112.0) is not None
    # a whole window later the whole budget is back, and not more
    later = 112.0 + WINDOW_SECONDS
    assert [limiter.try_acquire("alice", 5, now=later) for _ in range(6)] == [None] * 5 + [pytest.approx(12.0)]


def test_principals_have_their_own_buckets() -> None:
    limiter = RateLimiter()
    assert limiter.try_acquire("alice", 1, now=0.0) is None
    assert limiter.try_acquire("alice", 1, now=0.0) == pytest.approx(60.0)
    assert limiter.try_acquire("bob", 1, now=0.0) is None


def test_a_lower_rate_after_a_reload_caps_the_bucket() -> None:
    limiter = RateLimiter()
    assert limiter.try_acquire("alice", 60, now=0.0) is None  # 59 left
    assert limiter.try_acquire("alice", 2, now=0.0) is None  # capped at 2, one taken
    assert limiter.try_acquire("alice", 2, now=0.0) is None
    assert limiter.try_acquire("alice", 2, now=0.0) is not None


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    limiter = RateLimiter()
    assert limiter.try_acquire("alice", 1, now=1000.0) is None
    assert limiter.try_acquire("alice", 1, now=10.0) is not None
    assert limiter.try_acquire("alice", 1, now=1000.0) is not None


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf")])
def test_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter().try_acquire("alice", rate, now=0.0)


def test_idle_buckets_are_evicted_and_memory_is_bounded() -> None:
    limiter = RateLimiter(max_principals=3)
    for i in range(3):
        assert limiter.try_acquire(f"p{i}", 10, now=float(i)) is None
    assert len(limiter) == 3
    # full: a fourth principal is refused (fail closed) until the oldest bucket is idle
    wait = limiter.try_acquire("p3", 10, now=30.0)
    assert wait is not None and wait == pytest.approx(30.0)
    assert limiter.try_acquire("p3", 10, now=30.0 + wait) is None
    assert len(limiter) <= 3
    # a whole window later everything idle is gone, and nothing was lost by dropping it
    assert limiter.try_acquire("p9", 10, now=1000.0) is None
    assert len(limiter) == 1


def test_threads_share_one_budget() -> None:
    limiter = RateLimiter()
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            ok = limiter.try_acquire("alice", 30, now=5.0) is None
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 30


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 120),
    gaps=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=200),
)
def test_never_more_than_the_budget_in_any_window(rate: int, gaps: list[float]) -> None:
    """In any span of T seconds at most rate + rate * T / 60 calls go through."""
    limiter = RateLimiter()
    now, times = 0.0, []
    for gap in gaps:
        now += gap
        if limiter.try_acquire("alice", rate, now) is None:
            times.append(now)
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            span = times[j] - start
            assert j - i + 1 <= rate + rate * span / WINDOW_SECONDS + 1e-6


def test_check_for_the_gate_says_when_to_retry() -> None:
    limiter = RateLimiter()
    bounds = SubjectBounds(rate_limit_per_minute=2)
    assert limiter.check("alice", "role:operator", None, now=0.0) is None
    assert limiter.check("alice", "role:operator", SubjectBounds(max_replicas=3), now=0.0) is None
    assert limiter.check("alice", "role:operator", bounds, now=0.0) is None
    assert limiter.check("alice", "role:operator", bounds, now=0.0) is None
    reason = limiter.check("alice", "role:operator", bounds, now=0.0)
    assert reason == (
        "rate limit: alice may make at most 2 changing calls per minute "
        "(rate_limit_per_minute of role:operator); retry in 30 s"
    )
    assert limiter.check("alice", "role:operator", bounds, now=30.0) is None


def test_the_read_bound_is_counted_by_its_own_rate_and_named_in_the_refusal() -> None:
    limiter = RateLimiter()
    bounds = SubjectBounds(rate_limit_per_minute=1, read_rate_limit_per_minute=2)
    read: RateLimitBound = "read_rate_limit_per_minute"
    assert limiter.check("alice", "role:viewer", SubjectBounds(rate_limit_per_minute=1), 0.0, read) is None
    assert limiter.check("alice", "role:viewer", bounds, 0.0, read) is None
    assert limiter.check("alice", "role:viewer", bounds, 0.0, read) is None
    assert limiter.check("alice", "role:viewer", bounds, 0.0, read) == (
        "rate limit: alice may make at most 2 reads of the cluster or a model server per minute "
        "(read_rate_limit_per_minute of role:viewer); retry in 30 s"
    )


def test_reason_rounds_short_waits_to_tenths() -> None:
    assert rate_limit_reason("a", "role:x", 30, 1.234).endswith("retry in 1.2 s")
    assert rate_limit_reason("a", "role:x", 30, 0.0).endswith("retry in 0.1 s")
    assert rate_limit_reason("a", "role:x", 1, 59.2).endswith("retry in 60 s")
