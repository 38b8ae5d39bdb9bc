"""``opsgate config``: each client's snippet is JSON, names this installation's executable, and works."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from opsgate.server.clientconfig import (
    CLIENTS,
    client_config,
    config_paths_hint,
    render_client_config,
    server_command,
)
from tests.harness import server_env


def _entry(client: str, config: dict[str, Any]) -> dict[str, Any]:
    key = "servers" if client == "vscode" else "mcpServers"
    assert list(config) == [key]
    assert list(config[key]) == ["opsgate"]
    entry: dict[str, Any] = config[key]["opsgate"]
    return entry


@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_gets_json_naming_an_absolute_executable_that_exists(client: Any, tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text("p, role:viewer, *, *, read, allow\n")
    text = render_client_config(client, principal="alice", policy=policy, audit_log=tmp_path / "logs" / "a.jsonl")
    entry = _entry(client, json.loads(text))
    command = Path(entry["command"])
    assert command.is_absolute() and command.is_file() and os.access(command, os.X_OK)
    # This installation's, not whatever `opsgate` is first on PATH.
    assert command.parent == Path(sys.executable).parent or command == Path(os.path.abspath(sys.executable))
    args = entry["args"]
    assert "serve" in args
    assert args[args.index("--principal") + 1] == "alice"
    assert args[args.index("--policy") + 1] == str(policy)
    assert args[args.index("--audit-log") + 1] == str(tmp_path / "logs" / "a.jsonl")
    if client == "vscode":
        assert entry["type"] == "stdio"
    else:
        assert "type" not in entry


def test_relative_and_home_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.csv").write_text("p, role:viewer, *, *, read, allow\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    args = _entry("cursor", client_config("cursor", principal=None, policy=Path("p.csv"),
                                          audit_log=Path("~/audit.jsonl")))["args"]
    assert args[args.index("--policy") + 1] == str(tmp_path / "p.csv")
    assert args[args.index("--audit-log") + 1] == str(tmp_path / "audit.jsonl")


def test_without_options_the_server_gets_only_serve() -> None:
    entry = _entry("claude", client_config("claude", principal=None, policy=None, audit_log=None))
    assert entry["args"][-1] == "serve" and "--principal" not in entry["args"]


@pytest.mark.parametrize("bad", ["role:admin", "a,b", "two words", "*", ""])
def test_a_bad_principal_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="principal"):
        client_config("claude", principal=bad, policy=None, audit_log=None)


def test_a_missing_policy_and_an_unknown_client_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        client_config("vscode", principal=None, policy=tmp_path / "nope.csv", audit_log=None)
    with pytest.raises(ValueError, match="choose one of"):
        client_config("emacs", principal=None, policy=None, audit_log=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not exist"):
        client_config("cursor", principal=None, policy=None, audit_log=None, executable=tmp_path / "opsgate")


def test_the_console_script_is_preferred_and_the_interpreter_is_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = server_command()
    assert installed == [str((Path(sys.executable).parent / "opsgate").resolve())]
    # An interpreter with no opsgate script beside it: `python -m opsgate.server`, the path kept as named
    # (resolving a venv's python symlink would leave the venv).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    assert server_command() == [str(bindir / "python"), "-m", "opsgate.server"]
    entry = _entry("vscode", client_config("vscode", principal="bob", policy=None, audit_log=None))
    assert entry["command"] == str(bindir / "python")
    assert entry["args"] == ["-m", "opsgate.server", "serve", "--principal", "bob"]


@pytest.mark.parametrize("client", CLIENTS)
def test_paths_hint_names_the_file_per_os(client: Any) -> None:
    hint = config_paths_hint(client)
    expected = {"claude": ["claude_desktop_config.json", "macOS", "Windows"],
                "vscode": [".vscode/mcp.json", "MCP: Open User Configuration"],
                "cursor": [".cursor/mcp.json", "~/.cursor/mcp.json"]}[client]
    for word in expected:
        assert word in hint


@pytest.mark.stdio  # the server is the snippet's command, which tests/conftest.py cannot see
def test_the_snippet_starts_a_server_an_mcp_client_can_talk_to(tmp_path: Path) -> None:
    """Render in a fresh process (as `opsgate config` will), then start exactly what the snippet says."""
    audit_log = tmp_path / "audit.jsonl"
    code = (
        "import sys; from pathlib import Path\n"
        "from opsgate.server.clientconfig import render_client_config\n"
        "print(render_client_config('claude', principal='carol', policy=None, audit_log=Path(sys.argv[1])))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(audit_log)], capture_output=True, text=True,
                          timeout=60, env=server_env(), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    entry = _entry("claude", json.loads(proc.stdout))
    initialize = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}})
    # A client spawns the command with its own cwd and environment: use neither the repo's nor our PATH.
    env = {k: v for k, v in server_env().items() if k != "PATH"} | {"PATH": "/usr/bin:/bin"}
    served = subprocess.run([entry["command"], *entry["args"]], input=initialize + "\n", capture_output=True,
                            text=True, timeout=60, env=env, cwd="/")
    assert served.returncode == 0, served.stderr
    answer = json.loads(served.stdout.splitlines()[0])
    assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"]
    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    assert records and records[0]["stage"] == "start" and "carol" in json.dumps(records[0])


def _config_claude(command: str) -> dict[str, Any]:
    """Run an `opsgate config claude ...` command line as printed in the README or the banner."""
    words = shlex.split(command)
    assert words[:3] == ["opsgate", "config", "claude"], command
    done = subprocess.run([sys.executable, "-m", "opsgate.server", *words[1:]], capture_output=True, text=True,
                          timeout=60, env=server_env())
    assert done.returncode == 0, done.stderr
    return _entry("claude", json.loads(done.stdout))


def _banner(tmp_path: Path, *flags: str) -> str:
    """The banner `opsgate serve` prints when its stdin is a terminal."""
    terminal, user_side = os.openpty()
    stderr = tmp_path / "banner.stderr"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "opsgate.server", "serve", *flags], stdin=user_side,
                                stdout=subprocess.DEVNULL, stderr=err, env=server_env({"HOME": str(home)}))
    os.close(user_side)
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C" not in stderr.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, stderr.read_text()
            time.sleep(0.05)
    finally:
        os.close(terminal)  # the terminal hangs up: the server reads the end of its input and stops
        proc.wait(timeout=30)
    return stderr.read_text()


def test_the_readme_the_config_command_and_the_banner_show_the_same_snippet(tmp_path: Path) -> None:
    """Issue 14 "Messages disagree": the README's snippet is what the command it names prints, and the banner's
    is what the command it names prints, for the same options (only paths differ)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = re.search(r"`(opsgate config claude [^`]+)` prints:\s*```json\n(.+?)\n```", readme, flags=re.S)
    assert found, "the README names an `opsgate config claude ...` command and shows what it prints"
    readme_command, readme_entry = found.group(1), _entry("claude", json.loads(found.group(2)))
    printed = _config_claude(readme_command)
    assert readme_entry["args"] == printed["args"]
    assert Path(readme_entry["command"]).name == Path(printed["command"]).name == "opsgate"

    audit_log = tmp_path / "audit.jsonl"
    banner = _banner(tmp_path, "--principal", "alice", "--audit-log", str(audit_log))
    said = re.search(r"`(opsgate config claude [^`]+)`", banner)
    shown = re.search(r'^\s*"opsgate": (\{.*\})$', banner, flags=re.M)
    assert said and shown, banner
    banner_entry = json.loads(shown.group(1))
    assert banner_entry == _config_claude(said.group(1))
    # The same options as the README's example, with this test's log in place of /var/log/...
    readme_log = readme_entry["args"][readme_entry["args"].index("--audit-log") + 1]
    assert banner_entry["args"] == [str(audit_log) if a == readme_log else a for a in readme_entry["args"]]
