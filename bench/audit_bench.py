"""Audit log throughput beside its floor: appends per second with fsync, and verify speed.

    python bench/audit_bench.py [DIR]     # DIR: where to write (default: a temp dir); put it on the log's disk

* the floor: raw ``os.write`` + ``os.fsync`` of the very bytes of one record, on an
  O_APPEND file in the same directory, measured in the same run, interleaved with
  the audit runs so both see the same disk weather;
* ``AuditLog.append`` from 1 caller (target: 80% of the floor or more) and from 8
  threads at once (target: above the floor, through group commit);
* the floor for several callers: 8 threads each doing raw write + fsync on one shared file; and the
  same with what a hash chain adds to each record (sealed and written under one lock, fsync outside it):
  group commit is worth its code only if it beats that simplest correct design;
* ``verify_log`` over a log of realistic records, in records per second (target:
  above 100,000), with the process count it chose and with one process, beside an
  orjson-based floor (read, parse, hash each line, check the links; one process).

Figures, not tests. The disk's fsync time drifts by tens of percent from one second
to the next on a shared VM, so the floor and the appends are measured in short rounds
taken in turns (raw, 1 caller, raw, 8 callers, ...), each audit round is set beside
the mean of the raw rounds just before and after it, and the median of those ratios
is reported along with the median rates.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run from a checkout without installing: make the opsgate.* namespace importable
    _links = Path(__file__).resolve().parents[1] / ".typecheck"  # opsgate/<package> -> the checkout's folders
    if _links.is_dir():
        sys.path.insert(0, str(_links))

from opsgate.audit import AuditLog, verify_log
from opsgate.audit.chain import GENESIS_HASH, seal_line, seal_next

Row = Callable[..., None]
ROUND_SECONDS = 0.25
ROUNDS = 12
CALLERS = 8
VERIFY_RECORDS = 120_000

DECISION: dict[str, Any] = {
    "v": 1, "stage": "decision", "time": "2025-06-01T12:00:00.000000Z", "call_id": "3f" * 16,
    "principal": "alice", "principal_source": "config", "os_user": "alice",
    "client": {"name": "claude-code", "version": "1.0.42"}, "session_id": "9a" * 16,
    "tool": "scale", "verb": "write", "namespace": "shop",
    "object": {"namespace": "shop", "kind": "Deployment", "name": "web"},
    "arguments": {"namespace": "shop", "name": "web", "replicas": 3, "dry_run": False},
    "decision": {"effect": "allow", "reason": "allowed by p, role:operator, shop, scale, write, allow",
                 "rule": "p, role:operator, shop, scale, write, allow", "source": "policy.csv:7",
                 "policy_hash": "c4" * 32},
}  # fmt: skip
OUTCOME: dict[str, Any] = {
    "v": 1, "stage": "outcome", "time": "2025-06-01T12:00:00.150000Z", "call_id": "3f" * 16,
    "principal": "alice", "session_id": "9a" * 16, "tool": "scale",
    "outcome": {"status": "ok", "http_status": 200,
                "result": {"before": {"replicas": 2}, "after": {"replicas": 3}, "revision": "7"}},
    "duration_ms": 41.377,
}  # fmt: skip


def _fresh(directory: Path, name: str) -> Path:
    """A new file name for each round. Files are removed only when the whole run is over: freeing
    megabytes of blocks makes the journal busy for a while, which would slow the next round."""
    for n in range(1, 10_000):
        path = directory / f"{n:04d}-{name}"
        if not path.exists():
            return path
    raise RuntimeError(f"too many rounds in {directory}")


def _raw_rate(directory: Path, line: bytes, seconds: float) -> float:
    """write + fsync of ``line`` on an O_APPEND file: what any durable log must pay per record."""
    path = _fresh(directory, "raw.bin")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        count, start = 0, time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            os.write(fd, line)
            os.fsync(fd)
            count += 1
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)


def _threads_rate(path: Path, seconds: float, threads: int, step: Callable[[int], None]) -> float:
    """Records per second from ``threads`` threads each calling ``step(fd)`` in a loop (one record each) on one
    shared O_APPEND file, started together."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    counts = [0] * threads
    stop = threading.Event()
    start_line = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        start_line.wait()
        while not stop.is_set():
            step(fd)
            counts[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    try:
        start_line.wait()
        start = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for worker in workers:
            worker.join()
        return sum(counts) / (time.perf_counter() - start)
    finally:
        os.close(fd)


def _raw_threads_rate(directory: Path, line: bytes, seconds: float, threads: int) -> float:
    """``threads`` writers, each doing write + fsync on one shared O_APPEND file: plain concurrent fsync."""

    def step(fd: int) -> None:
        os.write(fd, line)
        os.fsync(fd)

    return _threads_rate(_fresh(directory, f"raw-{threads}.bin"), seconds, threads, step)


def _sealed_threads_rate(directory: Path, seconds: float, threads: int) -> float:
    """``threads`` writers doing the least a hash-chained log needs, without group commit: seal the next record
    and write it under one lock (the chain's order), then each its own fsync of the shared file, outside it.
    The raw threads' floor plus the sealing CPU, which under the GIL no thread can do beside another."""
    lock = threading.Lock()
    head: list[Any] = [0, GENESIS_HASH]

    def step(fd: int) -> None:
        with lock:
            record, line = seal_next(DECISION, head[0] + 1, head[1])
            os.write(fd, line + b"\n")
            head[0], head[1] = head[0] + 1, record["hash"]
        os.fsync(fd)

    return _threads_rate(_fresh(directory, f"sealed-{threads}.bin"), seconds, threads, step)


def _orjson_floor(path: Path) -> float:
    """Records per second for the least a chain check must do, in one process: read the file, parse each line
    with orjson, hash the line without its ``hash`` member, compare it and the ``prev`` link."""
    import hashlib

    import orjson

    start = time.perf_counter()
    prev, count = GENESIS_HASH, 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw:
            continue
        record = orjson.loads(raw)
        digest = record["hash"]
        member = b'"hash":"' + digest.encode() + b'"'
        at = raw.index(member)
        end = at + len(member)
        unhashed = raw[: at - 1] + raw[end:] if raw[at - 1] == 0x2C else raw[:at] + raw[end + 1 :]
        if hashlib.sha256(unhashed).hexdigest() != digest or record["prev"] != prev:
            raise AssertionError(f"the floor disagrees with the log at record {count + 1}")
        prev = digest
        count += 1
    return count / (time.perf_counter() - start)


def _append_rate(directory: Path, callers: int, seconds: float) -> tuple[float, float]:
    """Appends per second from ``callers`` threads, and records per fsync of the log (counted only
    for several callers: the counting wrapper would add its own cost to the one-caller figure)."""
    path = _fresh(directory, f"audit-{callers}.jsonl")
    fsyncs = [0]
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        real_fsync(fd)
        fsyncs[0] += 1

    with AuditLog(path) as log:
        counts = [0] * callers
        start_line = threading.Barrier(callers + 1)
        stop = threading.Event()

        def work(index: int) -> None:
            start_line.wait()
            while not stop.is_set():
                log.append(DECISION)
                counts[index] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        if callers > 1:
            os.fsync = counting_fsync  # type: ignore[assignment]  # counts checkpoint fsyncs too: a few per run
        try:
            start_line.wait()
            start = time.perf_counter()
            time.sleep(seconds)
            stop.set()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start
        finally:
            os.fsync = real_fsync
    total = sum(counts)
    return total / elapsed, total / max(1, fsyncs[0]) if callers > 1 else 1.0


def _cpu_per_append(directory: Path, count: int = 20_000) -> float:
    """Microseconds of CPU one append costs besides its fsync (fsync stubbed out): serialising,
    sealing, locking, the write syscall. With it, 1 caller's share of the floor is
    fsync / (fsync + this), whatever the disk."""
    path = directory / "cpu.jsonl"
    real_fsync = os.fsync
    os.fsync = lambda fd: None
    try:
        with AuditLog(path) as log:
            start = time.perf_counter()
            for _ in range(count):
                log.append(DECISION)
            elapsed = time.perf_counter() - start
    finally:
        os.fsync = real_fsync
    for leftover in directory.glob("cpu.jsonl*"):
        leftover.unlink()
    return elapsed / count * 1e6


def _verify_rate(directory: Path, records: int) -> tuple[float, float, int, float]:
    """Records per second for verify_log over ``records`` realistic records (auto processes, one process)."""
    path = directory / "verify.jsonl"
    prev = GENESIS_HASH
    with open(path, "wb") as stream:  # written directly: the fsyncs of real appends are not what is measured
        for seq in range(1, records + 1):
            record, line = seal_line(DECISION if seq % 2 else OUTCOME, seq, prev)
            prev = record["hash"]
            stream.write(line + b"\n")
    import opsgate.audit.verify as verify_module

    chosen = verify_module._workers(path.stat().st_size, None)
    rates = []
    for workers in (None, 1):
        start = time.perf_counter()
        report = verify_log(path, workers=workers)
        elapsed = time.perf_counter() - start
        assert report.ok and report.records == records, report
        rates.append(records / elapsed)
    floor = _orjson_floor(path)
    path.unlink()
    return rates[0], rates[1], chosen, floor


def run(row: Row, directory: Path | None = None) -> None:
    """Measure and report through ``row(figure, value, floor, target)``."""
    with tempfile.TemporaryDirectory(prefix="opsgate-audit-bench-", dir=directory) as tmp:
        folder = Path(tmp)
        _, line = seal_line(DECISION, 1, GENESIS_HASH)
        line += b"\n"
        raw, one, many, per_fsync, one_share, many_share = [], [], [], [], [], []
        raw_many: list[float] = []
        raw_many_share: list[float] = []
        sealed_many: list[float] = []
        sealed_share: list[float] = []
        raw.append(_raw_rate(folder, line, ROUND_SECONDS))
        for _ in range(ROUNDS):  # in turns, each audit round between two raw ones
            raw_many.append(_raw_threads_rate(folder, line, ROUND_SECONDS, CALLERS))
            one.append(_append_rate(folder, 1, ROUND_SECONDS)[0])
            raw.append(_raw_rate(folder, line, ROUND_SECONDS))
            one_share.append(one[-1] / statistics.mean(raw[-2:]))
            rate, batch = _append_rate(folder, CALLERS, ROUND_SECONDS)
            many.append(rate)
            per_fsync.append(batch)
            raw.append(_raw_rate(folder, line, ROUND_SECONDS))
            many_share.append(many[-1] / statistics.mean(raw[-2:]))
            raw_many_share.append(many[-1] / raw_many[-1])
            sealed_many.append(_sealed_threads_rate(folder, ROUND_SECONDS, CALLERS))
            sealed_share.append(many[-1] / statistics.mean(sealed_many[-2:]))
        floor = statistics.median(raw)
        single, group = statistics.median(one), statistics.median(many)
        share = statistics.median(one_share)
        row("audit: raw write+fsync (floor)", f"{floor:,.0f}/s", "",
            f"{len(line)} B/record; rounds {min(raw):,.0f} to {max(raw):,.0f}/s")
        row("audit: append, 1 caller", f"{single:,.0f}/s", f"{floor:,.0f}/s",
            f">= 80% of floor: {100 * share:.0f}% (rounds {100 * min(one_share):.0f} to {100 * max(one_share):.0f}%)")
        row(f"audit: append, {CALLERS} callers (group commit)", f"{group:,.0f}/s", f"{floor:,.0f}/s",
            f"> floor: x{statistics.median(many_share):.1f} (rounds x{min(many_share):.1f} to "
            f"x{max(many_share):.1f}), {statistics.median(per_fsync):.1f} records/fsync")
        row(f"audit: raw write+fsync, {CALLERS} threads (floor for {CALLERS} callers)",
            f"{statistics.median(raw_many):,.0f}/s", "", f"rounds {min(raw_many):,.0f} to {max(raw_many):,.0f}/s")
        row(f"audit: append, {CALLERS} callers beside {CALLERS} raw threads",
            f"x{statistics.median(raw_many_share):.2f}", "x1.00",
            f">= x1.00 (rounds x{min(raw_many_share):.2f} to x{max(raw_many_share):.2f})")
        row(f"audit: seal, write and fsync each, {CALLERS} threads (no group commit)",
            f"{statistics.median(sealed_many):,.0f}/s", "",
            f"rounds {min(sealed_many):,.0f} to {max(sealed_many):,.0f}/s: the raw threads plus the sealing CPU")
        row(f"audit: append, {CALLERS} callers beside {CALLERS} sealing threads",
            f"x{statistics.median(sealed_share):.2f}", "x1.00",
            f">= x1.00 (rounds x{min(sealed_share):.2f} to x{max(sealed_share):.2f})")
        cpu = _cpu_per_append(folder)
        fsync_us = 1e6 / floor
        reference = 1e6 / 4800  # the reference disk: about 4,800 write+fsync per second
        row("audit: append CPU per record (fsync stubbed)", f"{cpu:.1f} us", f"fsync {fsync_us:.0f} us",
            f"1 caller ~{100 * fsync_us / (fsync_us + cpu):.0f}% of floor here, "
            f"~{100 * reference / (reference + cpu):.0f}% at 4,800/s")
        auto, single_process, processes, orjson_floor = _verify_rate(folder, VERIFY_RECORDS)
        row(f"audit: verify ({processes} process{'es' if processes > 1 else ''})", f"{auto:,.0f} rec/s", "",
            "> 100,000 rec/s")
        if processes > 1:  # the same figure twice says nothing
            row("audit: verify (1 process)", f"{single_process:,.0f} rec/s", "", "> 100,000 rec/s")
        row("audit: verify (1 process) beside an orjson floor", f"{single_process:,.0f} rec/s",
            f"{orjson_floor:,.0f} rec/s",
            f"floor/verify x{orjson_floor / single_process:.2f} (read, orjson parse, hash)")


def _print_row(figure: str, value: str, floor: str = "", target: str = "") -> None:
    print(f"{figure:<44} {value:>16}  floor {floor or '-':>10}  target {target or '-'}")


if __name__ == "__main__":
    run(_print_row, Path(sys.argv[1]) if len(sys.argv) > 1 else None)
