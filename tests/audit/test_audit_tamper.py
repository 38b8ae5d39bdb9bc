"""The tamper matrix: every way of changing a signed, rotated audit log is detected, with the right kind named.

Each case runs twice: verify in this process, and verify split into ranges checked by
worker processes (the path large logs take), which must reach the same verdict.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import opsgate.audit.verify as verify_module
from opsgate.audit import AuditLog, KeyRing, canonical, generate_keypair, seal, verify_audit, verify_log
from opsgate.audit.checkpoint import load_public_key
from opsgate.audit.segments import checkpoints_path, hmac_key_path, list_segments, segment_path

RECORDS = 120
EVERY = 10
SEGMENT_BYTES = 4000


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    private, public, _ = generate_keypair(folder / "audit-key")
    return private, public


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Path:
    """A log of RECORDS records in several segments, checkpointed every EVERY records, signed with Ed25519."""
    folder = tmp_path_factory.mktemp("pristine")
    path = folder / "audit.jsonl"
    with AuditLog(path, signing_key=keys[0], checkpoint_every=EVERY, max_segment_bytes=SEGMENT_BYTES) as log:
        for i in range(RECORDS):
            log.append({"stage": "decision", "i": i, "tool": "scale", "pad": "x" * (i % 7) * 20})
    assert len(list_segments(path)) >= 4
    return path


@pytest.fixture(params=["serial", "parallel"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "parallel":
        monkeypatch.setattr(verify_module, "MIN_RANGE_BYTES", 700)  # several ranges per segment
    return str(request.param)


@pytest.fixture
def log_path(tmp_path: Path, pristine: Path) -> Path:
    """A private copy of the pristine log (segments, checkpoints) to tamper with."""
    for source in pristine.parent.iterdir():
        shutil.copy2(source, tmp_path / source.name)
        (tmp_path / source.name).chmod(0o600)
    return tmp_path / pristine.name


def check(path: Path, mode: str, public: Path | None = None, **kwargs: Any) -> Any:
    ring = KeyRing((load_public_key(public),)) if public else None
    return verify_audit(path, keys=ring, workers=2 if mode == "parallel" else 1, **kwargs)


def files(path: Path) -> list[Path]:
    return [p for _, p in list_segments(path)] + [path]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write(path: Path, data: list[bytes]) -> None:
    path.chmod(0o600)  # rotated segments are read-only
    path.write_bytes(b"".join(data))


def locate(path: Path, seq: int) -> tuple[Path, int]:
    """The file and 1-based line holding record ``seq``."""
    for candidate in files(path):
        for number, line in enumerate(lines(candidate), start=1):
            if json.loads(line)["seq"] == seq:
                return candidate, number
    raise AssertionError(seq)


def all_records(path: Path) -> Iterator[dict[str, Any]]:
    for candidate in files(path):
        for line in lines(candidate):
            yield json.loads(line)


def expect(report: Any, problem: str, file: Path | None = None, line: int | None = None) -> None:
    assert not report.ok and report.problem == problem, report
    if file is not None:
        assert report.file == file, report
    if line is not None:
        assert report.first_bad_line == line, report


# --- intact ---------------------------------------------------------------------------------------


def test_pristine_log_verifies_with_its_key(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    report = check(log_path, mode, keys[1])
    assert report.ok and report.records == RECORDS and report.head_seq == RECORDS, report
    assert report.files == tuple(files(log_path))
    summary = report.checkpoints
    assert summary is not None and summary.trusted == summary.total >= RECORDS // EVERY
    assert summary.latest == RECORDS  # the stop checkpoint covers the whole log
    assert verify_log(log_path, workers=2 if mode == "parallel" else 1).ok


# --- the matrix -----------------------------------------------------------------------------------


def test_edit_one_field(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    where, number = locate(log_path, 57)
    data = lines(where)
    data[number - 1] = data[number - 1].replace(b'"tool":"scale"', b'"tool":"rollback"')
    write(where, data)
    report = check(log_path, mode, keys[1])
    expect(report, "hash-mismatch", where, number)
    assert report.bad_seq == 57 and report.records == 56


def test_delete_a_record(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    where, number = locate(log_path, 33)
    data = lines(where)
    del data[number - 1]
    write(where, data)
    report = check(log_path, mode, keys[1])
    if number == len(lines(where)) + 1:  # it was the segment's last line: the gap shows at the next file
        expect(report, "missing-segment")
    else:
        expect(report, "seq-gap", where, number)
        assert report.detail == "expected seq 33, found 34"


def test_insert_a_forged_record_chained_to_its_predecessor(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    signed = {json.loads(line)["size"] for line in lines(checkpoints_path(log_path))}
    target = next(s for s in range(41, 60) if s not in signed)  # not checkpointed: the chain itself must catch it
    where, number = locate(log_path, target)
    data = lines(where)
    before = json.loads(data[number - 2])
    forged = seal({"stage": "decision", "tool": "rollback", "forged": True}, before["seq"] + 1, before["hash"])
    data.insert(number - 1, canonical(forged) + b"\n")
    write(where, data)
    # The forgery itself is self-consistent; the real record 43 after it no longer fits.
    expect(check(log_path, mode, keys[1]), "seq-gap", where, number + 1)


def rechain(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite the whole log as ONE file holding a valid chain of ``records`` (bodies re-sealed)."""
    for _, segment in list_segments(path):
        segment.chmod(0o600)
        segment.unlink()
    out, prev = [], "0" * 64
    for seq, record in enumerate(records, start=1):
        body = {k: v for k, v in record.items() if k not in ("seq", "prev", "hash")}
        sealed = seal(body, seq, prev)
        prev = sealed["hash"]
        out.append(canonical(sealed) + b"\n")
    write(path, out)


