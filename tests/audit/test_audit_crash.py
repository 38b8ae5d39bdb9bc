"""Crash safety: a writer killed with SIGKILL at random points loses no acknowledged record.

A child process appends from two threads in a loop (some records large, so a kill
can land inside a ``write`` and leave a torn line) and reports every (seq, hash)
whose ``append`` returned over a pipe. The parent kills it after a random few
milliseconds, 50 times, reopening the log each time. Afterwards the log verifies
(torn lines sealed by recovery records, checkpoints consistent) and holds every
acknowledged record.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

import opsgate.audit.log as log_module
from opsgate.audit import AuditLog, KeyRing, verify_audit
from opsgate.audit.checkpoint import load_hmac_key
from opsgate.audit.segments import hmac_key_path, list_segments

KILLS = 50


def _child(path: Path, report_fd: int, seed: int) -> None:
    """Append forever from two threads; report each acknowledged record. Never returns."""
    try:
        real_write_all = log_module._write_all

        def slow_disk(fd: int, data: bytes) -> None:
            # Large writes reach the file in pieces, as they do on a slow or loaded disk, so a kill
            # often lands between two of them and leaves a torn line (a single write() can be cut
            # short by SIGKILL too, but only in a window too narrow to hit in a fast test).
            for start in range(0, len(data), 16384):
                real_write_all(fd, data[start : start + 16384])
                time.sleep(0.0001)

        log_module._write_all = slow_disk
        log = AuditLog(path, checkpoint_every=7, max_segment_bytes=256 * 1024)
        rng = random.Random(seed)
        sizes = [rng.choice([10, 200, 3000, 60_000, 200_000]) for _ in range(64)]

        def work(thread: int) -> None:
            n = 0
            while True:
                record = log.append({"stage": "decision", "t": thread, "n": n, "pad": "p" * sizes[n % 64]})
                os.write(report_fd, f"{record['seq']} {record['hash']}\n".encode())
                n += 1

        threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        os._exit(3)


def _records(path: Path) -> dict[int, dict[str, object]]:
    out: dict[int, dict[str, object]] = {}
    for segment in [p for _, p in list_segments(path)] + [path]:
        for line in segment.read_bytes().split(b"\n"):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line
            if isinstance(record, dict) and "seq" in record:
                out[record["seq"]] = record
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_random_points_loses_no_acknowledged_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    rng = random.Random(20240601)
    acknowledged: dict[int, str] = {}
    for round_ in range(KILLS):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_fd)
            _child(path, write_fd, round_)
        os.close(write_fd)
        time.sleep(rng.uniform(0.002, 0.025))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child exited early: {status}"
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe.read().split(b"\n"):
                parts = line.split()
                if len(parts) == 2 and len(parts[1]) == 64:  # the kill may cut the last report short
                    acknowledged[int(parts[0])] = parts[1].decode()

    with AuditLog(path):  # the last kill may have left a torn line: opening seals it
        pass
    key = load_hmac_key(hmac_key_path(path))
    report = verify_audit(path, keys=KeyRing((), (key,)))
    assert report.ok, report
    records = _records(path)
    assert acknowledged, "no append ever returned: the test did not exercise anything"
    missing = {seq for seq, digest in acknowledged.items() if records.get(seq, {}).get("hash") != digest}
    assert not missing, f"acknowledged records lost: {sorted(missing)[:10]}"
    recoveries = [r for r in records.values() if r.get("stage") == "recovery"]
    assert len(recoveries) >= 3, "kills rarely landed inside a write; the torn-line path went untested"
    assert report.checkpoints is not None and report.checkpoints.trusted >= KILLS  # one start checkpoint per open
    assert not list(tmp_path.glob(".audit.jsonl.hmac-key.*"))  # no copy of the key left by a killed creator
