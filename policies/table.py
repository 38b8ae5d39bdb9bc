"""``opsgate policy test``: run a table of expected decisions and show what differs.

A decision table is plain text, one request a line, so it reads as the
documentation of a policy and diffs well in review::

    # comments and blank lines are ignored
    policy: g, alice, role:operator, team-*      # (a comment must be on its own line)

    # PRINCIPAL  NAMESPACE  TOOL    [ATTRS]                  -> EXPECTED
    alice        team-a     deploy  {"replicas": 3}          -> allow
    alice        team-a     scale   {"replicas": 11}         -> deny(bound)
    alice        prod       deploy                           -> deny(default)
    alice        kube-system deploy                          -> deny(protected)

* ``policy: LINE`` adds one policy line (``p, ...`` or ``g, ...``) to the
  policy under test for this table: tables bring their own principals, so the
  shipped policy itself names no real user. A line the policy already holds is
  skipped.
* NAMESPACE is a namespace or ``-`` for tools that take none; the verb comes
  from the tool (the server's own mapping), as the gate does.
* ATTRS, optional, is a JSON object of the attributes bounds read (the fields of
  :class:`~opsgate.policies.bounds.BoundAttrs`: ``replicas``, ``current_replicas``,
  ``image`` or ``images``, ``model``, ``input_elements``, ...); bounds are checked
  only when the policy allowed.
* EXPECTED is ``allow`` or ``deny``; a deny may say why:
  ``deny(rule)`` a deny rule decided, ``deny(default)`` no rule allowed,
  ``deny(protected)`` a rule allowed it but the namespace is protected and the rule does not name it,
  ``deny(bound)`` a rule allowed and a bound refused.

Rate limits are stateful and are not part of a table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .bounds import BoundAttrs, check_bounds
from .decider import Decision, Policy
from .errors import PolicyError, TableError
from .loader import with_rules

__all__ = [
    "BoundsCheck",
    "RowResult",
        "TableResult",
    "TableRow",
    "format_table_result",
    "parse_table",
    "policy_bounds_check",
    "run_table",
]

BoundsCheck = Callable[[Policy, Decision, BoundAttrs], str | None]
"""(policy, an allowing decision, attrs) -> the bound's refusal, or None."""

_EXPECTED_RE: Final = re.compile(r"(allow|deny)(?:\((rule|default|bound|protected)\))?\Z")


@dataclass(frozen=True)
class TableRow:
    line: int
    principal: str
    namespace: str
    tool: str
    attrs: Mapping[str, Any]
    expected: str  # allow, deny, deny(rule), deny(default), deny(bound), deny(protected)

    @property
    def request(self) -> str:
        attrs = f" {json.dumps(dict(self.attrs), separators=(', ', ': '))}" if self.attrs else ""
        return f"{self.principal} {self.namespace} {self.tool}{attrs}"


@dataclass(frozen=True)
class RowResult:
    row: TableRow
    got: str  # allow, deny(rule), deny(default), deny(bound), deny(protected)
    reason: str  # the decision's reason, naming the deciding rule or bound

    @property
    def passed(self) -> bool:
        expected = self.row.expected
        return self.got == expected or (expected == "deny" and self.got.startswith("deny"))


@dataclass(frozen=True)
class TableResult:
    path: Path
    policy_hash: str
    results: tuple[RowResult, ...]

    @property
    def failures(self) -> list[RowResult]:
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        return not self.failures


