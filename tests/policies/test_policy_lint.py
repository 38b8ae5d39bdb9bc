"""``opsgate policy check``: lint(path, known_tools) finds every problem with its file and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from opsgate.policies import SHIPPED_DIR
from opsgate.policies.lint import Finding, exit_code, format_findings, lint
from opsgate.server.catalog import tool_bounds

TOOLS = {
    "whoami": "read",
    "explain_access": "read",
    "audit_log": "read",
    "list_models": "read",
    "infer": "read",
    "list_workloads": "read",
    "rollout_status": "read",
    "rollout_history": "read",
    "deploy": "write",
    "scale": "write",
    "rollback": "write",
}
# What each registered tool tells the policy's bounds (ToolSpec.bounded), as serve and `policy check` pass it.
BOUNDS = tool_bounds()
BASE = """\
p, role:viewer, *, *, read, allow
g, role:everyone, role:viewer, *
g, role:operator, role:viewer, *
p, role:operator, *, *, write, allow
p, role:everyone, kube-system, *, write, deny
"""


def folder(tmp_path: Path, csv: str, bounds: str | None = None) -> Path:
    shutil.copy(SHIPPED_DIR / "model.conf", tmp_path / "model.conf")
    (tmp_path / "policy.csv").write_text(csv)
    if bounds is not None:
        (tmp_path / "bounds.toml").write_text(bounds)
    return tmp_path


def only(findings: list[Finding], fragment: str) -> Finding:
    hits = [f for f in findings if fragment in f.message]
    assert len(hits) == 1, findings
    return hits[0]


def test_shipped_policy_is_clean() -> None:
    assert lint(SHIPPED_DIR, TOOLS, tool_bounds=BOUNDS) == []
    assert lint(SHIPPED_DIR / "policy.csv", TOOLS, tool_bounds=BOUNDS) == []
    assert format_findings([], SHIPPED_DIR) == (
        f"{SHIPPED_DIR}: bounds: {SHIPPED_DIR / 'bounds.toml'}; protected namespaces: kube-system, kube-public, "
        f"kube-node-lease\n{SHIPPED_DIR}: policy OK: no findings"
    )


def test_every_syntax_error_is_reported_with_its_line(tmp_path: Path) -> None:
    csv = BASE + "p, role:viewer, *, deplyo, write, allow\np, role:x, *, *, read, Deny\ng, alice, role:operator\n"
    csv += "p, role:viewer, *, *, read, allow\n"
    path = folder(tmp_path, csv)
    findings = lint(path, TOOLS)
    assert [(f.line, f.severity) for f in findings] == [(6, "error"), (7, "error"), (8, "error"), (9, "error")]
    assert all(f.file == path / "policy.csv" for f in findings)
    assert "unknown tool 'deplyo'; did you mean 'deploy'?" in findings[0].message
    assert "Casbin silently ignores 'Deny'" in findings[1].message
    assert "has 3 fields" in findings[2].message
    assert "duplicate of policy.csv:1" in findings[3].message
    assert exit_code(findings) == 1
    text = format_findings(findings, path)
    assert f"{path / 'policy.csv'}:6: error: unknown tool 'deplyo'" in text
    assert text.endswith(f"{path}: 4 errors, 0 warnings")


def test_model_and_bounds_errors(tmp_path: Path) -> None:
    path = folder(tmp_path, BASE, '[subject."role:operator"]\nmax_replicas = 3\nmax_pods = 2\n')
    (path / "model.conf").write_text((SHIPPED_DIR / "model.conf").read_text().replace("keyMatch(r.obj", "kM(r.obj"))
    findings = lint(path, TOOLS)
    model = only(findings, "unknown function 'kM'")
    assert model.file == path / "model.conf" and model.line is not None
    bounds = only(findings, "max_pods")
    assert (bounds.file, bounds.line) == (path / "bounds.toml", 3)


def test_missing_path(tmp_path: Path) -> None:
    findings = lint(tmp_path / "nope.csv", TOOLS)
    assert [(f.severity, f.message) for f in findings] == [("error", "no such file or folder")]


def test_role_assigned_but_granting_nothing(tmp_path: Path) -> None:
    findings = lint(folder(tmp_path, BASE + "g, alice, role:operater, team-*\ng, bob, role:oncall, prod\n"
                           "p, role:oncall, prod, rollback, write, deny\n"), TOOLS)
    finding = only(findings, "role:operater is assigned")
    assert finding.severity == "error" and finding.line == 6
    assert "did you mean role:operator?" in finding.message
    assert not [f for f in findings if "role:oncall is assigned" in f.message]  # a deny-only role is deliberate


def test_inherited_grants_count(tmp_path: Path) -> None:
    assert lint(folder(tmp_path, BASE + "g, role:sre, role:operator, *\ng, alice, role:sre, *\n"), TOOLS) == []


def test_dead_actions(tmp_path: Path) -> None:
    findings = lint(folder(tmp_path, BASE + "p, role:operator, prod, deploy, read, deny\n"
                           "p, role:viewer, *, list_*, write, allow\n"), TOOLS)
    deny = only(findings, "this deny never applies")
    assert (deny.line, deny.severity) == (6, "error")
    assert "deploy (write)" in deny.message
    allow = only(findings, "this allow never applies")
    assert (allow.line, allow.severity) == (7, "warning")


def test_grant_shadowed_by_the_protected_namespace_deny(tmp_path: Path) -> None:
    findings = lint(folder(tmp_path, BASE + "p, role:platform, kube-system, deploy, write, allow\n"
                           "g, carol, role:platform, *\n"), TOOLS)
    shadow = only(findings, "never takes effect")
    assert (shadow.line, shadow.severity) == (6, "warning")
    assert "policy.csv:5 (p, role:everyone, kube-system, *, write, deny)" in shadow.message
    assert "kube-system is protected" in shadow.message
    assert exit_code(findings) == 0


def test_shadowing_by_several_denies_and_by_an_ancestor(tmp_path: Path) -> None:
    csv = BASE + (
        "p, role:team, team-a, *, write, allow\n"  # 6: shadowed by 8 + 9 + 10 together (every write tool)
        "g, role:team, role:frozen, team-*\n"  # role:team always holds role:frozen in team-a
        "p, role:frozen, team-*, deploy, *, deny\n"
        "p, role:frozen, team-*, scale, write, deny\n"
        "p, role:frozen, t*, rollback, *, deny\n"
        "p, role:team, team-b, *, write, allow\n"  # 11: same denies cover team-b: shadowed
        "p, role:team, prod, *, write, allow\n"  # 12: not covered
        "g, alice, role:team, *\n"
    )
    findings = lint(folder(tmp_path, csv), TOOLS)
    shadowed = sorted(f.line or 0 for f in findings if "never takes effect" in f.message)
    assert shadowed == [6, 11]


def test_partial_denies_do_not_shadow(tmp_path: Path) -> None:
    csv = BASE + (
        "p, role:team, team-*, *, write, allow\n"
        "p, role:team, team-a, deploy, write, deny\n"  # only one namespace: not every request
        "g, role:team, role:x, team-a\n"
        "p, role:x, team-*, *, *, deny\n"  # held in team-a only, so it cannot cover team-*
        "g, alice, role:team, *\n"
    )
    assert [f for f in lint(folder(tmp_path, csv), TOOLS) if "never takes effect" in f.message] == []


def test_everyone_may_write_is_a_warning(tmp_path: Path) -> None:
    findings = lint(folder(tmp_path, BASE + "p, role:everyone, sandbox, scale, write, allow\n"
                           "g, role:everyone, role:operator, dev-*\n"), TOOLS)
    direct = [f for f in findings if f.line == 6]
    assert direct and direct[0].severity == "warning" and "may call scale" in direct[0].message
    inherited = [f for f in findings if f.line == 4]
    assert inherited and "every principal holds role:operator in dev-* (policy.csv:7)" in inherited[0].message


def test_role_chain_longer_than_casbin_follows(tmp_path: Path) -> None:
    chain = "".join(f"g, role:r{i}, role:r{i + 1}, *\n" for i in range(11))
    findings = lint(folder(tmp_path, BASE + chain + "p, role:r11, *, deploy, write, allow\n"), TOOLS)
    deep = only(findings, "role:r0 reaches")
    assert deep.severity == "warning" and "more than 9 role links" in deep.message


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("bounds", "line", "fragment"),
    [
        ('[subject."role:opertor"]\nmax_replicas = 3\n', 1, "no policy rule names; did you mean 'role:operator'?"),
        ('# x\n[subject."alice"]\nmax_replicas = 3\n', 2, "bounds for 'alice' never apply"),
        ('[subject."role:viewer"]\nmax_replicas = 3\n', 2, "max_replicas of 'role:viewer' never applies"),
        ('[subject."role:viewer"]\nmax_replicas_change = 1\n', 2, "max_replicas_change of 'role:viewer'"),
        ('[subject."role:viewer"]\nallow_scale_to_zero = false\n', 2, "allow_scale_to_zero of 'role:viewer'"),
        ('[subject."role:viewer"]\nimage_prefixes = ["r/"]\n', 2, "image_prefixes of 'role:viewer'"),
        ('[subject."role:viewer"]\nrate_limit_per_minute = 3\n', 2, "rate_limit_per_minute of 'role:viewer'"),
        ('[subject."role:operator"]\nread_rate_limit_per_minute = 3\n', 2,
         "read_rate_limit_per_minute of 'role:operator' never applies"),
        ('[subject."role:operator"]\n\nmax_input_elements = 9\n', 3, "max_input_elements of 'role:operator'"),
    ],
)
def test_bounds_that_never_apply(tmp_path: Path, bounds: str, line: int, fragment: str) -> None:
    path = folder(tmp_path, BASE + "g, alice, role:operator, team-*\n", bounds)
    finding = only(lint(path, TOOLS, tool_bounds=BOUNDS), fragment)
    assert (finding.file, finding.line, finding.severity) == (path / "bounds.toml", line, "error")


# role:operator writing with deploy and scale only: no tool it may call tells the policy a model.
DEPLOYER = BASE.replace("p, role:operator, *, *, write, allow",
                        "p, role:operator, *, deploy, write, allow\np, role:operator, *, scale, write, allow")


def test_models_bounds_the_model_a_service_serves_too(tmp_path: Path) -> None:
    """``models`` reads the storage URI as well as the name (a bare URI is a model of the models folder), and
    rollback tells the policy the storage URI it restores: on a subject that may roll back it applies; on one
    that may only deploy and scale it never does, and the finding says which arguments it bounds."""
    bounds = '[subject."role:operator"]\nmodels = ["iris"]\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rolls_back = lint(folder(tmp_path / "a", BASE + "g, alice, role:operator, team-*\n", bounds), TOOLS,
                      tool_bounds=BOUNDS)
    assert [f for f in rolls_back if "models of" in f.message] == []
    finding = only(lint(folder(tmp_path / "b", DEPLOYER + "g, alice, role:operator, team-*\n", bounds), TOOLS,
                        tool_bounds=BOUNDS), "models of 'role:operator' never applies")
    assert "the 'model' or 'storage_uri' argument of infer, rollback" in finding.message
    assert (finding.line, finding.severity) == (2, "error")


def test_inherited_grant_hint_for_bounds(tmp_path: Path) -> None:
    bounds = '[subject."role:operator"]\nmodels = ["x"]\n'
    path = folder(tmp_path, DEPLOYER + "g, alice, role:operator, team-*\n", bounds)
    finding = only(lint(path, TOOLS, tool_bounds=BOUNDS), "models of 'role:operator'")
    assert "role:operator reaches infer only through role:viewer's rule, so role:viewer's bounds apply" in (
        finding.message
    )


def test_bounds_that_apply_are_clean(tmp_path: Path) -> None:
    bounds = (
        '[subject."role:operator"]\nmax_replicas = 5\nmax_replicas_change = 2\nallow_scale_to_zero = false\n'
        'image_prefixes = ["r/"]\nrate_limit_per_minute = 10\n'
        '[subject."role:viewer"]\nmodels = ["iris"]\nmax_input_elements = 100\nread_rate_limit_per_minute = 60\n'
    )
    assert lint(folder(tmp_path, BASE + "g, alice, role:operator, team-*\n", bounds), TOOLS, tool_bounds=BOUNDS) == []


def test_lint_writes_nothing_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lint(folder(tmp_path, BASE + "p, role:x, *, deplyo, write, allow\n"), TOOLS, tool_bounds=BOUNDS)
    lint(SHIPPED_DIR, TOOLS, tool_bounds=BOUNDS)
    assert capsys.readouterr().out == ""


def test_load_checked_gives_the_policy_only_without_errors(tmp_path: Path) -> None:
    from opsgate.policies.lint import load_checked

    path = folder(tmp_path, BASE + "p, role:everyone, sandbox, scale, write, allow\n")
    policy, findings = load_checked(path, TOOLS, tool_bounds=BOUNDS)
    assert policy is not None and [f.severity for f in findings] == ["warning"]
    assert policy.decide("anyone", "sandbox", "scale", "write").allowed
    (path / "bounds.toml").write_text('[subject."role:nobody"]\nmax_replicas = 1\n')
    policy, findings = load_checked(path, TOOLS, tool_bounds=BOUNDS)
    assert policy is None and exit_code(findings) == 1
    (path / "policy.csv").write_text(BASE + "p, role:x, *, *, read, Allow\n")
    assert load_checked(path, TOOLS, tool_bounds=BOUNDS)[0] is None


def test_without_known_tools_the_tool_checks_are_skipped(tmp_path: Path) -> None:
    path = folder(
        tmp_path,
        BASE + "p, role:x, *, deplyo, write, allow\ng, bob, role:x, *\n"
        "p, role:platform, kube-system, deploy, write, allow\ng, carol, role:platform, *\n",
        '[subject."role:operator"]\nmodels = ["x"]\n',
    )
    findings = lint(path)
    assert [f.line for f in findings] == [8]  # the shadowed grant, found by pattern coverage alone
    assert "never takes effect" in findings[0].message
