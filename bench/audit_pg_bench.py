"""Audit appends per second in PostgreSQL (the team server's sink) beside the file log and beside a floor.

    python bench/audit_pg_bench.py

Starts a throwaway PostgreSQL from the machine's packages (``tests/pg/pgcluster.py``), on the same disk as
the file log, and measures in short rounds taken in turns (so both see the same disk weather):

* the floor: one committed single-row INSERT per transaction on a plain table, from 8 connections at
  once (what any durable database log must pay: PostgreSQL's own WAL flush, which it shares between
  concurrent commits);
* ``PgAuditSink.append`` from 8 threads of one replica (one connection: group commit in the process);
* two replicas (two sinks, two connections), 4 threads each: one chain under the advisory lock;
* ``AuditLog.append`` (the file log) from 8 threads.

Figures, not tests: medians of the rounds' rates.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run from a checkout: opsgate.* through .typecheck's links, tests.* from the root
    _root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(_root))
    sys.path.insert(0, str(_root / ".typecheck"))

import psycopg

from bench.audit_bench import DECISION
from opsgate.audit import AuditLog
from opsgate.audit.checkpoint import generate_keypair
from opsgate.audit.pgsink import PgAuditSink
from tests.pg.pgcluster import WRITER, PgCluster, start_cluster

ROUND_SECONDS = 0.5
ROUNDS = 6
THREADS = 8


def _rate(appenders: list[Callable[[], object]], seconds: float) -> float:
    """Calls per second of ``appenders`` (one thread each), all running for ``seconds``."""
    stop = time.monotonic() + seconds
    counts = [0] * len(appenders)

    def run(i: int) -> None:
        append = appenders[i]
        while time.monotonic() < stop:
            append()
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(appenders))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


#: What each series of ``measure`` is.
NAMES = {
    "floor": "PostgreSQL floor: 1-row INSERT + COMMIT, 8 connections",
    "pg-1": "PgAuditSink, 1 replica, 8 threads",
    "pg-2": "PgAuditSink, 2 replicas x 4 threads, one chain",
    "file": "AuditLog (file), 8 threads",
}


def measure(cluster: PgCluster) -> dict[str, list[float]]:
    """Appends per second of each series of :data:`NAMES`, ROUNDS rounds taken in turns, on a new database of
    ``cluster`` (bench/http_bench.py calls it with the cluster its part started)."""
    with tempfile.TemporaryDirectory(prefix="opsgate-bench-") as folder:
        key, _, _ = generate_keypair(Path(folder) / "audit.key")
        dsn = cluster.dsn(WRITER, cluster.new_database())
        with psycopg.connect(cluster.dsn("opsgate_owner", dsn.rsplit("/", 1)[1]), autocommit=True) as owner:
            owner.execute("CREATE TABLE opsgate.floor (id bigserial PRIMARY KEY, line bytea NOT NULL)")
            owner.execute(f"GRANT INSERT, SELECT ON opsgate.floor TO {WRITER}")
            owner.execute(f"GRANT USAGE ON SEQUENCE opsgate.floor_id_seq TO {WRITER}")
        floor_conns = [psycopg.connect(dsn, autocommit=True) for _ in range(THREADS)]
        line = str(DECISION).encode()

        def floor_of(conn: Any) -> Callable[[], object]:
            return lambda: conn.execute("INSERT INTO opsgate.floor (line) VALUES (%s)", (line,))

        one = PgAuditSink(dsn, signing_key=key)
        two = [PgAuditSink(dsn, signing_key=key) for _ in range(2)]
        log = AuditLog(Path(folder) / "audit.jsonl", signing_key=key)
        rounds: dict[str, list[float]] = {"floor": [], "pg-1": [], "pg-2": [], "file": []}
        for _ in range(ROUNDS):
            rounds["floor"].append(_rate([floor_of(c) for c in floor_conns], ROUND_SECONDS))
            rounds["pg-1"].append(_rate([lambda: one.append(DECISION)] * THREADS, ROUND_SECONDS))
            rounds["pg-2"].append(_rate([lambda s=s: s.append(DECISION) for s in two  # type: ignore[misc]
                                         for _ in range(THREADS // 2)], ROUND_SECONDS))
            rounds["file"].append(_rate([lambda: log.append(DECISION)] * THREADS, ROUND_SECONDS))
        for sink in (one, *two):
            sink.close()
        log.close()
        for conn in floor_conns:
            conn.close()
    return rounds


def main() -> None:
    cluster: PgCluster = start_cluster()
    try:
        rounds = measure(cluster)
    finally:
        cluster.stop()
    for name, rates in rounds.items():
        print(f"{NAMES[name]:<52} {statistics.median(rates):>9,.0f} appends/s  (rounds: "
              f"{', '.join(f'{r:,.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
