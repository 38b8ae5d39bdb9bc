"""Decision tables (``opsgate policy test``) and the shipped table of the default roles: the matrix test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from opsgate.policies import SHIPPED_DIR, TableError, default_policy, load_policy
from opsgate.policies.loader import with_rules
from opsgate.policies.table import format_table_result, parse_table, run_table
from opsgate.server.catalog import server_tools, tool_verbs

ROLES_TABLE = SHIPPED_DIR / "roles.table"
VERBS = tool_verbs()

# --------------------------------------------------------------------------- the matrix


def test_shipped_table_holds_for_the_shipped_policy() -> None:
    result = run_table(default_policy(known_tools=VERBS), ROLES_TABLE, VERBS)
    assert result.ok, format_table_result(result)
    assert len(result.results) > 100


def test_shipped_table_holds_for_a_copied_policy_folder(tmp_path: Path) -> None:
    """What ``opsgate policy test policies/roles.table --policy DIR`` runs for a team starting from ours."""
    for name in ("model.conf", "policy.csv", "bounds.toml"):
        shutil.copy(SHIPPED_DIR / name, tmp_path / name)
    result = run_table(load_policy(tmp_path, known_tools=VERBS), ROLES_TABLE, VERBS)
    assert result.ok, format_table_result(result)


def test_shipped_table_covers_every_role_tool_and_namespace() -> None:
    """The matrix: each default role x every tool x own / other / protected namespace (or "-")."""
    _, rows = parse_table(ROLES_TABLE, VERBS)
    covered = {(row.principal, row.namespace, row.tool) for row in rows if not row.attrs}
    people = {"nobody": "role:everyone only", "val": "viewer", "alice": "operator", "root-admin": "admin"}
    missing = []
    for spec in server_tools():
        namespaces = ("team-a", "prod", "kube-system") if spec.namespaced else ("-",)
        for who in people:
            for ns in namespaces:
                if (who, ns, spec.name) not in covered:
                    missing.append(f"{who} {ns} {spec.name}")
    assert not missing, "roles.table lacks rows for: " + "; ".join(missing)


def test_the_table_fixture_lines_name_the_roles_it_documents() -> None:
    extra, _ = parse_table(ROLES_TABLE, VERBS)
    lines = {text for _, text in extra}
    assert "g, alice, role:operator, team-*" in lines
    assert "g, root-admin, role:admin, *" in lines
    # ... and the shipped policy itself names no real user
    assert all(rule.fields[0].startswith("role:") for rule in default_policy().rules if rule.ptype == "g")


# --------------------------------------------------------------------------- the runner


def write(tmp_path: Path, text: str, name: str = "t.table") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_diff_names_expected_got_and_the_deciding_rule(tmp_path: Path) -> None:
    table = write(
        tmp_path,
        "policy: g, alice, role:operator, team-*\n"
        "alice team-a deploy -> deny\n"
        "alice prod deploy -> allow\n"
        "alice kube-system deploy -> deny(rule)\n"
        'alice team-a scale {"replicas": 11} -> allow\n'
        "alice team-a list_workloads -> allow\n",
    )
    result = run_table(default_policy(), table, VERBS)
    assert [r.row.line for r in result.failures] == [2, 3, 4, 5]
    text = format_table_result(result)
    assert f"{table}:2: alice team-a deploy\n  - expected deny\n  + got      allow: allowed by policy.csv:" in text
    assert "(p, role:operator, *, *, write, allow)" in text
    assert f"{table}:3: alice prod deploy\n  - expected allow\n  + got      deny(default): denied: no rule" in text
    assert "- expected deny(rule)\n  + got      deny(default): denied: no rule" in text
    assert f'{table}:5: alice team-a scale {{"replicas": 11}}' in text
    assert "deny(bound): denied by bound: replicas 11 exceeds max_replicas 10 for role:operator" in text
    assert text.splitlines()[-1].startswith(f"{table}: 4 of 5 rows differ (policy ")


def test_all_pass_summary_and_bounds_check_off(tmp_path: Path) -> None:
    table = write(tmp_path, 'policy: g, alice, role:operator, team-*\nalice team-a scale {"replicas": 11} -> allow\n')
    result = run_table(default_policy(), table, VERBS, bounds_check=None)
    assert result.ok
    assert format_table_result(result) == f"{table}: all 1 rows as expected (policy {result.policy_hash[:12]})"


def test_fixture_lines_change_the_hash_and_skip_duplicates(tmp_path: Path) -> None:
    base = default_policy()
    table = write(tmp_path, "policy: g, role:everyone, role:viewer, *\nnobody - whoami -> allow\n")
    result = run_table(base, table, VERBS)
    assert result.ok and result.policy_hash != base.hash
    extended = with_rules(base, [(1, "g, alice, role:admin, prod")], table)
    assert len(extended.rules) == len(base.rules) + 1
    assert extended.rules[-1].source == "t.table:1"
    assert extended.bounds == base.bounds
    assert with_rules(base, [(1, "g, role:everyone, role:viewer, *")], table).rules == base.rules


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("alice team-a deploy allow\n", 1, "PRINCIPAL NAMESPACE TOOL"),
        ("# c\nalice team-a deploy -> maybe\n", 2, "expected allow, deny"),
        ("alice team-a -> allow\n", 1, "needs PRINCIPAL NAMESPACE TOOL"),
        ("alice team-a deplyo -> allow\n", 1, "unknown tool 'deplyo'"),
        ("alice team-a scale {replicas: 3} -> allow\n", 1, "not JSON"),
        ("alice team-a scale [3] -> allow\n", 1, "JSON object"),
        ("\npolicy: g, alice, operator, *\n", 2, "policy line: the second field of a g rule must be a role"),
        ("policy: p, role:x, *, deplyo, write, allow\n", 1, "unknown tool 'deplyo'"),
    ],
)
def test_table_errors_name_the_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    table = write(tmp_path, text)
    with pytest.raises(TableError) as info:
        run_table(default_policy(), table, VERBS)
    assert info.value.line == line
    assert fragment in info.value.message
    assert str(info.value).startswith(f"{table}:{line}: ")


def test_missing_table(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="cannot read"):
        run_table(default_policy(), tmp_path / "nope.table", VERBS)


def test_invalid_principal_in_a_row_is_a_default_deny(tmp_path: Path) -> None:
    table = write(tmp_path, "role:admin prod deploy -> deny(default)\nalice team-* whoami -> deny\n")
    result = run_table(default_policy(), table, VERBS)
    assert result.ok, format_table_result(result)
    assert "invalid request" in result.results[0].reason
