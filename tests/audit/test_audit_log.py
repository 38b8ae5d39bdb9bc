"""The audit log writer and verifier: chain integrity, tampering, torn writes, failures, concurrency."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import opsgate.audit.log as log_module
from opsgate.audit import (
    GENESIS_HASH,
    AuditLog,
    AuditWriteError,
    VerifyReport,
    canonical,
    record_hash,
    seal,
    verify_log,
)


def _fill(path: Path, n: int, start: int = 0) -> list[dict[str, Any]]:
    with AuditLog(path) as log:
        return [log.append({"stage": "decision", "i": start + i, "tool": "scale"}) for i in range(n)]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _bad(report: VerifyReport, line: int, problem: str) -> None:
    assert (report.ok, report.first_bad_line, report.problem) == (False, line, problem), report


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


# --- writing -----------------------------------------------------------------------------------


def test_append_writes_one_canonical_chained_line_per_record(log_path: Path) -> None:
    records = _fill(log_path, 5)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == GENESIS_HASH
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    assert _lines(log_path) == [canonical(r) + b"\n" for r in records]
    assert all(record_hash(r) == r["hash"] for r in records)
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600


def test_reopening_continues_the_chain(log_path: Path) -> None:
    first = _fill(log_path, 3)
    with AuditLog(log_path) as log:
        assert (log.last_seq, log.last_hash) == (3, first[-1]["hash"])
        assert log.path == log_path
        record = log.append({"stage": "outcome"})
    assert (record["seq"], record["prev"]) == (4, first[-1]["hash"])
    assert verify_log(log_path) == VerifyReport(True, 4, None, None, None, 4, record["hash"])


def test_new_log_starts_at_genesis(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        assert (log.last_seq, log.last_hash) == (0, GENESIS_HASH)
    assert log_path.read_bytes() == b""


def test_body_that_cannot_be_serialised_is_refused_and_uses_no_seq(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        log.append({"ok": 1})
        for bad in ({"x": float("nan")}, {"x": 2**60}, {"x": object()}, {"seq": 9}, {"hash": "x"}):
            with pytest.raises(AuditWriteError):
                log.append(bad)
        assert log.append({"ok": 2})["seq"] == 2
    assert verify_log(log_path).ok


def test_oversized_record_is_refused(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_module, "MAX_LINE_BYTES", 500)
    with AuditLog(log_path) as log:
        with pytest.raises(AuditWriteError, match="limit"):
            log.append({"x": "y" * 1000})
        assert log.append({"x": "small"})["seq"] == 1


def test_append_many_is_one_durable_run_of_consecutive_records_or_nothing(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read's decision and outcome (append_many): next to each other in the chain whoever else appends,
    one fsync for both, and none of them written when one cannot be."""
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(log_module, "MAX_LINE_BYTES", 500)
    with AuditLog(log_path) as log:
        fsyncs.clear()
        first, second = log.append_many([{"stage": "decision", "n": 0}, {"stage": "outcome", "n": 0}])
        assert (first["seq"], second["seq"], second["prev"]) == (1, 2, first["hash"]) and len(fsyncs) == 1
        with pytest.raises(AuditWriteError, match="limit"):
            log.append_many([{"stage": "decision"}, {"x": "y" * 1000}])
        assert log.append({"x": "small"})["seq"] == 3  # nothing of the refused pair was written
        assert log.append_many([]) == []

        def pairs(n: int) -> None:
            for i in range(30):
                if i % 3:
                    log.append({"stage": "decision", "n": n})
                else:
                    log.append_many([{"stage": "decision", "n": n, "i": i}, {"stage": "outcome", "n": n, "i": i}])

        threads = [threading.Thread(target=pairs, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    records = [json.loads(line) for line in _lines(log_path)]
    for before, after in itertools.pairwise(records):
        if after.get("stage") == "outcome":  # every outcome right after its own decision
            assert (before["stage"], before["n"], before.get("i")) == ("decision", after["n"], after.get("i"))
    assert sum(r.get("stage") == "outcome" for r in records) == 1 + 8 * 10
    assert verify_log(log_path).ok


def test_closed_log_refuses_appends(log_path: Path) -> None:
    log = AuditLog(log_path)
    log.close()
    with pytest.raises(AuditWriteError, match="closed"):
        log.append({"x": 1})


def test_long_last_line_is_found_by_the_tail_reader(log_path: Path) -> None:
    _fill(log_path, 2)
    with AuditLog(log_path) as log:
        big = log.append({"blob": "z" * 50_000})
    with AuditLog(log_path) as log:
        assert (log.last_seq, log.last_hash) == (3, big["hash"])


def test_tail_read_is_cheap(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that must catch up with another one reads only the end of the file: its tail, and the
    records since the head it knew, walked back to check they chain to it (issue 15 item 1). Two writers
    catch up here: b before its append, a at its close."""
    _fill(log_path, 3000)
    size = log_path.stat().st_size
    with AuditLog(log_path) as a, AuditLog(log_path) as b:
        a.append({"by": "a"})
        read: list[int] = []
        real_pread = os.pread

        def counting_pread(fd: int, n: int, offset: int) -> bytes:
            data = real_pread(fd, n, offset)
            read.append(len(data))
            return data

        monkeypatch.setattr(os, "pread", counting_pread)
        assert b.append({"by": "b"})["seq"] == 3002
    assert 0 < sum(read) <= 2 * 8192 < size


# --- verifying: intact and tampered logs ---------------------------------------------------------


def test_intact_log_verifies(log_path: Path) -> None:
    records = _fill(log_path, 10)
    report = verify_log(log_path)
    assert report == VerifyReport(True, 10, None, None, None, 10, records[-1]["hash"])


def test_empty_log_verifies(log_path: Path) -> None:
    log_path.write_bytes(b"")
    assert verify_log(log_path) == VerifyReport(True, 0, None, None, None, 0, GENESIS_HASH)


def test_unreadable_log_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        verify_log(tmp_path / "missing.jsonl")
    with pytest.raises(OSError):
        verify_log(tmp_path)


def test_edited_field_is_found_at_its_line(log_path: Path) -> None:
    _fill(log_path, 10)
    lines = _lines(log_path)
    lines[3] = lines[3].replace(b'"tool":"scale"', b'"tool":"whoami"')
    _write(log_path, lines)
    report = verify_log(log_path)
    _bad(report, 4, "hash-mismatch")
    assert report.records == 3 and report.head_seq == 3


def test_edited_and_rehashed_record_breaks_the_next_link(log_path: Path) -> None:
    _fill(log_path, 10)
    lines = _lines(log_path)
    forged = json.loads(lines[3])
    forged["tool"] = "whoami"
    forged["hash"] = record_hash(forged)
    lines[3] = canonical(forged) + b"\n"
    _write(log_path, lines)
    _bad(verify_log(log_path), 5, "prev-mismatch")  # line 4 is self-consistent; line 5 no longer links


def test_rewritten_prev_is_a_prev_mismatch(log_path: Path) -> None:
    _fill(log_path, 10)
    lines = _lines(log_path)
    forged = json.loads(lines[6])
    del forged["hash"]
    lines[6] = canonical(seal({k: v for k, v in forged.items() if k not in ("seq", "prev")}, 7, "a" * 64)) + b"\n"
    _write(log_path, lines)
    _bad(verify_log(log_path), 7, "prev-mismatch")


def test_deleted_line_is_a_seq_gap_at_its_place(log_path: Path) -> None:
    _fill(log_path, 10)
    lines = _lines(log_path)
    del lines[4]
    _write(log_path, lines)
    report = verify_log(log_path)
    _bad(report, 5, "seq-gap")
    assert report.detail == "expected seq 5, found 6"


def test_deleted_first_line_is_caught(log_path: Path) -> None:
    _fill(log_path, 3)
    _write(log_path, _lines(log_path)[1:])
    _bad(verify_log(log_path), 1, "seq-gap")


def test_truncated_tail_needs_the_checkpoint(log_path: Path) -> None:
    """Dropping the last records leaves a valid shorter chain; head_seq/head_hash expose it against a checkpoint."""
    records = _fill(log_path, 10)
    _write(log_path, _lines(log_path)[:7])
    report = verify_log(log_path)
    assert report.ok and (report.head_seq, report.head_hash) == (7, records[6]["hash"])
    assert (report.head_seq, report.head_hash) != (10, records[-1]["hash"])


def test_inserted_garbage_line_is_caught(log_path: Path) -> None:
    _fill(log_path, 6)
    lines = _lines(log_path)
    lines.insert(3, b'{"stage":"decision","tool":"rollback"}\n')
    _write(log_path, lines)
    _bad(verify_log(log_path), 4, "hash-mismatch")
    lines[3] = b"not json at all\n"
    _write(log_path, lines)
    _bad(verify_log(log_path), 4, "not-json")


def test_inserted_forged_record_reusing_a_seq_is_caught_at_the_insert(log_path: Path) -> None:
    records = _fill(log_path, 6)
    lines = _lines(log_path)
    # Correctly hashed, chained to record 3, but it can only reuse seq 3 (or take seq 4, below).
    forged = seal({"stage": "decision", "tool": "rollback"}, 3, records[2]["hash"])
    lines.insert(3, canonical(forged) + b"\n")
    _write(log_path, lines)
    report = verify_log(log_path)
    _bad(report, 4, "seq-gap")
    assert report.detail == "expected seq 4, found 3"


def test_inserted_forgery_taking_the_next_seq_breaks_at_the_displaced_record(log_path: Path) -> None:
    """A forgery that takes seq 4 is indistinguishable from record 4 itself (no key signs the chain);
    the chain breaks at the first line after it, where the real record 4 now stands."""
    records = _fill(log_path, 6)
    lines = _lines(log_path)
    forged = seal({"stage": "decision", "tool": "rollback"}, 4, records[2]["hash"])
    lines.insert(3, canonical(forged) + b"\n")
    _write(log_path, lines)
    _bad(verify_log(log_path), 5, "seq-gap")


@pytest.mark.parametrize(("i", "expected_line"), [(0, 1), (4, 5), (8, 9)])
def test_swapped_lines_are_caught_at_the_first(log_path: Path, i: int, expected_line: int) -> None:
    _fill(log_path, 10)
    lines = _lines(log_path)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    _write(log_path, lines)
    _bad(verify_log(log_path), expected_line, "seq-gap")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda line: json.dumps(json.loads(line)).encode() + b"\n",  # spaces after separators
        lambda line: line.replace(b"\n", b"\r\n"),
        lambda line: b" " + line,
        lambda line: line.replace(b'"i":3', b'"i":3.0'),
    ],
)
def test_non_canonical_line_is_caught(log_path: Path, mangle: Callable[[bytes], bytes]) -> None:
    _fill(log_path, 6)
    lines = _lines(log_path)
    lines[3] = mangle(lines[3])
    _write(log_path, lines)
    _bad(verify_log(log_path), 4, "not-canonical")


@pytest.mark.parametrize("line", [b"\n", b"[1,2]\n", b'{"x":NaN}\n', b"\xff\xfe\n"])
def test_line_that_is_not_a_json_object_is_caught(log_path: Path, line: bytes) -> None:
    _fill(log_path, 3)
    _write(log_path, [*_lines(log_path), line])
    _bad(verify_log(log_path), 4, "not-json")


# --- torn writes ---------------------------------------------------------------------------------


def _crash_checkpoints(path: Path, last_seq: int) -> None:
    """Keep only the checkpoints a crash at ``last_seq`` leaves: none signs a record whose append never returned."""
    cp = path.with_name(path.name + ".checkpoints")
    kept = [line for line in _lines(cp) if json.loads(line)["size"] <= last_seq]
    _write(cp, kept)


def _tear(path: Path, n_good: int) -> bytes:
    """A log of ``n_good`` records followed by the first half of the next line, as a crash leaves it."""
    records = _fill(path, n_good + 1)
    lines = _lines(path)
    torn = lines[-1][: len(lines[-1]) // 2]
    _write(path, [*lines[:-1], torn])
    _crash_checkpoints(path, n_good)
    assert records[-1]["seq"] == n_good + 1
    return torn


def test_torn_last_line_is_caught(log_path: Path) -> None:
    _tear(log_path, 5)
    report = verify_log(log_path)
    _bad(report, 6, "torn-line")
    assert report.records == 5


def test_reopening_seals_a_torn_line_with_a_recovery_record(log_path: Path) -> None:
    torn = _tear(log_path, 5)
    before = log_path.read_bytes()
    good = json.loads(_lines(log_path)[4])
    with AuditLog(log_path) as log:
        assert log.last_seq == 6
        nxt = log.append({"stage": "decision", "after": "recovery"})
    data = log_path.read_bytes()
    assert data.startswith(before + b"\n")  # old bytes untouched; the torn line only gets its newline
    lines = _lines(log_path)
    recovery = json.loads(lines[6])
    assert recovery["seq"] == 6 and recovery["prev"] == good["hash"]
    assert recovery["stage"] == "recovery"
    assert recovery["torn"] == {"line": 6, "bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", recovery["time"])
    assert (nxt["seq"], nxt["prev"]) == (7, recovery["hash"])
    assert verify_log(log_path) == VerifyReport(True, 7, None, None, None, 7, nxt["hash"])


def test_torn_first_line_recovers_from_genesis(log_path: Path) -> None:
    AuditLog(log_path).close()  # the checkpoints of an empty log; then a crash during the first append
    log_path.write_bytes(b'{"stage":"deci')
    with AuditLog(log_path) as log:
        assert log.last_seq == 1
    recovery = json.loads(_lines(log_path)[1])
    assert (recovery["seq"], recovery["prev"], recovery["torn"]["line"]) == (1, GENESIS_HASH, 1)
    assert verify_log(log_path).ok


def test_complete_record_without_newline_is_still_treated_as_torn(log_path: Path) -> None:
    """Its append never returned, so the tool never ran: the record does not count."""
    _fill(log_path, 3)
    _write(log_path, [*_lines(log_path)[:-1], _lines(log_path)[-1].rstrip(b"\n")])
    _crash_checkpoints(log_path, 2)
    with AuditLog(log_path) as log:
        assert log.last_seq == 3  # 2 good records + the recovery record
    report = verify_log(log_path)
    assert report.ok and report.records == 3


def test_torn_line_sealed_without_recovery_is_caught(log_path: Path) -> None:
    torn = _tear(log_path, 4)
    lines = _lines(log_path)
    _write(log_path, [*lines, b"\n"])  # someone added the newline but no recovery record
    _bad(verify_log(log_path), 5, "not-json")
    assert torn  # the half line is what line 5 holds


@pytest.mark.parametrize("field", ["line", "bytes", "sha256"])
def test_recovery_record_must_name_exactly_the_torn_line(log_path: Path, field: str) -> None:
    _tear(log_path, 4)
    with AuditLog(log_path):
        pass
    lines = _lines(log_path)
    recovery = json.loads(lines[5])
    del recovery["hash"]
    body = {k: v for k, v in recovery.items() if k not in ("seq", "prev")}
    body["torn"] = {**body["torn"], field: {"line": 4, "bytes": 1, "sha256": "0" * 64}[field]}
    lines[5] = canonical(seal(body, recovery["seq"], recovery["prev"])) + b"\n"
    _write(log_path, lines)
    report = verify_log(log_path)
    # A recovery record naming another line does not excuse this one; one naming it wrongly is a torn line.
    _bad(report, 5, "not-json" if field == "line" else "torn-line")


def test_recovery_record_cannot_excuse_a_good_line_and_drop_it(log_path: Path) -> None:
    """A 'recovery' that hides record 3 must still chain to record 2, which breaks at the line after it."""
    records = _fill(log_path, 5)
    lines = _lines(log_path)
    hidden = lines[2].rstrip(b"\n")
    fake = seal(
        {
            "stage": "recovery",
            "time": "2025-01-01T00:00:00.000000Z",
            "torn": {"line": 3, "bytes": len(hidden), "sha256": hashlib.sha256(hidden).hexdigest()},
        },
        3,
        records[1]["hash"],
    )
    lines.insert(3, canonical(fake) + b"\n")
    _write(log_path, lines)
    _bad(verify_log(log_path), 5, "prev-mismatch")


def test_damaged_last_record_refuses_to_open(log_path: Path) -> None:
    _fill(log_path, 3)
    lines = _lines(log_path)
    lines[-1] = lines[-1].replace(b'"i":2', b'"i":9')
    _write(log_path, lines)
    with pytest.raises(AuditWriteError, match="damaged"):
        AuditLog(log_path)
    assert _lines(log_path) == lines  # nothing appended


# --- failures: fail closed, never reuse a failed descriptor --------------------------------------


def _count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        opened.append(str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", counting_open)
    return opened


def test_failed_fsync_drops_the_descriptor_and_reopens(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with AuditLog(log_path) as log:
        log.append({"n": 1})
        real_fsync = os.fsync
        synced: list[tuple[int, int]] = []

        def failing_once(fd: int) -> None:
            st = os.fstat(fd)
            synced.append((fd, st.st_ino))
            if len(synced) == 1:
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)

        closed: list[int] = []
        real_close = os.close

        def counting_close(fd: int) -> None:
            closed.append(fd)
            real_close(fd)

        monkeypatch.setattr(os, "fsync", failing_once)
        monkeypatch.setattr(os, "close", counting_close)
        opened = _count_opens(monkeypatch)
        with pytest.raises(AuditWriteError, match="Input/output"):
            log.append({"n": 2})
        assert opened == []
        assert closed == [synced[0][0]]  # the descriptor whose fsync failed is closed, never fsynced again
        record = log.append({"n": 3})
        # reopened by path (the live file, and a descriptor of it for the fsync)
        assert opened and set(opened) == {str(log_path)}
    # The bytes of the failed append reached the page cache, so they are in the file and the
    # reopen chained onto them: nothing is hidden, the chain stays intact.
    assert record["seq"] == 3
    assert verify_log(log_path).ok


def test_failed_write_then_reopen(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with AuditLog(log_path) as log:
        log.append({"n": 1})
        real_write = os.write

        def no_space(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", no_space)
        with pytest.raises(AuditWriteError, match="No space"):
            log.append({"n": 2})
        with pytest.raises(AuditWriteError):
            log.append({"n": 2})
        monkeypatch.setattr(os, "write", real_write)
        assert log.append({"n": 2})["seq"] == 2
    assert verify_log(log_path).records == 2


def test_short_write_then_failure_leaves_a_torn_line_that_the_reopen_seals(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with AuditLog(log_path) as log:
        log.append({"n": 1})
        real_write = os.write
        calls = {"n": 0}

        def half_then_fail(fd: int, data: bytes) -> int:
            calls["n"] += 1
            if calls["n"] == 1:
                return real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "write", half_then_fail)
        with pytest.raises(AuditWriteError):
            log.append({"n": 2, "pad": "x" * 100})
        monkeypatch.setattr(os, "write", real_write)
        _bad(verify_log(log_path), 2, "torn-line")
        record = log.append({"n": 3})
    assert record["seq"] == 3  # 1, recovery (2), 3
    assert json.loads(_lines(log_path)[2])["stage"] == "recovery"
    assert verify_log(log_path).ok


def test_short_writes_are_completed(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    with AuditLog(log_path) as log:
        log.append({"n": 1, "text": "a longer record than seven bytes"})
        log.append({"n": 2})
    assert verify_log(log_path).records == 2


def test_missing_directory_refuses_to_open(tmp_path: Path) -> None:
    with pytest.raises(AuditWriteError, match="does not exist"):
        AuditLog(tmp_path / "nope" / "audit.jsonl")


def test_directory_path_refuses_to_open(tmp_path: Path) -> None:
    with pytest.raises(AuditWriteError):
        AuditLog(tmp_path)


def test_path_under_a_file_refuses_to_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(AuditWriteError):
        AuditLog(tmp_path / "file" / "audit.jsonl")


def test_non_regular_file_refuses_to_open() -> None:
    with pytest.raises(AuditWriteError, match="regular file"):
        AuditLog(Path(os.devnull))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_refuses_to_open(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(AuditWriteError):
            AuditLog(ro / "audit.jsonl")
    finally:
        ro.chmod(0o700)


def test_removed_directory_fails_every_append(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    with AuditLog(directory / "audit.jsonl") as log:
        log.append({"n": 1})
        shutil.rmtree(directory)
        with pytest.raises(AuditWriteError, match=r"gone|removed"):
            log.append({"n": 2})
        with pytest.raises(AuditWriteError):
            log.append({"n": 3})


def test_replaced_log_is_not_extended(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        log.append({"n": 1})
        log.append({"n": 2})
        fresh = log_path.with_suffix(".new")
        fresh.write_bytes(b"")
        fresh.replace(log_path)
        with pytest.raises(AuditWriteError, match="removed or replaced"):
            log.append({"n": 3})
        with pytest.raises(AuditWriteError, match="truncated or replaced"):
            log.append({"n": 3})
    assert log_path.read_bytes() == b""


def test_truncated_log_is_not_extended(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        for n in range(3):
            log.append({"n": n})
        os.truncate(log_path, len(_lines(log_path)[0]))
        with pytest.raises(AuditWriteError, match="shrank"):
            log.append({"n": 3})
        with pytest.raises(AuditWriteError, match="truncated or replaced"):
            log.append({"n": 3})


# --- concurrency ---------------------------------------------------------------------------------


def test_threads_share_one_chain(log_path: Path) -> None:
    with AuditLog(log_path) as log:

        def work(t: int) -> None:
            for i in range(50):
                log.append({"thread": t, "i": i})

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    report = verify_log(log_path)
    assert report.ok and report.records == 400


def test_verifying_a_live_log_never_sees_a_half_written_line(log_path: Path) -> None:
    done = threading.Event()
    log = AuditLog(log_path)

    def writer() -> None:
        with log:
            for i in range(300):
                log.append({"i": i, "pad": "p" * (i % 97) * 40})
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reports = []
    while not done.is_set():
        reports.append(verify_log(log_path))
    thread.join()
    assert reports and all(r.ok for r in reports), [r for r in reports if not r.ok][:1]
    assert verify_log(log_path).records == 300


def test_two_writers_in_one_process_keep_one_chain(log_path: Path) -> None:
    with AuditLog(log_path) as a, AuditLog(log_path) as b:
        seqs = [(a if i % 3 else b).append({"i": i})["seq"] for i in range(30)]
    assert seqs == list(range(1, 31))
    assert verify_log(log_path).records == 30


def _append_many(path: str, who: str, n: int, start: Any) -> None:
    """Child process body (module level so 'spawn' can import it)."""
    with AuditLog(Path(path)) as log:
        start.wait(30)  # a barrier: both children are imported and open before either appends
        for i in range(n):
            log.append({"who": who, "i": i})


def test_two_processes_append_to_one_chain(log_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_many, args=(str(log_path), who, 500, start)) for who in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    report = verify_log(log_path)
    assert report.ok and report.records == 1000, report
    records = [json.loads(line) for line in _lines(log_path)]
    assert [r["seq"] for r in records] == list(range(1, 1001))
    assert {r["who"] for r in records} == {"a", "b"}
    # Both writers really interleaved (each re-read the other's tail), not one after the other.
    switches = sum(1 for x, y in itertools.pairwise(records) if x["who"] != y["who"])
    assert switches > 1
