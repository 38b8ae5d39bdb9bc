"""The progress bar of long audit reads (verify, export, report): on stderr when it is a terminal, never on stdout.

The terminal is a real pseudo-terminal (``pty``) on the child's stderr, with stdout a pipe as when
``opsgate audit export log > events.jsonl`` runs in a shell.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from opsgate.audit import verify_audit
from opsgate.audit.chain import GENESIS_HASH, seal_line
from opsgate.audit.cli import PROGRESS_MIN_BYTES, progress_wanted

BAR = "━"  # what rich's BarColumn draws


def test_progress_only_for_a_terminal_and_a_long_read() -> None:
    assert progress_wanted(True, "xterm-256color", PROGRESS_MIN_BYTES)
    assert progress_wanted(True, None, PROGRESS_MIN_BYTES)
    assert not progress_wanted(False, "xterm", PROGRESS_MIN_BYTES)  # a pipe, a file, CI logs
    assert not progress_wanted(True, "dumb", PROGRESS_MIN_BYTES)
    assert not progress_wanted(True, "xterm", PROGRESS_MIN_BYTES - 1)  # over in a moment: no bar


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chained log just over the bar's threshold (records made with the writer's own sealing)."""
    path = tmp_path_factory.mktemp("big") / "audit.jsonl"
    prev, seq, size = GENESIS_HASH, 0, 0
    padding = "x" * 400
    with path.open("wb") as out:
        while size <= PROGRESS_MIN_BYTES:
            seq += 1
            body = {"v": 2, "stage": "decision", "time": f"2026-01-01T00:{seq // 6000 % 60:02d}:00.000000Z",
                    "call_id": f"{seq:032x}", "principal": "alice", "tool": "whoami", "verb": "read",
                    "namespace": "-", "arguments": {"note": padding}, "decision": {"effect": "allow", "reason": "r"}}
            record, line = seal_line(body, seq, prev)
            out.write(line + b"\n")
            prev, size = record["hash"], size + len(line) + 1
    return path


def run(argv: list[str], terminal: bool, folder: Path) -> tuple[int, bytes, bytes]:
    """Run ``opsgate audit ARGV``: stdout a file (not a terminal, as ``> events.jsonl``); stderr a
    pseudo-terminal or a pipe. Returns (exit code, stdout, stderr)."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    command = [sys.executable, "-m", "opsgate.server", "audit", *argv]
    if not terminal:
        done = subprocess.run(command, capture_output=True, env=env, timeout=120, check=False)
        return done.returncode, done.stdout, done.stderr
    out = folder / "stdout"
    leader, follower = pty.openpty()
    with out.open("wb") as sink, subprocess.Popen(command, stdout=sink, stderr=follower, env=env) as child:
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        code = child.wait(timeout=120)
    os.close(leader)
    return code, out.read_bytes(), seen


@pytest.mark.parametrize("terminal", [True, False])
def test_export_bar_on_a_terminal_and_nothing_on_stdout_but_events(
    big_log: Path, terminal: bool, tmp_path: Path
) -> None:
    code, stdout, stderr = run(["export", str(big_log)], terminal, tmp_path)
    assert code == 0, stderr[-2000:]
    lines = stdout.decode().splitlines()
    assert len(lines) == len(big_log.read_bytes().splitlines())
    assert all(json.loads(line)["class_uid"] == 6003 for line in lines)  # nothing but events on stdout
    text = stderr.decode("utf-8", "replace")
    if terminal:
        assert BAR in text and "export" in text, text[-500:]
    else:
        assert stderr == b""  # no bar, no escape sequences in a pipe


@pytest.mark.parametrize("terminal", [True, False])
def test_verify_bar_on_a_terminal_only(big_log: Path, terminal: bool, tmp_path: Path) -> None:
    code, stdout, stderr = run(["verify", str(big_log)], terminal, tmp_path)
    assert code == 0, stdout + stderr
    assert stdout.decode().startswith("ok: ")
    assert (BAR in stderr.decode("utf-8", "replace")) is terminal


def test_verify_told_as_it_goes_finds_the_same(big_log: Path, tmp_path: Path) -> None:
    """With a progress callback a log checked in this process is cut into ranges: same verdict, same line."""
    told: list[int] = []
    plain, watched = verify_audit(big_log), verify_audit(big_log, progress=told.append)
    assert plain.ok and watched == plain
    assert len(told) > 1 and sum(told) == big_log.stat().st_size
    data = big_log.read_bytes()
    middle = data.index(b'"principal":"alice"', len(data) // 2)
    damaged = tmp_path / "audit.jsonl"
    damaged.write_bytes(data[:middle] + b'"principal":"alicf"' + data[middle + 19 :])
    plain, watched = verify_audit(damaged), verify_audit(damaged, progress=told.append)
    assert not plain.ok and plain.problem == "hash-mismatch"
    assert (watched, watched.file, watched.bad_seq) == (plain, plain.file, plain.bad_seq)
