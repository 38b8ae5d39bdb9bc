"""Settings: file < env < flags, and every bad setting is named at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opsgate.server.config import SettingsError, load_settings
from tests.harness import server_env


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "opsgate.toml"
    cfg.write_text('principal = "from-file"\nread_only = true\naudit-log = "logs/a.jsonl"\n')
    s = load_settings({}, cfg, environ={})
    assert s.principal == "from-file" and s.read_only is True
    assert s.audit_log == tmp_path / "logs" / "a.jsonl"  # relative to the file
    s = load_settings({}, cfg, environ={"OPSGATE_PRINCIPAL": "from-env"})
    assert s.principal == "from-env"
    s = load_settings({"principal": "from-flag", "read_only": None}, cfg, environ={"OPSGATE_PRINCIPAL": "x"})
    assert s.principal == "from-flag" and s.read_only is True


def test_defaults_are_safe() -> None:
    s = load_settings({}, None, environ={})
    assert s.read_only is False and s.policy is None and s.principal is None
    assert s.audit_log.name == "audit.jsonl"


@pytest.mark.parametrize(
    ("flags", "toml", "environ", "named"),
    [
        ({}, "colour = 'blue'\n", {}, "'colour'"),
        ({}, "", {"OPSGATE_COLOUR": "blue"}, "OPSGATE_COLOUR"),
        ({"principal": "role:admin"}, "", {}, "principal"),
        ({"principal": "a b"}, "", {}, "principal"),
        ({}, "", {"OPSGATE_READ_ONLY": "perhaps"}, "read_only"),
        ({"policy": Path("/nonexistent/policy")}, "", {}, "policy"),
        ({}, "principal = [1", {}, "opsgate.toml"),
    ],
)
def test_bad_settings_are_named(
    tmp_path: Path, flags: dict[str, object], toml: str, environ: dict[str, str], named: str
) -> None:
    cfg = tmp_path / "opsgate.toml"
    cfg.write_text(toml)
    with pytest.raises(SettingsError) as info:
        load_settings(flags, cfg, environ=environ)
    assert named in str(info.value)


def test_test_only_env_vars_are_ignored() -> None:
    load_settings({}, None, environ={"OPSGATE_E2E_KUBECONFIG": "/x"})


def _start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsgate.server", "serve", "--audit-log", str(tmp_path / "a.jsonl"), *args],
        input="", capture_output=True, text=True, timeout=60, env=server_env(env),
    )


def test_unknown_env_setting_stops_the_server(tmp_path: Path) -> None:
    proc = _start(tmp_path, env={"OPSGATE_PRINCPAL": "alice"})
    assert proc.returncode == 2
    assert "OPSGATE_PRINCPAL" in proc.stderr
    assert proc.stdout == ""


def test_broken_policy_stops_the_server_with_file_and_line(tmp_path: Path) -> None:
    from tests.harness import write_policy

    folder = write_policy(tmp_path / "pol", ["p, role:viewer, *, *, read, allow", "p, role:x, *, *, read, Deny"])
    proc = _start(tmp_path, "--policy", str(folder))
    assert proc.returncode == 2
    assert "policy.csv:2" in proc.stderr
    assert proc.stdout == ""


def test_unwritable_audit_log_stops_the_server(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "opsgate.server", "serve", "--audit-log", str(blocker / "audit.jsonl")],
        input="", capture_output=True, text=True, timeout=60, env=server_env(),
    )
    assert proc.returncode == 2
    assert "audit log" in proc.stderr and "refusing" in proc.stderr
