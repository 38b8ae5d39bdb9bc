"""Signed checkpoints: their format, when they are written, the keys that sign them, and failures."""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from opsgate.audit import AuditLog, AuditWriteError, KeyRing, generate_keypair, verify_audit
from opsgate.audit.checkpoint import (
    Checkpoint,
    Ed25519Signer,
    HmacSigner,
    checkpoint_line,
    load_hmac_key,
    load_or_create_hmac_key,
    load_private_key,
    load_public_key,
    parse_checkpoint_line,
)
from opsgate.audit.segments import checkpoints_path, hmac_key_path


def _checkpoints(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in checkpoints_path(path).read_bytes().splitlines()]


def test_body_has_the_shape_of_a_transparency_log_checkpoint() -> None:
    checkpoint = Checkpoint("opsgate.audit/host/var/log/audit.jsonl", 42, "ab" * 32, "2025-06-01T00:00:00Z", "every")
    assert checkpoint.body() == (
        b"opsgate.audit/host/var/log/audit.jsonl\n42\n" + b"ab" * 32 + b"\ntime 2025-06-01T00:00:00Z\nevent every\n"
    )


def test_hmac_log_gets_a_0600_key_beside_it_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append({"i": 1})
        key_id = log.key_id
    key_file = hmac_key_path(path)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = load_hmac_key(key_file)
    assert len(key) == 32
    with AuditLog(path) as log:
        assert log.key_id == key_id  # the same key, not a new one
    for line in checkpoints_path(path).read_bytes().splitlines():  # an independent check with hmac itself
        signed = parse_checkpoint_line(line)
        expected = hmac.new(key, signed.checkpoint.body(), hashlib.sha256).digest()
        assert signed.alg == "hmac-sha256" and hmac.compare_digest(signed.signature, expected)
    assert stat.S_IMODE(checkpoints_path(path).stat().st_mode) == 0o600


def test_ed25519_checkpoints_verify_with_the_public_key_alone(tmp_path: Path) -> None:
    private, public, key_id = generate_keypair(tmp_path / "signing.pem")
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, signing_key=private) as log:
        log.append({"i": 1})
        assert log.key_id == f"ed25519 {key_id}"
    assert not hmac_key_path(path).exists()  # no HMAC key when a key pair is configured
    pem = load_pem_public_key(public.read_bytes())
    assert isinstance(pem, Ed25519PublicKey)
    for line in checkpoints_path(path).read_bytes().splitlines():
        record = json.loads(line)
        body = "".join(
            f"{line}\n"
            for line in (record["origin"], record["size"], record["hash"], f"time {record['time']}",
                         f"event {record['event']}")
        )
        pem.verify(base64.b64decode(record["sig"]), body.encode())  # raises if not signed by that key
        assert record["alg"] == "ed25519" and record["key_id"] == key_id and record["v"] == 1


def test_checkpoints_at_start_every_n_and_stop(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, checkpoint_every=5) as log:
        for i in range(12):
            log.append({"i": i})
    with AuditLog(path, checkpoint_every=5):
        pass
    seen = [(c["event"], c["size"]) for c in _checkpoints(path)]
    assert seen == [("start", 0), ("every", 5), ("every", 10), ("stop", 12), ("start", 12), ("stop", 12)]
    heads = {c["size"]: c["hash"] for c in _checkpoints(path)}
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert all(heads[seq] == records[seq - 1]["hash"] for seq in heads if seq)
    origin = _checkpoints(path)[0]["origin"]
    assert isinstance(origin, str) and origin.startswith("opsgate.audit/") and origin.endswith(str(path))


def test_keygen_writes_a_private_0600_and_a_public_key_and_never_overwrites(tmp_path: Path) -> None:
    private, public, key_id = generate_keypair(tmp_path / "k")
    assert public == tmp_path / "k.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    before = private.read_bytes()
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "k")
    assert private.read_bytes() == before
    assert isinstance(load_private_key(private), Ed25519Signer)
    assert len(key_id) == 8
    with pytest.raises(ValueError):
        load_public_key(private)  # a private key is not a public key
    with pytest.raises(ValueError):
        load_private_key(public)


