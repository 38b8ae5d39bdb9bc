"""Rate limits shared across replicas through PostgreSQL (issue 21 item 4): two limiters, each with its own
connection as two replicas have, spend one budget per principal; a store that cannot answer refuses."""

from __future__ import annotations

import threading

from opsgate.audit.pgbuckets import PgBucketStore
from opsgate.policies.bounds import SubjectBounds
from opsgate.policies.ratelimit import SharedRateLimiter

from .conftest import PgDb


def test_two_replicas_share_one_budget_per_principal(pgdb: PgDb) -> None:
    stores = [PgBucketStore(pgdb.writer), PgBucketStore(pgdb.writer)]
    first, second = (SharedRateLimiter(store, "write") for store in stores)
    bounds = SubjectBounds(rate_limit_per_minute=4, read_rate_limit_per_minute=4)
    try:
        answers = [limiter.check("alice", "role:operator", bounds, 0.0) for limiter in (first, second) * 2]
        assert answers == [None] * 4  # four calls, two on each replica: the budget of one minute
        refusal = second.check("alice", "role:operator", bounds, 0.0)
        assert refusal is not None and "at most 4 changing calls per minute" in refusal and "retry in" in refusal
        assert first.check("alice", "role:operator", bounds, 0.0) is not None  # on the other replica too
        assert first.check("bob", "role:operator", bounds, 0.0) is None  # another principal's own budget
        reads = SharedRateLimiter(stores[1], "read")  # writes never eat the read budget
        assert reads.check("alice", "role:operator", bounds, 0.0, "read_rate_limit_per_minute") is None
    finally:
        for store in stores:
            store.close()


def test_concurrent_replicas_never_grant_more_than_the_budget(pgdb: PgDb) -> None:
    bounds = SubjectBounds(rate_limit_per_minute=30)
    granted: list[int] = []
    lock = threading.Lock()

    def replica() -> None:
        store = PgBucketStore(pgdb.writer)
        limiter = SharedRateLimiter(store, "write")
        mine = sum(limiter.check("carol", "role:operator", bounds, 0.0) is None for _ in range(40))
        store.close()
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 120 attempts within a second or two: the minute's 30, plus at most what refills meanwhile (0.5 a second).
    assert 30 <= sum(granted) <= 32, granted


def test_a_store_that_cannot_answer_refuses_the_call(pgdb: PgDb) -> None:
    store = PgBucketStore(pgdb.writer.replace(pgdb.cluster.passwords["opsgate_writer"], "wrong-password"))
    refusal = SharedRateLimiter(store, "write").check("alice", "role:operator",
                                                      SubjectBounds(rate_limit_per_minute=100), 0.0)
    assert refusal is not None and "did not answer" in refusal and "wrong-password" not in refusal
    # No bound, no question to the store: nothing to refuse.
    assert SharedRateLimiter(store, "write").check("alice", "role:operator", SubjectBounds(), 0.0) is None
