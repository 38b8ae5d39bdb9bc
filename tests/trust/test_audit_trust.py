"""Issue 15, the audit log (items 1 and 2): no forged log passes verify, and no writer signs a forged head.

The attacker can write the log folder (the server's user, say) but not read an
Ed25519 private key kept elsewhere. Each test builds a real log through a real
server over stdio, forges it as the issue describes, then restarts the real
server (``opsgate serve``, stdin closed: it would start, sign, and stop) and
runs the real ``opsgate audit verify``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from opsgate.audit import canonical, seal
from tests.harness import serve, server_env

DENIED_CALL = {"name": "coredns", "namespace": "kube-system", "replicas": 0}


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


def _records(path: Path) -> list[dict[str, Any]]:
    """The records; a torn line a crash left (kept, sealed by a recovery record) is not one."""
    found = []
    for line in _lines(path):
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


async def _log_with_a_denial(tmp_path: Path, *flags: str) -> Path:
    """A real session: alice (a viewer under the shipped policy) tries to scale coredns in kube-system."""
    async with serve(tmp_path, "--principal", "alice", *flags) as s:
        result = await s.call("scale", DENIED_CALL)
        assert result.is_error
    denials = [r for r in _records(s.audit_log) if r["stage"] == "decision" and r["namespace"] == "kube-system"]
    assert [r["decision"]["effect"] for r in denials] == ["deny"]
    return s.audit_log


def _forge(path: Path, *, unmark: bool = False) -> None:
    """Turn every deny into an allow and recompute the whole chain, as an attacker with write access would.

    ``unmark``: also drop what start records say about checkpoints.
    """
    out: list[bytes] = []
    prev = "0" * 64
    for record in _records(path):
        body = {k: v for k, v in record.items() if k not in ("seq", "prev", "hash")}
        if unmark:
            body.pop("checkpoints", None)
        if body.get("stage") == "decision" and body["decision"]["effect"] == "deny":
            body["decision"] = {**body["decision"], "effect": "allow", "reason": "allowed by role:admin"}
        sealed = seal(body, len(out) + 1, prev)
        prev = sealed["hash"]
        out.append(canonical(sealed) + b"\n")
    path.write_bytes(b"".join(out))


def _checkpoints(path: Path) -> Path:
    return path.with_name(path.name + ".checkpoints")


def _restart(log: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``opsgate serve`` on the same log with stdin closed: a healthy server starts, signs its head, and stops."""
    home = log.parent / "home"
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "opsgate.server", "serve", "--audit-log", str(log), "--principal", "alice", *flags],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        env=server_env({"HOME": str(home)}),
    )


def _verify(log: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsgate.server", "audit", "verify", str(log), *flags],
        capture_output=True, text=True, timeout=120, env=server_env(),
    )


def _keygen(folder: Path) -> Path:
    key = folder / "signing.key"
    done = subprocess.run([sys.executable, "-m", "opsgate.server", "audit", "keygen", str(key)],
                          capture_output=True, text=True, timeout=60, env=server_env())
    assert done.returncode == 0, done.stderr
    return key


@pytest.fixture(scope="module")
def hmac_origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real log with one denial, checkpoints signed with the default HMAC key beside it (built once, copied)."""
    folder = tmp_path_factory.mktemp("hmac")
    anyio.run(partial(_log_with_a_denial, folder))
    return folder


@pytest.fixture(scope="module")
def ed25519_origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with an Ed25519 key (``signing.key``, ``signing.key.pub``): no key lies beside the log."""
    folder = tmp_path_factory.mktemp("ed25519")
    key = _keygen(folder)
    anyio.run(partial(_log_with_a_denial, folder, "--audit-signing-key", str(key)))
    return folder


def _copy(origin: Path, tmp_path: Path) -> Path:
    """A private copy of a built log folder; returns its live file."""
    folder = tmp_path / "log"
    shutil.copytree(origin, folder)
    return folder / "audit.jsonl"


