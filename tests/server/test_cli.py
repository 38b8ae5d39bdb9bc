"""The command line as a person uses it: the banner on a terminal, audit verify's exit codes."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path

from opsgate.audit import AuditLog
from tests.harness import server_env


def _opsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opsgate.server", *args], capture_output=True, text=True,
                          timeout=60, env=server_env())


def test_console_script_is_installed() -> None:
    exe = shutil.which("opsgate", path=str(Path(sys.executable).parent))
    assert exe, "the opsgate console script is missing from the environment"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("opsgate ")


def test_banner_on_a_terminal_says_what_it_is_and_how_to_connect(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsgate.server", "serve", "--audit-log", str(tmp_path / "a.jsonl")],
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=server_env(),
    )
    os.close(terminal)
    try:
        deadline = time.monotonic() + 30
        banner = ""
        assert proc.stderr is not None
        while "Ctrl-C" not in banner and time.monotonic() < deadline:
            banner += proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(controller)
    assert "MCP server" in banner and "mcpServers" in banner
    assert "audit log" in banner and "policy" in banner and "principal" in banner


def test_no_banner_without_a_terminal(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "opsgate.server", "serve", "--audit-log", str(tmp_path / "a.jsonl")],
        input="", capture_output=True, text=True, timeout=60, env=server_env(),
    )
    assert proc.returncode == 0
    for line in proc.stderr.splitlines():
        json.loads(line)


def test_audit_verify_exit_codes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for n in range(5):
            log.append({"stage": "decision", "n": n})
    assert _opsgate("audit", "verify", str(path)).returncode == 0
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"n":2', b'"n":7')
    path.write_bytes(b"\n".join(lines))
    proc = _opsgate("audit", "verify", str(path))
    assert proc.returncode == 1
    assert "line 3" in proc.stdout
    assert _opsgate("audit", "verify", str(tmp_path / "missing.jsonl")).returncode == 2


def test_doctor_reports_an_unreachable_cluster_and_a_broken_policy(tmp_path: Path) -> None:
    import socket

    from tests.harness import write_policy

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
    }))
    policy = write_policy(tmp_path / "policy", ["p, role:viewer, *, *, read, allow", "p, role:x, *, *, read, Deny"])
    started = time.monotonic()
    proc = _opsgate("doctor", "--kubeconfig", str(kubeconfig), "--policy", str(policy),
                    "--audit-log", str(tmp_path / "a.jsonl"))
    assert time.monotonic() - started < 5 + 3  # doctor's own bound is 5 s; the rest is interpreter start
    assert proc.returncode == 1
    rows = [line for line in proc.stdout.splitlines() if line.startswith("error")]
    assert any(f"127.0.0.1:{port}" in line for line in rows), proc.stdout
    assert any("policy.csv:2" in line for line in proc.stdout.splitlines()), proc.stdout


def test_config_prints_json_naming_an_executable_that_exists(tmp_path: Path) -> None:
    for client in ("claude", "vscode", "cursor"):
        proc = _opsgate("config", client, "--principal", "alice")
        assert proc.returncode == 0, proc.stderr
        snippet = json.loads(proc.stdout)
        entry = (snippet.get("mcpServers") or snippet["servers"])["opsgate"]
        assert Path(entry["command"]).is_absolute() and Path(entry["command"]).exists()
        assert entry["args"][:3] == ["serve", "--principal", "alice"]
    assert _opsgate("config", "claude", "--principal", "role:admin").returncode == 2