def test_a_bad_signing_key_refuses_to_open(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(AuditWriteError, match="checkpoint key"):
        AuditLog(tmp_path / "audit.jsonl", signing_key=tmp_path / "junk.pem")
    with pytest.raises(AuditWriteError, match="checkpoint key"):
        AuditLog(tmp_path / "audit.jsonl", signing_key=tmp_path / "missing.pem")


def test_hmac_key_files_are_checked(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("abcd\n")
    (tmp_path / "nothex").write_text("zz" * 32)
    for name in ("short", "nothex"):
        with pytest.raises(ValueError):
            load_hmac_key(tmp_path / name)
    key = load_or_create_hmac_key(tmp_path / "new")
    assert load_or_create_hmac_key(tmp_path / "new") == key
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_keyring_says_which_is_which(tmp_path: Path) -> None:
    private, public, _ = generate_keypair(tmp_path / "a")
    other, _, _ = generate_keypair(tmp_path / "b")
    stamp = Checkpoint("o", 1, "0" * 64, "t", "start")
    ring = KeyRing((load_public_key(public),), (b"k" * 32,))
    assert ring.check(parse_checkpoint_line(checkpoint_line(stamp, load_private_key(private)))) is None
    assert ring.check(parse_checkpoint_line(checkpoint_line(stamp, load_private_key(other)))) == "unknown-key"
    assert ring.check(parse_checkpoint_line(checkpoint_line(stamp, HmacSigner(b"k" * 32)))) is None
    assert ring.check(parse_checkpoint_line(checkpoint_line(stamp, HmacSigner(b"x" * 32)))) == "unknown-key"
    line = json.loads(checkpoint_line(stamp, load_private_key(private)))
    line["size"] = 2
    assert ring.check(parse_checkpoint_line(json.dumps(line).encode())) == "bad-signature"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: {**r, "v": 2},
        lambda r: {**r, "size": -1},
        lambda r: {**r, "hash": "xyz"},
        lambda r: {**r, "sig": "***"},
        lambda r: {k: v for k, v in r.items() if k != "origin"},
    ],
)
def test_malformed_checkpoint_lines_are_refused(mangle: object) -> None:
    good = json.loads(checkpoint_line(Checkpoint("o", 1, "0" * 64, "t", "stop"), HmacSigner(b"k" * 32)))
    with pytest.raises(ValueError):
        parse_checkpoint_line(json.dumps(mangle(good)).encode())  # type: ignore[operator]


def test_a_torn_checkpoint_line_is_left_alone_and_ignored(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append({"i": 1})
    with checkpoints_path(path).open("ab") as stream:
        stream.write(b'{"alg":"hmac-sha256","event":"ev')  # a crash while writing a checkpoint
    with AuditLog(path) as log:
        log.append({"i": 2})
    lines = checkpoints_path(path).read_bytes().splitlines()
    assert lines[2] == b'{"alg":"hmac-sha256","event":"ev'  # kept, on a line of its own
    report = verify_audit(path, keys=KeyRing((), (load_hmac_key(hmac_key_path(path)),)))
    assert report.ok and report.checkpoints is not None and report.checkpoints.unreadable == 1


def test_no_checkpoint_at_open_means_no_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints_path(tmp_path / "audit.jsonl").mkdir()  # cannot be opened as a file
    with pytest.raises(AuditWriteError, match="checkpoint"):
        AuditLog(tmp_path / "audit.jsonl")


def test_a_failed_periodic_checkpoint_never_fails_a_durable_append_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    target = checkpoints_path(path)
    with AuditLog(path, checkpoint_every=3) as log:
        real_fsync = os.fsync
        failing = {"on": True}

        def fsync(fd: int) -> None:
            st = os.fstat(fd)
            ours = target.exists() and (st.st_dev, st.st_ino) == (target.stat().st_dev, target.stat().st_ino)
            if failing["on"] and ours:
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        for i in range(4):
            log.append({"i": i})  # seq 3's checkpoint fails: the append still succeeds
        failing["on"] = False
        log.append({"i": 4})  # the owed checkpoint is written after this batch
    events = [(c["event"], c["size"]) for c in _checkpoints(path)]
    assert ("every", 5) in events and events[-1] == ("stop", 5)
    assert verify_audit(path).ok


def test_a_key_copy_left_by_a_killed_creator_is_swept(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".audit.jsonl.hmac-key.{int(dead.stdout)}.abcd1234"
    stale.write_text("ab" * 32)
    mine = tmp_path / f".audit.jsonl.hmac-key.{os.getpid()}.ffff0000"  # a live creator's file stays
    mine.write_text("cd" * 32)
    load_or_create_hmac_key(hmac_key_path(tmp_path / "audit.jsonl"))
    assert not stale.exists() and mine.exists()