def _ed(log: Path) -> tuple[str, Path]:
    """(the --audit-signing-key flag, the public key) of an Ed25519 log copy."""
    return "--audit-signing-key=" + str(log.with_name("signing.key")), log.with_name("signing.key.pub")


def _assert_refused(done: subprocess.CompletedProcess[str], log: Path, before: bytes, cp_before: bytes) -> None:
    """The server did not serve, said why and what to do, and wrote nothing: no record, no checkpoint."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "refusing to sign its head" in done.stderr, done.stderr
    assert "opsgate audit verify" in done.stderr and "move audit.jsonl* aside" in done.stderr, done.stderr
    assert log.read_bytes() == before
    assert _checkpoints(log).read_bytes() == cp_before


def test_item1_restart_refuses_a_rewritten_log_whose_checkpoints_were_emptied_ed25519(
    ed25519_origin: Path, tmp_path: Path
) -> None:
    """Issue 15 item 1: rewrite the log (deny -> allow, hashes recomputed), empty the checkpoints, restart.

    Before the fix the restart signed the forged head and `verify --pubkey` passed.
    """
    log = _copy(ed25519_origin, tmp_path)
    flag, pub = _ed(log)
    assert _verify(log, "--pubkey", str(pub)).returncode == 0
    _forge(log)
    _checkpoints(log).write_bytes(b"")
    forged = log.read_bytes()
    done = _restart(log, flag)
    _assert_refused(done, log, forged, b"")
    assert "no checkpoint signed by this server's key (ed25519 " in done.stderr
    checked = _verify(log, "--pubkey", str(pub))
    assert checked.returncode == 1 and "no-checkpoints" in checked.stdout, checked.stdout


def test_item1_restart_refuses_a_rewritten_log_whose_checkpoints_were_emptied_hmac(
    hmac_origin: Path, tmp_path: Path
) -> None:
    """Issue 15 item 1, with the default HMAC key: the same attack; the restart refuses, verify says damaged."""
    log = _copy(hmac_origin, tmp_path)
    _forge(log)
    _checkpoints(log).write_bytes(b"")
    forged = log.read_bytes()
    done = _restart(log)
    _assert_refused(done, log, forged, b"")
    assert "no checkpoint signed by this server's key (hmac-sha256 " in done.stderr
    checked = _verify(log)
    assert checked.returncode == 1 and "no-checkpoints" in checked.stdout, checked.stdout


def test_item1_restart_refuses_a_rewritten_log_that_its_checkpoints_contradict(
    hmac_origin: Path, tmp_path: Path
) -> None:
    """Issue 15 item 1: the checkpoints are kept but the log was rewritten; the restart names the checkpoint."""
    log = _copy(hmac_origin, tmp_path)
    _forge(log)
    forged, cp = log.read_bytes(), _checkpoints(log).read_bytes()
    done = _restart(log)
    _assert_refused(done, log, forged, cp)
    assert "does not match its latest checkpoint, the stop checkpoint of " in done.stderr, done.stderr


def test_item1_restart_refuses_a_log_cut_behind_its_checkpoints(hmac_origin: Path, tmp_path: Path) -> None:
    """Issue 15 item 1: records cut off the end (the denial and the stop) with the checkpoints intact."""
    log = _copy(hmac_origin, tmp_path)
    lines = _lines(log)
    cut = b"".join(line + b"\n" for line in lines[:-2])
    log.write_bytes(cut)
    cp = _checkpoints(log).read_bytes()
    done = _restart(log)
    _assert_refused(done, log, cut, cp)
    assert f"ends at seq {len(lines) - 2}" in done.stderr and "records were cut off the end" in done.stderr


def test_item1_an_honest_log_restarts_and_its_start_record_names_the_checkpoint_key(
    ed25519_origin: Path, tmp_path: Path
) -> None:
    """Issue 15 item 1: the check refuses forgeries, not logs: an untouched log (and a crash's torn line) restarts."""
    log = _copy(ed25519_origin, tmp_path)
    flag, pub = _ed(log)
    # A crash mid-append: the last line torn, its stop checkpoint never written.
    lines = _lines(log)
    log.write_bytes(b"".join(line + b"\n" for line in lines[:-1]) + lines[-1][:40])
    cps = _lines(_checkpoints(log))
    _checkpoints(log).write_bytes(b"".join(c + b"\n" for c in cps if json.loads(c)["size"] < len(lines)))
    done = _restart(log, flag)
    assert done.returncode == 0, done.stderr
    starts = [r for r in _records(log) if r["stage"] == "start"]
    assert len(starts) == 2
    assert all(r["checkpoints"]["alg"] == "ed25519" and len(r["checkpoints"]["key_id"]) == 8 for r in starts)
    checked = _verify(log, "--pubkey", str(pub))
    assert checked.returncode == 0, checked.stdout


@pytest.mark.anyio
async def test_item1_a_log_rewritten_under_a_running_server_is_neither_extended_nor_signed(
    hmac_origin: Path, tmp_path: Path
) -> None:
    """Issue 15 item 1, while serving: the log is rewritten in place (same file, deny -> allow, hashes
    recomputed, one record more). The next call is refused for want of an audit record, and no checkpoint
    the server writes afterwards signs a forged record. Before the fix the writer chained onto the forged
    tail and its stop checkpoint signed it."""
    log = _copy(hmac_origin, tmp_path)
    async with serve(log.parent, "--principal", "alice") as s:
        assert not (await s.call("whoami")).is_error
        records = _records(log)
        _forge(log)
        extra = seal({"v": 2, "stage": "decision", "time": records[-1]["time"], "note": "forged"},
                     len(records) + 1, _records(log)[-1]["hash"])
        with log.open("r+b") as fh:  # in place: the same file, longer than before
            fh.seek(0, 2)
            fh.write(canonical(extra) + b"\n")
        forged = {r["hash"] for r in _records(log)} - {r["hash"] for r in records}
        refused = await s.call("whoami")
        assert refused.is_error and '"code":"audit_unavailable"' in refused.content[0].text
    signed = {json.loads(line)["hash"] for line in _lines(_checkpoints(log))}
    assert not signed & forged, "a checkpoint signs a forged record"
    assert "rewritten under this writer" in s.stderr_path.read_text()


def test_item2_default_verify_fails_a_cut_log_whose_checkpoints_were_deleted(hmac_origin: Path, tmp_path: Path) -> None:
    """Issue 15 item 2: tail cut, checkpoints file deleted, HMAC key beside the log: damaged, not a warning.

    Before the fix: exit 0 and one warning line.
    """
    log = _copy(hmac_origin, tmp_path)
    lines = _lines(log)
    assert json.loads(lines[-2])["stage"] == "decision"
    log.write_bytes(b"".join(line + b"\n" for line in lines[:-2]))  # the denial and the stop are gone
    _checkpoints(log).unlink()
    checked = _verify(log)
    assert checked.returncode == 1, checked.stdout
    assert "no-checkpoints" in checked.stdout and "the checkpoints were removed" in checked.stdout
    _forge(log, unmark=True)  # and the start record no longer says it was checkpointed: the key beside still does
    checked = _verify(log)
    assert checked.returncode == 1, checked.stdout
    assert "no-checkpoints" in checked.stdout and "hmac-key lies beside it" in checked.stdout


def test_item2_default_verify_fails_a_rewritten_log_whose_start_record_says_it_was_checkpointed(
    ed25519_origin: Path, tmp_path: Path
) -> None:
    """Issue 15 item 2: Ed25519 log (no key beside it), rewritten, checkpoints emptied, verify run without a key:
    the start records say checkpoints must exist, so their absence is damage."""
    log = _copy(ed25519_origin, tmp_path)
    assert not log.with_name(log.name + ".hmac-key").exists()
    _forge(log)
    _checkpoints(log).write_bytes(b"")
    checked = _verify(log)
    assert checked.returncode == 1, checked.stdout
    assert "no-checkpoints" in checked.stdout and "start records say it is checkpointed (key ed25519 " in checked.stdout