def test_insert_a_forged_record_and_recompute_the_whole_chain(
    log_path: Path, keys: tuple[Path, Path], mode: str
) -> None:
    records = list(all_records(log_path))
    records.insert(25, {"stage": "decision", "tool": "rollback", "forged": True})  # becomes seq 26
    signed = {json.loads(line)["size"] for line in lines(checkpoints_path(log_path))}
    rechain(log_path, records)
    assert verify_log(log_path).ok  # the chain alone cannot tell
    report = check(log_path, mode, keys[1])
    expect(report, "checkpoint-mismatch", log_path)
    assert report.bad_seq == min(s for s in signed if s >= 26)  # the first checkpointed seq from the insert on


def test_swap_two_records(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    where, number = locate(log_path, 80)
    data = lines(where)
    if number == len(data):
        where, number = locate(log_path, 79)
        data = lines(where)
    data[number - 1], data[number] = data[number], data[number - 1]
    write(where, data)
    expect(check(log_path, mode, keys[1]), "seq-gap", where, number)


def test_truncate_the_tail(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    data = lines(log_path)
    write(log_path, data[: len(data) - 3])
    assert verify_log(log_path).ok  # a shorter chain is still a chain
    report = check(log_path, mode, keys[1])
    expect(report, "truncated", log_path, len(data) - 2)
    assert report.head_seq == RECORDS - 3 and str(RECORDS) in (report.detail or "")


def test_truncate_whole_segments_off_the_end(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    segments = list_segments(log_path)
    newest = segments[-1][1]
    newest.chmod(0o600)
    log_path.unlink()
    newest.rename(log_path)  # the last segment becomes the live file: a clean, shorter chain
    expect(check(log_path, mode, keys[1]), "truncated", log_path)


def test_replace_the_whole_log_with_a_valid_fresh_chain(
    log_path: Path, keys: tuple[Path, Path], mode: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fresh = tmp_path_factory.mktemp("fresh") / "audit.jsonl"
    with AuditLog(fresh, checkpoint_every=EVERY) as log:  # its own HMAC key: the forger has no Ed25519 key
        for i in range(RECORDS + 5):
            log.append({"stage": "decision", "i": i, "tool": "whoami"})
    for _, segment in list_segments(log_path):
        segment.chmod(0o600)
        segment.unlink()
    shutil.copy(fresh, log_path)
    report = check(log_path, mode, keys[1])
    expect(report, "checkpoint-mismatch", log_path, EVERY)  # record 10 is not the record 10 that was signed

    # The forger also brings checkpoints for the fresh chain: signed by a key the reviewer does not hold.
    shutil.copy(checkpoints_path(fresh), checkpoints_path(log_path))
    expect(check(log_path, mode, keys[1]), "unknown-key", checkpoints_path(log_path), 1)
    # ...or deletes the checkpoints altogether.
    checkpoints_path(log_path).unlink()
    expect(check(log_path, mode, keys[1]), "no-checkpoints")


def test_remove_a_segment(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    segments = list_segments(log_path)
    gone = segments[1][1]
    gone.chmod(0o600)
    gone.unlink()
    report = check(log_path, mode, keys[1])
    expect(report, "missing-segment", segments[2][1], 1)
    assert gone.name in (report.detail or "")


def test_remove_the_newest_segment(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    gone = list_segments(log_path)[-1][1]
    gone.chmod(0o600)
    gone.unlink()
    expect(check(log_path, mode, keys[1]), "missing-segment", log_path, 1)


def test_remove_the_first_segment(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    first = segment_path(log_path, 1)
    first.chmod(0o600)
    first.unlink()
    report = check(log_path, mode, keys[1])
    expect(report, "missing-segment", segment_path(log_path, 2), 1)
    assert first.name in (report.detail or "")


# --- the checkpoints file itself ------------------------------------------------------------------


def test_edited_checkpoint_has_a_bad_signature(log_path: Path, keys: tuple[Path, Path], mode: str) -> None:
    target = checkpoints_path(log_path)
    data = lines(target)
    record = json.loads(data[2])
    record["time"] = "2020-01-01T00:00:00.000000Z"
    data[2] = canonical(record) + b"\n"
    write(target, data)
    expect(check(log_path, mode, keys[1]), "bad-signature", target, 3)


def test_checkpoints_are_compared_even_without_a_key(log_path: Path, mode: str) -> None:
    """No key: a careless cut is still caught, and the report says signatures were not checked."""
    data = lines(log_path)
    write(log_path, data[:-1])
    report = check(log_path, mode)
    expect(report, "truncated")
    assert report.checkpoints is not None and report.checkpoints.unchecked > 0 and not report.checkpoints.keys


def test_a_copy_of_the_checkpoints_kept_elsewhere_is_used(
    log_path: Path, keys: tuple[Path, Path], mode: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The attacker rewrote the log AND cut the local checkpoints; the reviewer's copy still catches it."""
    copy = tmp_path_factory.mktemp("witness") / "checkpoints"
    shutil.copy(checkpoints_path(log_path), copy)
    data = lines(log_path)
    write(log_path, data[:-4])
    cut = [line for line in lines(checkpoints_path(log_path)) if json.loads(line)["size"] <= RECORDS - 4]
    write(checkpoints_path(log_path), cut)
    assert check(log_path, mode, keys[1]).ok  # consistent with the local, cut checkpoints
    expect(check(log_path, mode, keys[1], checkpoints=copy), "truncated")


def test_hmac_key_beside_the_log_is_not_strict_about_other_keys(log_path: Path, mode: str) -> None:
    """An HMAC key file found beside an Ed25519-signed log cannot vouch for its checkpoints, nor condemn them."""
    from opsgate.audit.checkpoint import load_or_create_hmac_key

    key = load_or_create_hmac_key(hmac_key_path(log_path))
    report = verify_audit(log_path, keys=KeyRing((), (key,), strict=False), workers=1 if mode == "serial" else 2)
    assert report.ok and report.checkpoints is not None
    assert report.checkpoints.trusted == 0 and report.checkpoints.unchecked == report.checkpoints.total
