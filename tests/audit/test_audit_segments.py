"""Rotation by size into numbered segments: the chain continues, writers follow each other's rotations."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from opsgate.audit import GENESIS_HASH, AuditLog, AuditWriteError, verify_audit, verify_log
from opsgate.audit.segments import (
    checkpoints_path,
    hmac_key_path,
    list_segments,
    segment_number,
    segment_path,
)


def _all(path: Path) -> list[dict[str, object]]:
    out = []
    for segment in [p for _, p in list_segments(path)] + [path]:
        out += [json.loads(line) for line in segment.read_bytes().splitlines()]
    return out


def test_names_are_numbered_beside_the_live_file(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    assert segment_path(live, 1) == tmp_path / "audit.jsonl.000001"
    assert segment_path(live, 1234567).name == "audit.jsonl.1234567"
    assert checkpoints_path(live).name == "audit.jsonl.checkpoints"
    assert hmac_key_path(live).name == "audit.jsonl.hmac-key"
    assert segment_number("audit.jsonl", "audit.jsonl.000042") == 42
    for other in ("audit.jsonl", "audit.jsonl.checkpoints", "audit.jsonl.hmac-key", "audit.jsonl.42", "x.000001"):
        assert segment_number("audit.jsonl", other) is None
    with pytest.raises(ValueError):
        segment_path(live, 0)


def test_segments_sort_by_number_not_by_name(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    for n in (999999, 1000000, 2):
        segment_path(live, n).write_bytes(b"")
    assert [n for n, _ in list_segments(live)] == [2, 999999, 1000000]
    assert list_segments(tmp_path / "missing" / "audit.jsonl") == []


def test_rotation_keeps_one_chain_across_segments(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_segment_bytes=1500) as log:
        records = [log.append({"stage": "decision", "i": i, "pad": "x" * 100}) for i in range(40)]
    segments = list_segments(path)
    assert [n for n, _ in segments] == list(range(1, len(segments) + 1)) and len(segments) >= 5
    for _, segment in segments:
        assert segment.stat().st_size <= 1500
        assert stat.S_IMODE(segment.stat().st_mode) == 0o400  # closed segments are read-only
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    on_disk = _all(path)
    assert [r["seq"] for r in on_disk] == list(range(1, 41)) and on_disk == records
    first_of_second = json.loads(segments[1][1].read_bytes().splitlines()[0])
    last_of_first = json.loads(segments[0][1].read_bytes().splitlines()[-1])
    assert first_of_second["prev"] == last_of_first["hash"]  # the chain crosses the file boundary
    report = verify_audit(path)
    assert report.ok and report.records == 40 and len(report.files) == len(segments) + 1
    events = [json.loads(line)["event"] for line in checkpoints_path(path).read_bytes().splitlines()]
    assert events[0] == "start" and events[-1] == "stop" and events.count("rotate") == len(segments)


def test_a_record_bigger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_segment_bytes=300) as log:
        log.append({"i": 0})
        log.append({"big": "y" * 1000})
        log.append({"i": 2})
    assert verify_log(path).records == 3
    assert len(list_segments(path)) == 2


def test_reopening_continues_from_the_newest_segment_when_the_live_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_segment_bytes=400) as log:
        for i in range(6):
            last = log.append({"i": i, "pad": "z" * 80})
    # A crash between the rename and the creation of the new live file leaves no live file.
    if path.stat().st_size:
        os.rename(path, segment_path(path, len(list_segments(path)) + 1))
    else:
        path.unlink()
    assert not path.exists()
    with AuditLog(path, max_segment_bytes=400) as log:
        assert (log.last_seq, log.last_hash) == (6, last["hash"])
        log.append({"i": 6})
    assert verify_log(path).records == 7


def test_a_writer_follows_a_rotation_done_by_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_segment_bytes=600) as a, AuditLog(path) as b:
        for i in range(30):
            (a if i % 3 else b).append({"i": i, "pad": "q" * 60})  # b never rotates, a does
    assert len(list_segments(path)) >= 3
    records = _all(path)
    assert [r["seq"] for r in records] == list(range(1, 31))
    assert verify_log(path).ok


def test_first_record_ever_chains_to_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_segment_bytes=10) as log:
        first = log.append({"i": 0})
    assert first["prev"] == GENESIS_HASH and list_segments(path) == []  # an empty live file is never rotated


def test_a_torn_newest_segment_is_refused_not_extended(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_segment_bytes=300) as log:
        for i in range(5):
            log.append({"i": i, "pad": "w" * 100})
    newest = list_segments(path)[-1][1]
    path.write_bytes(b"")
    newest.chmod(0o600)
    newest.write_bytes(newest.read_bytes()[:-10])  # a torn end can only come from tampering here
    with pytest.raises(AuditWriteError, match="torn"):
        AuditLog(path)


def test_verify_walks_segments_when_the_live_file_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_segment_bytes=300) as log:
        for i in range(5):
            log.append({"i": i, "pad": "v" * 100})
    data = path.read_bytes()
    path.unlink()
    report = verify_log(path)
    assert report.ok and report.records == 5 - len(data.splitlines())
    with pytest.raises(OSError):
        verify_log(tmp_path / "nothing.jsonl")


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    for kwargs in ({"checkpoint_every": 0}, {"checkpoint_every": True}, {"max_segment_bytes": 0}):
        with pytest.raises(ValueError):
            AuditLog(tmp_path / "audit.jsonl", **kwargs)
