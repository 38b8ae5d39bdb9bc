"""A writer process for the PostgreSQL tests: ``python -m tests.pg.writer DSN KEY COUNT THREADS [TAG]``.

Opens a ``PgAuditSink`` and appends COUNT records from THREADS threads at once, printing ``acked SEQ
HASH`` (flushed) for each append that returned, i.e. each committed record. Prints ``ready`` once the
sink is open. The DSN comes from the environment variable it names when it starts with ``env:``.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from opsgate.audit.pgsink import PgAuditSink


def main(argv: list[str]) -> int:
    dsn, key, count, threads = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    tag = argv[4] if len(argv) > 4 else str(os.getpid())
    if dsn.startswith("env:"):
        dsn = os.environ[dsn[4:]]
    sink = PgAuditSink(dsn, signing_key=key, checkpoint_every=100)
    lock = threading.Lock()
    print("ready", flush=True)

    def one(i: int) -> None:
        record = sink.append({"v": 2, "stage": "decision", "call_id": f"{tag}-{i}", "principal": f"writer-{tag}",
                              "tool": "scale", "time": "2026-01-01T00:00:00.000000Z"})
        with lock:
            sys.stdout.write(f"acked {record['seq']} {record['hash']}\n")
            sys.stdout.flush()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(one, i) for i in range(count)]:
            future.result()
    sink.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
