"""``opsgate policy check``: every problem in a policy folder, each with its file and line.

The loader stops at the first problem, which is right for a server refusing to
start; an author fixing a policy wants all of them, and wants the mistakes
that load fine but do not do what they say. Findings:

errors (``policy check`` exits 1)
  * syntax, unknown tool, bad action or effect, duplicates: every line the
    loader would refuse (the loader's own checks and messages), a model or
    bounds file that does not load;
  * a role that is assigned but that no rule names, itself or through the
    roles it inherits (usually a typo: the member silently gets nothing);
  * a deny that can never apply because its action is not the verb of any
    tool it names (``deploy`` is asked for with ``write``, so a ``read`` deny
    on it protects nothing);
  * bounds on a subject the policy does not name, or on one that no allow
    rule names: bounds are taken from the subject of the rule that allowed the
    call, so these never apply;
  * bounds on a subject none of whose own allow rules reaches a tool taking
    that argument (``models`` on a role with no grant on ``infer``; replicas
    bounds with no ``deploy``/``scale`` grant; a rate limit with no write
    grant, a read rate limit with no read grant): the bound never applies
    (another subject's rule allows those calls).

warnings (printed; exit 0)
  * an allow that can never take effect: denies that apply to the same
    subject (or a role it always holds, or everyone) in every namespace it
    names cover every tool it grants (deny overrides allow);
  * an allow whose action is not the verb of any tool it names;
  * a write grant that every principal holds (through role:everyone);
  * a role chain longer than Casbin follows (9 links).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from .bounds import BOUND_READS, BoundName, SubjectBounds
from .bounds_file import BOUNDS_FILE, DEFAULT_PROTECTED, bounds_lines, bounds_note, parse_bounds, parse_protected
from .casbin_model import build_enforcer
from .decider import Policy
from .errors import SourceError
from .index import MAX_ROLE_HOPS, key_prefix
from .loader import load_policy, policy_files, read_file
from .names import EVERYONE, ROLE_PREFIX, key_match
from .rules import Rule, parse_line

__all__ = ["Finding", "applied_bounds", "exit_code", "format_findings", "lint", "load_checked"]

Severity = Literal["error", "warning"]
_WRITE: Final = "write"
_READ: Final = "read"


@dataclass(frozen=True)
class Finding:
    """One problem: where it is and what to do about it."""

    file: Path
    line: int | None
    severity: Severity
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}"
        return f"{where}: {self.severity}: {self.message}"


def _sorted(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (str(f.file), f.line or 0, f.severity, f.message))


def exit_code(findings: Iterable[Finding]) -> int:
    """What ``opsgate policy check`` exits with: 1 when any finding is an error, else 0."""
    return 1 if any(f.severity == "error" for f in findings) else 0


def applied_bounds(path: Path) -> str:
    """Which bounds file a policy at ``path`` gets, if any, and its protected namespaces: one line.

    A policy with no bounds.toml beside it has no argument bounds, and the
    cluster's own namespaces stay protected; saying so is the point (a lone
    ``my.csv`` otherwise looks as bounded as the shipped folder).
    """
    try:
        _, csv_paths = policy_files(Path(path))
    except SourceError:
        return "bounds: unknown (the policy path does not load)"
    bounds_path = csv_paths[0].parent / BOUNDS_FILE
    if not bounds_path.is_file():
        return bounds_note(None, DEFAULT_PROTECTED)
    try:
        data, _ = read_file(bounds_path)
        parse_bounds(bounds_path, data)
        protected = parse_protected(bounds_path, data)
    except SourceError:
        return f"bounds: {bounds_path} (does not load: see the errors above)"
    return bounds_note(bounds_path, protected)


def format_findings(findings: Collection[Finding], path: Path | None = None) -> str:
    """The findings one a line (``file:line: severity: message``), which bounds apply, and a summary line."""
    lines = [str(f) for f in _sorted(findings)]
    if path is not None:
        lines.append(f"{path}: {applied_bounds(path)}")
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    subject = f"{path}: " if path is not None else ""
    if not findings:
        lines.append(f"{subject}policy OK: no findings")
    else:
        plural = "s" if errors != 1 else ""
        wplural = "s" if warnings != 1 else ""
        lines.append(f"{subject}{errors} error{plural}, {warnings} warning{wplural}")
    return "\n".join(lines)


def lint(
    path: Path,
    known_tools: Mapping[str, str] | None = None,
    *,
    tool_bounds: Mapping[str, Collection[BoundName]] | None = None,
) -> list[Finding]:
    """Check a policy folder or ``.csv`` file as :func:`~opsgate.policies.loader.load_policy` would read it.

    ``known_tools`` maps each tool the server offers to its verb (read or
    write); ``tool_bounds`` maps tools to the bound attributes they tell the
    policy (``ToolSpec.bounded`` of the registered tools). Without
    ``known_tools`` the checks that need the server's tools (unknown names,
    verbs, which tools a bound can reach) are skipped; without ``tool_bounds``,
    which tools a bound on arguments can reach is not checked. Reads files;
    decides nothing.
    """
    return load_checked(path, known_tools, tool_bounds=tool_bounds)[1]


def load_checked(
    path: Path,
    known_tools: Mapping[str, str] | None = None,
    *,
    tool_bounds: Mapping[str, Collection[BoundName]] | None = None,
) -> tuple[Policy | None, list[Finding]]:
    """:func:`lint`, plus the Policy it loaded when no finding is an error (else None).

    For start-up and hot reload: one read of the files gives both the verdict
    and the policy to swap in, so what was checked is what serves. Warnings do
    not stop a load; log them.
    """
    path = Path(path)
    try:
        model_path, csv_paths = policy_files(path)
    except SourceError as exc:
        return None, [Finding(exc.path, exc.line, "error", exc.message)]
    findings: list[Finding] = []

    try:
        _, model_text = read_file(model_path)
        build_enforcer(model_path, model_text)
    except SourceError as exc:
        findings.append(Finding(exc.path, exc.line, "error", exc.message))

    seen: dict[tuple[str, ...], str] = {}
    for csv_path in csv_paths:
        try:
            _, text = read_file(csv_path)
        except SourceError as exc:
            findings.append(Finding(exc.path, exc.line, "error", exc.message))
            continue
        for number, raw in enumerate(text.splitlines(), 1):
            try:
                parsed = parse_line(raw, known_tools)
            except ValueError as exc:
                findings.append(Finding(csv_path, number, "error", str(exc)))
                continue
            if parsed is None:
                continue
            key = (parsed[0], *parsed[1])
            if key in seen:
                findings.append(Finding(csv_path, number, "error", f"duplicate of {seen[key]}"))
            else:
                seen[key] = f"{csv_path.name}:{number}"

    bounds_path = csv_paths[0].parent / BOUNDS_FILE
    bounds_text = ""
    if bounds_path.is_file():
        try:
            data, bounds_text = read_file(bounds_path)
            parse_bounds(bounds_path, data)
            parse_protected(bounds_path, data)
        except SourceError as exc:
            findings.append(Finding(exc.path, exc.line, "error", exc.message))

    if any(f.severity == "error" for f in findings):
        return None, _sorted(findings)
    try:
        policy = load_policy(path, known_tools=known_tools)
    except SourceError as exc:  # anything the line-by-line pass did not see
        return None, _sorted([*findings, Finding(exc.path, exc.line, "error", exc.message)])

    files = {p.name: p for p in csv_paths}
    checker = _Semantics(policy, known_tools, tool_bounds, files)
    findings.extend(checker.run())
    if policy.bounds:
        findings.extend(checker.bounds(bounds_path, bounds_lines(bounds_text)))
    findings = _sorted(findings)
    return (None if exit_code(findings) else policy), findings


# --------------------------------------------------------------------------- semantic checks


def _covers(outer: str, inner: str) -> bool:
    """Whether every name keyMatch-matching pattern ``inner`` also matches pattern ``outer``."""
    outer_prefix = key_prefix(outer)
    inner_prefix = key_prefix(inner)
    if outer_prefix is None:
        return inner_prefix is None and inner == outer
    return (inner if inner_prefix is None else inner_prefix).startswith(outer_prefix)


class _Semantics:
    """Checks that need the loaded rules: what a rule can reach, what overrides it."""

    def __init__(
        self,
        policy: Policy,
        known_tools: Mapping[str, str] | None,
        tool_bounds: Mapping[str, Collection[BoundName]] | None,
        files: Mapping[str, Path],
    ) -> None:
        self.policy = policy
        self.tools: Mapping[str, str] = known_tools or {}
        self.tools_known = known_tools is not None
        self.tool_bounds = tool_bounds
        self.files = files
        self.grants = [r for r in policy.rules if r.ptype == "p"]
        self.links = [r for r in policy.rules if r.ptype == "g"]
        self.by_member: dict[str, list[Rule]] = {}
        for link in self.links:
            self.by_member.setdefault(link.fields[0], []).append(link)

    def where(self, rule: Rule) -> tuple[Path, int | None]:
        name, _, line = rule.source.rpartition(":")
        return self.files.get(name, Path(name)), int(line) if line.isdigit() else None

    def finding(self, rule: Rule, severity: Severity, message: str) -> Finding:
        file, line = self.where(rule)
        return Finding(file, line, severity, message)

    def tools_of(self, rule: Rule) -> list[str]:
        """Known tools a p rule reaches: the tool pattern matches and the action is the tool's verb."""
        _, _, obj, act, _ = rule.fields
        return [t for t, verb in self.tools.items() if key_match(t, obj) and act in ("*", verb)]

    def ancestors(self, member: str, namespace_pattern: str | None) -> set[str]:
        """Roles reachable from ``member`` (within Casbin's hop limit).

        With a namespace pattern, only over links that hold in every namespace
        the pattern matches (so the role is always held there); with None, over
        every link (held somewhere).
        """
        found: set[str] = set()
        frontier = [member]
        for _ in range(MAX_ROLE_HOPS):
            following: list[str] = []
            for node in frontier:
                for link in self.by_member.get(node, ()):
                    role, dom = link.fields[1], link.fields[2]
                    if role in found or role == member:
                        continue
                    if namespace_pattern is not None and not _covers(dom, namespace_pattern):
                        continue
                    found.add(role)
                    following.append(role)
            frontier = following
            if not frontier:
                break
        return found

    def run(self) -> list[Finding]:
        return [
            *self.dead_actions(),
            *self.empty_roles(),
            *self.shadowed(),
            *self.everyone_writes(),
            *self.deep_chains(),
        ]

    def dead_actions(self) -> Iterable[Finding]:
        for rule in self.grants:
            _, _, obj, act, eft = rule.fields
            named = [t for t in self.tools if key_match(t, obj)]
            if act == "*" or not named or any(self.tools[t] == act for t in named):
                continue
            shown = ", ".join(f"{t} ({self.tools[t]})" for t in named[:5])
            if eft == "deny":
                yield self.finding(
                    rule, "error",
                    f"this deny never applies: its action is {act}, but {shown} "
                    f"{'is' if len(named) == 1 else 'are'} asked for with another verb; use * or the tool's verb",
                )
            else:
                yield self.finding(
                    rule, "warning",
                    f"this allow never applies: its action is {act}, but {shown} "
                    f"{'is' if len(named) == 1 else 'are'} asked for with another verb",
                )

    def empty_roles(self) -> Iterable[Finding]:
        named = {r.fields[0] for r in self.grants}
        roles = {r.fields[0] for r in self.grants if r.fields[0].startswith(ROLE_PREFIX)}
        for link in self.links:
            roles.add(link.fields[1])
        reported: set[str] = set()
        for link in self.links:
            role = link.fields[1]
            if role == EVERYONE or role in reported:
                continue
            if role in named or self.ancestors(role, None) & named:
                continue
            reported.add(role)
            hint = difflib.get_close_matches(role, sorted(named & roles - {role}), n=1)
            suffix = f"; did you mean {hint[0]}?" if hint else ""
            yield self.finding(
                link, "error",
                f"{role} is assigned here but no rule names it or a role it inherits, "
                f"so it grants nothing{suffix}",
            )

    def shadowed(self) -> Iterable[Finding]:
        denies = [r for r in self.grants if r.fields[4] == "deny"]
        if not denies:
            return
        for rule in self.grants:
            sub, dom, obj, act, eft = rule.fields
            if eft != "allow":
                continue
            holders = {sub, EVERYONE} | self.ancestors(sub, dom) | self.ancestors(EVERYONE, dom)
            covering = [d for d in denies if d.fields[0] in holders and _covers(d.fields[1], dom)]
            if not covering:
                continue
            tools = self.tools_of(rule)
            if tools:
                deciding: list[Rule] = []
                for tool in tools:
                    verb = self.tools[tool]
                    hit = next(
                        (d for d in covering if key_match(tool, d.fields[2]) and d.fields[3] in ("*", verb)), None
                    )
                    if hit is None:
                        break
                    if hit not in deciding:
                        deciding.append(hit)
                else:
                    yield self._shadow_finding(rule, deciding)
                continue
            hit = next(
                (d for d in covering if _covers(d.fields[2], obj) and d.fields[3] in ("*", act)), None
            )
            if hit is not None:
                yield self._shadow_finding(rule, [hit])

    def _shadow_finding(self, rule: Rule, denies: list[Rule]) -> Finding:
        shown = "; ".join(f"{d.source} ({d.text})" for d in denies[:3])
        protected = [d.fields[1] for d in denies if d.fields[0] == EVERYONE and key_prefix(d.fields[1]) is None]
        hint = ""
        if protected:
            hint = (
                f" {protected[0]} is protected by a deny for every principal; an allow cannot override a deny, "
                "so to let this subject change it, remove or narrow that deny"
            )
        return self.finding(
            rule, "warning",
            f"this allow never takes effect: deny overrides allow, and {shown} "
            f"covers every request it allows.{hint}",
        )

    def everyone_writes(self) -> Iterable[Finding]:
        subjects = {EVERYONE} | self.ancestors(EVERYONE, None)
        for rule in self.grants:
            if rule.fields[0] not in subjects or rule.fields[4] != "allow":
                continue
            writes = [t for t in self.tools_of(rule) if self.tools[t] == _WRITE]
            if writes:
                via = ""
                if rule.fields[0] != EVERYONE:
                    link = next(
                        (g for g in self.links if g.fields[1] == rule.fields[0] and g.fields[0] in subjects), None
                    )
                    where = f" in {link.fields[2]} ({link.source})" if link is not None else ""
                    via = f" (every principal holds {rule.fields[0]}{where})"
                yield self.finding(
                    rule, "warning",
                    f"every principal, including ones nobody assigned a role, may call {', '.join(writes[:5])} "
                    f"in namespaces matching {rule.fields[1]}{via}",
                )

    def deep_chains(self) -> Iterable[Finding]:
        for member, links in self.by_member.items():
            depth = {member: 0}
            frontier = [member]
            while frontier:
                following = []
                for node in frontier:
                    for link in self.by_member.get(node, ()):
                        role = link.fields[1]
                        if role not in depth:
                            depth[role] = depth[node] + 1
                            following.append(role)
                frontier = following
            too_far = sorted(r for r, d in depth.items() if d > MAX_ROLE_HOPS)
            if too_far:
                yield self.finding(
                    links[0], "warning",
                    f"{member} reaches {too_far[0]} only through more than {MAX_ROLE_HOPS} role links; "
                    "Casbin stops following there, so those roles are never held",
                )

    # ----------------------------------------------------------------------- bounds

    def bounds(self, path: Path, lines: Mapping[tuple[str, str | None], int]) -> Iterable[Finding]:
        subjects = {r.fields[0] for r in self.grants}
        for link in self.links:
            subjects.update(link.fields[:2])
        for subject, bounds in self.policy.bounds.items():
            line = lines.get((subject, None))
            allows = [r for r in self.grants if r.fields[0] == subject and r.fields[4] == "allow"]
            if subject not in subjects:
                hint = difflib.get_close_matches(subject, sorted(subjects), n=1)
                suffix = f"; did you mean {hint[0]!r}?" if hint else ""
                yield Finding(path, line, "error", f"bounds for {subject!r}, which no policy rule names{suffix}")
                continue
            if not allows:
                yield Finding(
                    path, line, "error",
                    f"bounds for {subject!r} never apply: a call is bounded by the subject its allowing rule "
                    f"names, and no allow rule names {subject}; put these bounds on the role that allows the calls",
                )
                continue
            if self.tools_known:
                yield from self._unused_bounds(path, lines, subject, bounds, allows)

    def _unused_bounds(
        self,
        path: Path,
        lines: Mapping[tuple[str, str | None], int],
        subject: str,
        bounds: SubjectBounds,
        allows: list[Rule],
    ) -> Iterable[Finding]:
        reached = {t for rule in allows for t in self.tools_of(rule)}
        for field in sorted(bounds.model_fields_set):
            value = getattr(bounds, field)
            if value is None:
                continue
            line = lines.get((subject, field)) or lines.get((subject, None))
            if field == "rate_limit_per_minute":
                if not any(self.tools[t] == _WRITE for t in reached):
                    yield Finding(
                        path, line, "error",
                        f"{field} of {subject!r} never applies: it limits changing calls, and no allow rule "
                        f"naming {subject} grants a write tool",
                    )
                continue
            if field == "read_rate_limit_per_minute":
                if not any(self.tools[t] == _READ for t in reached):
                    yield Finding(
                        path, line, "error",
                        f"{field} of {subject!r} never applies: it limits reads of the cluster and model "
                        f"servers, and no allow rule naming {subject} grants a read tool",
                    )
                continue
            reads = BOUND_READS.get(field)
            if reads is None or self.tool_bounds is None:
                continue
            takers = sorted(t for t, told in self.tool_bounds.items() if reads & set(told) and t in self.tools)
            if any(t in takers for t in reached):
                continue
            shown = " or ".join(map(repr, sorted(reads)))
            inherited = self._inherited_takers(subject, takers)
            hint = (
                f"; {subject} reaches {inherited[0][0]} only through {inherited[0][1]}'s rule, "
                f"so {inherited[0][1]}'s bounds apply there"
                if inherited
                else ""
            )
            yield Finding(
                path, line, "error",
                f"{field} of {subject!r} never applies: it bounds the {shown} argument of "
                f"{', '.join(takers) or 'no tool this server offers'}, and no allow rule naming {subject} "
                f"grants one of them{hint}",
            )

    def _inherited_takers(self, subject: str, takers: list[str]) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for role in sorted(self.ancestors(subject, None)):
            for rule in self.grants:
                if rule.fields[0] == role and rule.fields[4] == "allow":
                    found.extend((t, role) for t in self.tools_of(rule) if t in takers)
        return found
