"""Settings: file < env < flags, and every bad setting is named at start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from opsgate.server.cli import build_parser, main
from opsgate.server.config import Settings, SettingsError, flag_settings, load_settings
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
        ({}, "colour = 'blue'\n", {}, "unknown setting 'colour' in {cfg}"),
        ({}, "[opsgate]\nread-only = 'perhaps'\n", {}, "setting read_only in {cfg}: "),
        ({}, "", {"OPSGATE_COLOUR": "blue"}, "unknown setting OPSGATE_COLOUR (environment)"),
        ({}, "", {"OPSGATE_READ_ONLY": "perhaps"}, "setting read_only from OPSGATE_READ_ONLY: "),
        ({}, "", {"OPSGATE_SANDBOX_NAMESPACES": "ok,Not_A_Name"}, "sandbox_namespaces from OPSGATE_SANDBOX_NAMESPACES"),
        ({"principal": "role:admin"}, "", {}, "setting principal from --principal: "),
        ({"principal": "a b"}, "principal = 'fine'\n", {"OPSGATE_PRINCIPAL": "fine"}, "principal from --principal"),
        ({"policy": Path("/nonexistent/policy")}, "", {}, "setting policy from --policy: "),
        ({"audit_checkpoint_every": "0"}, "audit_checkpoint_every = 5\n", {}, "from --audit-checkpoint-every"),
        ({}, "principal = [1", {}, "--config {cfg}: "),
    ],
)
def test_bad_settings_are_named_with_their_source(
    tmp_path: Path, flags: dict[str, object], toml: str, environ: dict[str, str], named: str
) -> None:
    cfg = tmp_path / "opsgate.toml"
    cfg.write_text(toml)
    with pytest.raises(SettingsError) as info:
        load_settings(flags, cfg, environ=environ)
    assert named.format(cfg=cfg) in str(info.value)


def test_the_file_may_use_an_opsgate_table_and_must_exist(tmp_path: Path) -> None:
    cfg = tmp_path / "opsgate.toml"
    cfg.write_text('[opsgate]\nlog-level = "debug"\nsandbox_namespaces = ["ml", "team-b"]\nmodels = "."\n')
    s = load_settings({}, cfg, environ={})
    assert s.log_level == "debug" and s.sandbox_namespaces == ("ml", "team-b") and s.models == tmp_path
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings({}, tmp_path / "missing.toml", environ={})


def test_settings_alone_read_no_environment_or_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests and library callers construct Settings() and get the defaults, whatever the process was given."""
    monkeypatch.setenv("OPSGATE_PRINCIPAL", "from-env")
    monkeypatch.setenv("OPSGATE_COLOUR", "blue")
    monkeypatch.setattr(sys, "argv", ["opsgate", "serve", "--read-only"])
    assert Settings().principal is None and Settings().read_only is False
    assert Settings(principal="alice").principal == "alice"
    with pytest.raises(SettingsError, match="OPSGATE_COLOUR"):
        load_settings({})  # asked: load_settings reads the process's environment
    monkeypatch.delenv("OPSGATE_COLOUR")
    assert load_settings({}).principal == "from-env"


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


# --------------------------------------------------------------------------- one model: flags, env, README


def _readme_settings_rows() -> list[tuple[list[str], list[str]]]:
    """(flags, env variables) of each row of the README's settings table."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`--"):
            rows.append((re.findall(r"`(--[a-z-]+)`", cells[0]), re.findall(r"`(OPSGATE_[A-Z_]+)`", cells[1])))
    return rows


def test_the_readme_settings_table_is_the_model() -> None:
    """Every setting has its row, named by its flag and its variable side by side, and no row names another."""
    rows = _readme_settings_rows()
    assert rows, "no settings table in the README"
    for flags, env in rows:
        assert env == [f"OPSGATE_{f.removeprefix('--').replace('-', '_').upper()}" for f in flags], (flags, env)
    listed = [flag for flags, _ in rows for flag in flags]
    model = [f"--{name.replace('_', '-')}" for name in Settings.model_fields]
    assert sorted(listed) == sorted(model)


def test_flags_are_generated_from_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    """One flag a setting (pydantic-settings' CLI source on our parser), typed as the field is, help from its
    description; a flag not given is absent, so the environment and the file still count."""
    parser = build_parser("serve")
    args = parser.parse_args(["serve", "--read-only", "--audit-checkpoint-every", "5", "--log-level", "debug",
                              "--sandbox-namespaces", "a,b", "--kube-timeout-seconds", "2.5"])
    given = flag_settings(args)
    assert set(given) == {"read_only", "audit_checkpoint_every", "log_level", "sandbox_namespaces",
                          "kube_timeout_seconds"}
    s = load_settings(given, None, environ={"OPSGATE_PRINCIPAL": "from-env", "OPSGATE_LOG_LEVEL": "error"})
    assert s.read_only is True and s.audit_checkpoint_every == 5 and s.log_level == "debug"
    assert s.sandbox_namespaces == ("a", "b") and s.kube_timeout_seconds == 2.5
    assert s.principal == "from-env" and s.disable_destructive is False
    with pytest.raises(SettingsError, match="audit_checkpoint_every from --audit-checkpoint-every"):
        load_settings(flag_settings(parser.parse_args(["serve", "--audit-checkpoint-every", "many"])), environ={})
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--log-level", "loud"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    serve_help = capsys.readouterr().out
    assert "--audit-max-segment-bytes" in serve_help and "SelfSubjectReview" in serve_help


def test_commands_without_settings_do_not_import_the_model() -> None:
    """`opsgate audit verify` starts fast: the settings flags (and pydantic) are built only for serve and doctor."""
    code = ("import sys; from opsgate.server.cli import build_parser; build_parser('audit'); "
            "print([m for m in ('opsgate.server.config', 'pydantic', 'pydantic_settings') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=server_env())
    assert out.stdout.strip() == "[]"