def parse_table(path: Path, known_tools: Mapping[str, str]) -> tuple[list[tuple[int, str]], list[TableRow]]:
    """Read a table: its ``policy:`` lines (line number, text) and its rows. Raises TableError."""
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(path, None, f"cannot read: {exc}") from exc
    extra: list[tuple[int, str]] = []
    rows: list[TableRow] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("policy:"):
            extra.append((number, line.removeprefix("policy:").strip()))
            continue
        request, arrow, expected = line.rpartition("->")
        if not arrow:
            raise TableError(path, number, "a row is PRINCIPAL NAMESPACE TOOL [ATTRS-JSON] -> allow|deny")
        expected = expected.strip()
        if not _EXPECTED_RE.match(expected):
            raise TableError(
                path, number, "expected allow, deny, deny(rule), deny(default), deny(bound) or deny(protected), "
                f"got {expected!r}"
            )
        parts = request.strip().split(None, 3)
        if len(parts) < 3:
            raise TableError(path, number, "a row needs PRINCIPAL NAMESPACE TOOL before '->'")
        principal, namespace, tool = parts[:3]
        if tool not in known_tools:
            raise TableError(path, number, f"unknown tool {tool!r} (known: {', '.join(sorted(known_tools))})")
        attrs: dict[str, Any] = {}
        if len(parts) == 4:
            try:
                loaded = json.loads(parts[3])
            except json.JSONDecodeError as exc:
                raise TableError(path, number, f"attributes are not JSON: {exc.msg}") from exc
            if not isinstance(loaded, dict):
                raise TableError(path, number, "attributes must be a JSON object")
            attrs = loaded
        rows.append(TableRow(number, principal, namespace, tool, attrs, expected))
    return extra, rows


def policy_bounds_check(policy: Policy, decision: Decision, attrs: BoundAttrs) -> str | None:
    """The gate's bounds step: the bounds of the subject whose rule allowed the call."""
    if decision.rule is None:
        return None
    subject = decision.rule.fields[0]
    return check_bounds(subject, policy.bounds_for(subject), attrs)  # some bounds hold for every subject


def run_table(
    policy: Policy,
    table_path: Path,
    verbs: Mapping[str, str],
    bounds_check: BoundsCheck | None = policy_bounds_check,
) -> TableResult:
    """Decide every row of the table against ``policy`` (plus the table's ``policy:`` lines).

    ``verbs`` maps each tool to its verb, as the server registers it.
    Raises TableError, naming the table's line, for a table that cannot be
    read or a ``policy:`` line the loader refuses.
    """
    table_path = Path(table_path)
    extra, rows = parse_table(table_path, verbs)
    if extra:
        try:
            policy = with_rules(policy, extra, table_path, known_tools=verbs)
        except PolicyError as exc:
            raise TableError(table_path, exc.line, f"policy line: {exc.message}") from exc
    results: list[RowResult] = []
    for row in rows:
        decision = policy.decide(row.principal, row.namespace, row.tool, verbs[row.tool])
        if decision.allowed:
            attrs = BoundAttrs.from_mapping(row.attrs)
            refusal = bounds_check(policy, decision, attrs) if bounds_check is not None else None
            if refusal is None:
                results.append(RowResult(row, "allow", decision.reason))
            else:
                results.append(RowResult(row, "deny(bound)", f"denied by bound: {refusal} ({decision.reason})"))
        elif decision.protected is not None:
            results.append(RowResult(row, "deny(protected)", decision.reason))
        elif decision.rule is not None:
            results.append(RowResult(row, "deny(rule)", decision.reason))
        else:
            results.append(RowResult(row, "deny(default)", decision.reason))
    return TableResult(table_path, policy.hash, tuple(results))


def format_table_result(result: TableResult) -> str:
    """What differs, expected against got with the deciding rule, then a summary line."""
    lines: list[str] = []
    for failed in result.failures:
        row = failed.row
        lines.append(f"{result.path}:{row.line}: {row.request}")
        lines.append(f"  - expected {row.expected}")
        lines.append(f"  + got      {failed.got}: {failed.reason}")
    total = len(result.results)
    differ = len(result.failures)
    if differ:
        lines.append(f"{result.path}: {differ} of {total} rows differ (policy {result.policy_hash[:12]})")
    else:
        lines.append(f"{result.path}: all {total} rows as expected (policy {result.policy_hash[:12]})")
    return "\n".join(lines)
